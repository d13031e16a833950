"""Which form of grouped convolution, native or split, runs faster on an Ethos-U, layer by
layer and over whole architectures (issue #20: the U85's per-layer form rule).

    python benchmarks/grouped_forms.py --mode=layers --output=runs/forms/layers.csv
    python benchmarks/grouped_forms.py --mode=archs --output=runs/forms/archs.csv --archs=40
    python benchmarks/grouped_forms.py --mode=additivity --output=runs/forms/add.csv --archs=8

`--mode=layers`: one probe network per grouped layer geometry of the `multi_hw_grouped`
space (stage, stride 1 or the stage's entry stride, grouped type, expansion, kernel, filter
ratio): the space's stem, one depthwise-separable block per earlier stage (at the probe's
filter ratio), the probed block, the space's head and top; written with the direct writer in
each form (`mhmodels.tflite_writer`) and priced by vela. The two files differ only in the
probed grouped conv, so native - split is that layer's difference. Each row also gives the
form the per-layer rule picks (`mhmodels.grouped_forms.layer_form`).

`--mode=archs`: random architectures of the space (seed `--seed`, uniform), each written
native, split and in the per-layer form `--form`, priced by vela: the end-to-end check of
the rule (geometric means of per-layer / native and per-layer / split).

`--mode=additivity`: is a block's cost the same in every network? For each stage of
`--stages` (default 0-2) and each block type, block 1 of the stage goes from expansion 2 to 6
inside `--archs` random architectures (the stage's and earlier stages' widths fixed at 1.0,
kernel 3), each written in the hardware's own form; one row per (stage, type, context) with
the latency difference. An additive cost model needs the difference to be the same in every
context.
"""
from __future__ import annotations

import csv
import dataclasses
import itertools
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

import _report  # noqa: E402

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags (defined when run, so that tests may import the probes)."""
    flags.DEFINE_enum("mode", "layers", ["layers", "archs", "additivity"],
                      "Probe layers, whole architectures, or one block's cost across contexts.")
    flags.DEFINE_string("output", None, "CSV written (one row per probe / architecture).")
    flags.DEFINE_string("hardware", "ethos_u85", "The vela hardware priced.")
    flags.DEFINE_string("form", "auto:u85", "The per-layer form checked against native / split.")
    flags.DEFINE_integer("image_size", 224, "Input resolution.")
    flags.DEFINE_list("ratios", ["0.5", "1.0", "2.0"], "layers: filter ratios probed.")
    flags.DEFINE_list("expansions", ["1", "2", "4", "6"], "layers: expansions probed.")
    flags.DEFINE_list("kernels", ["3", "5"], "layers: kernels probed.")
    flags.DEFINE_list("stages", [], "layers: stages probed (default: all).")
    flags.DEFINE_integer("archs", 40, "archs: random architectures.")
    flags.DEFINE_integer("seed", 7, "archs: sampling seed.")
    flags.mark_flag_as_required("output")


SPACE = "multi_hw_grouped"
GROUPED_TYPES = ("ibn_g32", "ibn_g64", "fused_ibn_g32", "fused_ibn_g64")


@dataclasses.dataclass(frozen=True)
class LayerProbe:
    """One probed grouped block: where it runs and its grouped conv's geometry."""

    stage: int
    stride: int
    block_type: str
    expansion: int
    kernel: int
    ratio: float
    height: int  # input resolution of the grouped conv
    in_channels: int  # of the grouped conv
    out_channels: int
    groups: int


def probe_network(space, stage: int, stride: int, block_type: str, expansion: int,
                  kernel: int, ratio: float, image_size: int):
    """(spec, LayerProbe) or None where the type has no grouped conv at this point."""
    from mhmodels.builder import resolve
    from mhmodels.spec import LayerSpec
    from search.space import FILTER_RATIOS
    r = FILTER_RATIOS.index(ratio)
    width = lambda s: space.stage_filters(s, r)  # noqa: E731
    prefix = [LayerSpec(kind="ibn", filters=width(s), kernel=3, stride=space.stages[s].stride,
                        expansion=1, activation="relu") for s in range(stage)]
    if stride == 1:
        prefix.append(LayerSpec(kind="ibn", filters=width(stage), kernel=3,
                                stride=space.stages[stage].stride, expansion=1,
                                activation="relu"))
    else:
        stride = space.stages[stage].stride
    in_filters = prefix[-1].filters if prefix else space.stem_filters
    kind, group = space.block_kind(block_type, in_filters, expansion, stride)
    if group is None:
        return None
    block = LayerSpec(kind=kind, filters=width(stage), kernel=kernel, stride=stride,
                      expansion=expansion, activation="relu", group_size=group)
    template = space.decode([0] * len(space.decisions), name="probe")
    spec = dataclasses.replace(template, name="probe", blocks=(*prefix, block))
    spec.validate()
    size = -(-image_size // template.stem.stride)
    for layer in prefix:
        size = -(-size // layer.stride)
    res = resolve(spec, 1.0)[len(prefix) + 1]  # + the stem
    cin = res.hidden if kind == "ibn" else res.in_filters
    return spec, LayerProbe(stage, stride, block_type, expansion, kernel, ratio, size, cin,
                            res.hidden, res.groups)


def _forms_ms(spec, hw, forms, image_size: int) -> dict[str, float]:
    """{form: vela ms} of `spec` written in each form."""
    from mhmodels.tflite_writer import write_tflite
    return {form: hw.latency_ms(hw.measure_tflite(write_tflite(
        spec, input_shape=(image_size, image_size, 3), grouped_conv=form))) for form in forms}


def _layer_form(form: str, p: LayerProbe) -> str:
    """The per-layer rule's pick for a probe ('' when the rule is not there)."""
    try:
        from mhmodels.grouped_forms import layer_form
    except ImportError:
        return ""
    return layer_form(form, height=p.height, in_channels=p.in_channels,
                      out_channels=p.out_channels, groups=p.groups, kernel=p.kernel,
                      stride=p.stride)


def probe_layers(space, hw, writer) -> int:
    """Every grouped layer geometry of the flags, native and split: one row each."""
    stages = [int(s) for s in FLAGS.stages] or range(len(space.stages))
    grid = itertools.product(stages, (1, 2), GROUPED_TYPES, map(int, FLAGS.expansions),
                             map(int, FLAGS.kernels), map(float, FLAGS.ratios))
    n = 0
    for stage, stride, block_type, e, k, ratio in grid:
        probe = probe_network(space, stage, stride, block_type, e, k, ratio, FLAGS.image_size)
        if probe is None:
            continue
        spec, p = probe
        ms = _forms_ms(spec, hw, ("native", "split"), FLAGS.image_size)
        writer.writerow({**dataclasses.asdict(p), "native_ms": round(ms["native"], 6),
                         "split_ms": round(ms["split"], 6),
                         "split_minus_native_ms": round(ms["split"] - ms["native"], 6),
                         "rule": _layer_form(FLAGS.form, p)})
        n += 1
    return n


def probe_archs(space, hw, writer) -> list[dict]:
    """`--archs` random architectures in native, split and the per-layer form."""
    import numpy as np
    rng = np.random.default_rng(FLAGS.seed)
    rows = []
    for i in range(FLAGS.archs):
        choices = space.sample(rng)
        spec = space.decode(choices, name=f"arch{i}")
        ms = _forms_ms(spec, hw, ("native", "split", FLAGS.form), FLAGS.image_size)
        row = {"arch": space.encode(space.canonical(choices)),
               "grouped_blocks": sum(1 for b in spec.blocks if b.group_size),
               "native_ms": round(ms["native"], 6), "split_ms": round(ms["split"], 6),
               "per_layer_ms": round(ms[FLAGS.form], 6)}
        writer.writerow(row)
        rows.append(row)
        print(f"  {i + 1}/{FLAGS.archs} {row}", flush=True)
    return rows


def probe_additivity(space, hw, writer) -> None:
    """Block 1's expansion 2 -> 6 in `--archs` random contexts per stage and block type."""
    import numpy as np
    from search.hardware import write_formats
    from search.space import EXPANSIONS, FILTER_RATIOS
    ms = lambda c: hw.latency_ms(hw.measure_tflite(write_formats(  # noqa: E731
        space.decode(space.canonical(c)), [hw.export_format], FLAGS.image_size)[0][
        hw.export_format]))
    for stage in [int(s) for s in FLAGS.stages] or (0, 1, 2):
        for block_type in space.block_types:
            rng = np.random.default_rng(FLAGS.seed)
            deltas = []
            for i in range(FLAGS.archs):
                c = space.sample(rng)
                for s in range(stage + 1):
                    c[space.index[f"stage{s}/filter_ratio"]] = FILTER_RATIOS.index(1.0)
                nb = space.index[f"stage{stage}/num_blocks"]
                c[nb] = max(c[nb], 1)
                c[space.index[f"stage{stage}/block1/type"]] = space.block_types.index(block_type)
                c[space.index[f"stage{stage}/block1/kernel"]] = 0
                low, high = c.copy(), c.copy()
                low[space.index[f"stage{stage}/block1/expansion"]] = EXPANSIONS.index(2)
                high[space.index[f"stage{stage}/block1/expansion"]] = EXPANSIONS.index(6)
                deltas.append(ms(high) - ms(low))
                writer.writerow({"stage": stage, "block_type": block_type, "context": i,
                                 "delta_ms": round(deltas[-1], 6)})
            print(f"  stage {stage} {block_type}: e2 -> e6 median {np.median(deltas):.3f} ms, "
                  f"spread {max(deltas) - min(deltas):.3f}", flush=True)


def summary(rows: list[dict]) -> str:
    """Geometric means of per-layer / native and per-layer / split, and the worst cases."""
    ratio = lambda a, b: [r["per_layer_ms"] / r[b] for r in rows]  # noqa: E731
    gm = lambda xs: math.exp(sum(map(math.log, xs)) / len(xs))  # noqa: E731
    vs_native, vs_split = ratio("per_layer_ms", "native_ms"), ratio("per_layer_ms", "split_ms")
    best = [r["per_layer_ms"] / min(r["native_ms"], r["split_ms"]) for r in rows]
    return (f"{len(rows)} architectures: per-layer / native geometric mean "
            f"{gm(vs_native):.4f} (max {max(vs_native):.4f}), per-layer / split "
            f"{gm(vs_split):.4f} (max {max(vs_split):.4f}); per-layer no slower than the "
            f"better whole-network form (within 1%) on {sum(b <= 1.01 for b in best)}; "
            f"per-layer / best {gm(best):.4f} (max {max(best):.4f})")


def main(argv):
    del argv
    _report.quiet_logs()
    from search.hardware import get_hardware
    from search.space import get_space
    t0 = time.time()
    space, hw = get_space(SPACE), get_hardware(FLAGS.hardware)
    out = Path(FLAGS.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    fields = {"layers": [f.name for f in dataclasses.fields(LayerProbe)] +
              ["native_ms", "split_ms", "split_minus_native_ms", "rule"],
              "archs": ["arch", "grouped_blocks", "native_ms", "split_ms", "per_layer_ms"],
              "additivity": ["stage", "block_type", "context", "delta_ms"]}[FLAGS.mode]
    with out.open("w", newline="", buffering=1) as f:  # line-buffered: rows as they come
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        if FLAGS.mode == "layers":
            print(f"{probe_layers(space, hw, writer)} layer probes", flush=True)
        elif FLAGS.mode == "additivity":
            probe_additivity(space, hw, writer)
        else:
            print(summary(probe_archs(space, hw, writer)), flush=True)
    print(f"{FLAGS.hardware}: {time.time() - t0:.0f} s -> {out}", file=sys.stderr)


if __name__ == "__main__":
    define_flags()
    app.run(main)
