"""How a grouped convolution is written into a model, and per-layer rules that choose it.

A grouped KxK conv (`LayerSpec.group_size`) is written either as one grouped conv ('native':
Keras `Conv2D(groups=g)`, one TFLite CONV_2D of filter depth in / g) or as split -> one conv
per group -> concat ('split'); the same function either way. Which runs faster depends on
the hardware (`mhmodels.export.grouped_conv_form`) and, on some, on the layer: a per-layer
form (e.g. 'auto:u85') names a rule in `PER_LAYER_RULES` that picks 'native' or 'split' for
each grouped conv from its geometry. The builder (`mhmodels.layers.grouped_conv_bn`) and the
direct TFLite writer (`mhmodels.tflite_writer`) both ask `layer_form`, so a model built in a
per-layer form exports to the file the writer writes (tests/test_tflite_writer.py).

No package imports: the builder, the writer and the export path all stand on it.
"""
from __future__ import annotations

from dataclasses import dataclass

WHOLE_FORMS = ("native", "split")


@dataclass(frozen=True)
class FormCase:
    """One case of a per-layer rule: a grouped conv that matches every bound gets `form`.

    Bounds are inclusive; None leaves a quantity free. `group_size` is output channels per
    group, `in_group` input channels per group, `height` the conv's input resolution."""

    form: str
    height: tuple[int | None, int | None] = (None, None)
    groups: tuple[int | None, int | None] = (None, None)
    group_size: tuple[int | None, int | None] = (None, None)
    in_group: tuple[int | None, int | None] = (None, None)
    stride: tuple[int | None, int | None] = (None, None)
    group_size_multiple: int | None = None  # the case needs group_size % this == 0

    def matches(self, height: int | None, groups: int, group_size: int, in_group: int,
                stride: int) -> bool:
        """Whether the conv lies inside every bound (an unknown height matches no bound on
        height)."""
        def inside(value, bounds) -> bool:
            lo, hi = bounds
            if lo is None and hi is None:
                return True
            if value is None:
                return False
            return (lo is None or value >= lo) and (hi is None or value <= hi)
        return (inside(height, self.height) and inside(groups, self.groups)
                and inside(group_size, self.group_size) and inside(in_group, self.in_group)
                and inside(stride, self.stride)
                and (self.group_size_multiple is None
                     or group_size % self.group_size_multiple == 0))


@dataclass(frozen=True)
class FormRule:
    """A per-layer rule: the first matching case's form, else `default`."""

    cases: tuple[FormCase, ...]
    default: str

    def form(self, height: int | None, groups: int, group_size: int, in_group: int,
             stride: int) -> str:
        for case in self.cases:
            if case.matches(height, groups, group_size, in_group, stride):
                return case.form
        return self.default


# Ethos-U85 (ethos-u85-2048, SYS_DRAM_High, 384 KB SRAM; vela 5.2), measured per layer by
# benchmarks/grouped_forms.py --mode=layers: 916 grouped-conv probes of multi_hw_grouped at
# 224 (every stage, stride 1 and the stage's entry stride, g32 / g64 regular and fused,
# expansion 1-6, kernel 3 / 5, filter ratio 0.5-2), one block in a stem + head network,
# priced by vela in each form:
#   * few input channels per group (< 16: fused blocks of expansion >= 3, 4-12 per group)
#     are a trap in the split form: thin per-group CONV_2Ds and a concat of slices whose
#     depth is not a multiple of 16 (24, 30, 40 channels) cost up to +9.2 ms for one layer
#     (14x14, 64 groups of 5 -> 30). Native wins there, except at >= 56x56 with group
#     outputs a multiple of 16 and <= 4 groups (split 1-3% cheaper), or the stage's strided
#     entry (equal alone; inside whole networks split, by 0.44 ms on an architecture whose
#     56x56 stride-2 conv of 8 groups of 8 -> 32 made it 17% slower native).
#   * many groups (>= 16) of <= 32 input channels at <= 14x14: native, by up to 0.48 ms
#     (1920 channels in 60 groups at 14x14).
#   * everything else (regular blocks' g32 / g64 convs at 28x28 and above, few groups):
#     split, by up to 0.52 ms (28x28, 10 groups of 32: 1.73 vs 1.22 ms).
# Summed over the 916 probes, the ms above the faster form of each layer: 1.1 for this rule,
# 20.6 for native everywhere, 138 for split everywhere (worst layer 0.14 / 0.52 / 9.2 ms).
# End to end (benchmarks/grouped_forms.py --mode=archs, whole random architectures in each
# form): on 40 not used to make the rule, this rule / native 0.932 in geometric mean (never
# slower), this rule / split 0.870 (at most 1.3% slower); docs/grouped.md.
U85_RULE = FormRule(cases=(
    FormCase("split", height=(56, None), groups=(None, 4), in_group=(None, 15),
             group_size_multiple=16),
    FormCase("split", height=(56, None), stride=(2, 2), in_group=(None, 15),
             group_size_multiple=16),
    FormCase("native", in_group=(None, 15)),
    FormCase("native", height=(None, 14), groups=(16, None), in_group=(None, 32)),
), default="split")

PER_LAYER_RULES: dict[str, FormRule] = {"auto:u85": U85_RULE}
GROUPED_CONV_FORMS = WHOLE_FORMS + tuple(PER_LAYER_RULES)


def check_form(form: str) -> str:
    """`form` if it is a known grouped-conv form, else a ValueError naming them."""
    if form not in GROUPED_CONV_FORMS:
        raise ValueError(f"grouped_conv must be one of {GROUPED_CONV_FORMS}, got {form!r}")
    return form


def layer_form(form: str, *, height: int | None, in_channels: int, out_channels: int,
               groups: int, kernel: int, stride: int) -> str:
    """'native' or 'split': how one grouped conv is written in the model-wide `form`.

    A whole-model form ('native' / 'split') is its own answer; a per-layer form asks its rule
    with the conv's geometry. `height`: the conv's input resolution (None when the model's
    input size is dynamic: the rule's bounds on height then do not match). `kernel` is part
    of the signature so that a rule may use it; the U85 rule does not (3x3 and 5x5 probes
    differed alike, docs/grouped.md)."""
    del kernel
    check_form(form)
    if form in WHOLE_FORMS:
        return form
    if groups <= 1:
        return "native"
    return PER_LAYER_RULES[form].form(height, groups, out_channels // groups,
                                      in_channels // groups, stride)
