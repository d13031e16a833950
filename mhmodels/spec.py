"""The one architecture format: every model (built-in or searched) is a `ModelSpec`.

A spec is plain data (JSON in, JSON out) so that the paper's models, the search's output and a
user's own networks are the same kind of thing, decoded by one builder (`mhmodels.builder`).

Layout of a spec, in network order:
  stem   - one `conv` layer
  blocks - the body: `conv`, `ds` (depthwise separable), `ibn` (inverted bottleneck) or
           `fused_ibn` (expand 1x1 + depthwise replaced by one KxK conv); with `group_size`
           their KxK conv is a grouped convolution (the Edge TPU NAS paper's `ibn_grouped`
           and `ibn_fused_grouped` blocks, see `LayerSpec`)
  head   - layers applied before global pooling (e.g. the 1x1 960 of MobileNetV3)
  top    - layers applied after global pooling, before dropout + classifier (e.g. 1x1 1280)
"""
from __future__ import annotations

import dataclasses
import json
import numbers
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

BLOCK_KINDS = ("conv", "ds", "ibn", "fused_ibn")
ACTIVATIONS = ("relu", "relu6", "hard_swish", "linear")
WIDTH_ROUNDINGS = ("round8", "truncate")
FORMAT_VERSION = 1


class SpecError(ValueError):
    """A malformed spec; the message names the offending entry and field."""


@dataclass(frozen=True)
class LayerSpec:
    """One stem/body/head layer.

    kind: conv | ds | ibn | fused_ibn.
    filters: output channels at width 1.0.
    kernel, stride: of the spatial (KxK) convolution.
    expansion: ibn/fused_ibn only; hidden channels = round8(expansion * input channels).
        Expansion 1 skips the expansion layer (ibn: the 1x1; fused_ibn: the KxK conv).
    activation: relu | relu6 | hard_swish | linear.
    se_ratio: squeeze-and-excite (hard-sigmoid gate) on the expanded tensor; None = no SE.
    residual: add the input when shapes allow (stride 1 and same channels); False disables it.
    use_bias, batch_norm: conv layers only (the V3 head's 1x1 1280 has a bias and no BN).
    shrink: False keeps `filters` for width < 1 (the last 1x1 layer of the MobileNets).
    group_size: ibn/fused_ibn only; None = the usual block. Else the block's KxK conv is a
        grouped convolution of `group_size` output channels per group, i.e. hidden /
        group_size groups (Akin, Gupta et al. 2022, "ibn_grouped": 1x1 expand -> grouped KxK
        instead of depthwise -> 1x1 project; "ibn_fused_grouped": grouped KxK expand -> 1x1
        project). It tunes cost between depthwise (group_size 1) and full conv. It must
        divide the channel counts at width 1.0 (checked by `builder.resolve`: a clear error).
        At another width the group count of width 1.0 is kept where it divides the rounded
        channel counts, else the largest count that does (their gcd), so every width builds.
    """

    kind: str
    filters: int
    kernel: int = 3
    stride: int = 1
    expansion: float = 1.0
    activation: str = "relu"
    se_ratio: float | None = None
    residual: bool = True
    use_bias: bool = False
    batch_norm: bool = True
    shrink: bool = True
    group_size: int | None = None

    def validate(self, where: str) -> None:
        def fail(field_name: str, why: str) -> None:
            raise SpecError(f"{where}: field '{field_name}' {why}")

        if self.kind not in BLOCK_KINDS:
            fail("kind", f"is {self.kind!r}; expected one of {', '.join(BLOCK_KINDS)}")
        if not isinstance(self.filters, int) or isinstance(self.filters, bool) or self.filters <= 0:
            fail("filters", f"must be a positive integer, got {self.filters!r}")
        if not _is_integer(self.kernel) or self.kernel not in (1, 3, 5, 7):  # JSON true == 1
            fail("kernel", f"must be 1, 3, 5 or 7, got {self.kernel!r}")
        if not _is_integer(self.stride) or self.stride not in (1, 2):
            fail("stride", f"must be 1 or 2, got {self.stride!r}")
        if (isinstance(self.expansion, bool) or not isinstance(self.expansion, (int, float))
                or self.expansion < 1):
            fail("expansion", f"must be a number >= 1, got {self.expansion!r}")
        if self.expansion != 1 and self.kind not in ("ibn", "fused_ibn"):
            fail("expansion", f"only applies to ibn/fused_ibn blocks, not {self.kind}")
        if self.kind == "fused_ibn" and self.expansion == 1 and self.stride != 1:
            fail("stride", "must be 1 for a fused_ibn of expansion 1 (it has no KxK conv: only "
                 "the 1x1 projection)")
        if self.activation not in ACTIVATIONS:
            fail("activation", f"is {self.activation!r}; expected one of {', '.join(ACTIVATIONS)}")
        if self.se_ratio is not None:
            if self.kind not in ("ibn", "fused_ibn"):
                fail("se_ratio", f"only applies to ibn/fused_ibn blocks, not {self.kind}")
            if not 0 < self.se_ratio <= 1:
                fail("se_ratio", f"must be in (0, 1], got {self.se_ratio!r}")
        if self.kind != "conv" and (self.use_bias or not self.batch_norm):
            fail("use_bias", "and 'batch_norm' can only be changed on conv layers")
        if self.group_size is not None:
            if (not isinstance(self.group_size, int) or isinstance(self.group_size, bool)
                    or self.group_size <= 0):
                fail("group_size", f"must be a positive integer, got {self.group_size!r}")
            if self.kind not in ("ibn", "fused_ibn"):
                fail("group_size", f"only applies to ibn/fused_ibn blocks, not {self.kind}")
            if self.kind == "fused_ibn" and self.expansion == 1:
                fail("group_size", "needs expansion > 1 on a fused_ibn (expansion 1 has no KxK "
                     "conv to group)")
        for name in ("residual", "use_bias", "batch_norm", "shrink"):
            if not isinstance(getattr(self, name), bool):
                fail(name, f"must be true or false, got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON form, omitting fields at their defaults so entries stay readable."""
        out: dict[str, Any] = {"kind": self.kind, "filters": self.filters}
        for f in dataclasses.fields(self):
            if f.name in out:
                continue
            value = getattr(self, f.name)
            if value != f.default:
                out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> "LayerSpec":
        if not isinstance(data, Mapping):
            raise SpecError(f"{where}: expected an object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecError(f"{where}: unknown field(s) {unknown}; known fields: {sorted(known)}")
        for required in ("kind", "filters"):
            if required not in data:
                raise SpecError(f"{where}: missing required field '{required}'")
        layer = cls(**dict(data))
        layer.validate(where)
        return layer


@dataclass(frozen=True)
class ModelSpec:
    """A whole network at width 1.0; `builder.build_model` applies width and input size."""

    name: str
    stem: LayerSpec
    blocks: tuple[LayerSpec, ...]
    head: tuple[LayerSpec, ...] = ()
    top: tuple[LayerSpec, ...] = ()
    width_rounding: str = "round8"
    description: str = ""
    reference: Mapping[str, Any] = field(default_factory=dict)

    def validate(self, where: str | None = None) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise SpecError(f"{where or 'spec'}: field 'name' must be a non-empty string")
        where = where or f"spec {self.name!r}"
        if self.width_rounding not in WIDTH_ROUNDINGS:
            raise SpecError(
                f"{where}: field 'width_rounding' is {self.width_rounding!r}; "
                f"expected one of {', '.join(WIDTH_ROUNDINGS)}")
        if self.stem.kind != "conv":
            raise SpecError(f"{where}: stem must be a conv layer, got {self.stem.kind!r}")
        if not self.blocks:
            raise SpecError(f"{where}: field 'blocks' must list at least one block")
        self.stem.validate(f"{where} stem")
        for i, block in enumerate(self.blocks):
            block.validate(f"{where} blocks[{i}]")
        for part in ("head", "top"):
            for i, layer in enumerate(getattr(self, part)):
                layer.validate(f"{where} {part}[{i}]")
                if layer.kind != "conv":
                    raise SpecError(f"{where} {part}[{i}]: head/top layers must be conv")
        for i, layer in enumerate(self.top):
            if layer.kernel != 1 or layer.stride != 1:
                raise SpecError(f"{where} top[{i}]: layers after pooling must be 1x1, stride 1")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "description": self.description,
            "width_rounding": self.width_rounding,
            "stem": self.stem.to_dict(),
            "blocks": [b.to_dict() for b in self.blocks],
            "head": [h.to_dict() for h in self.head],
            "top": [t.to_dict() for t in self.top],
        }
        if self.reference:
            out["reference"] = dict(self.reference)
        return out

    def to_json(self, extra: Mapping[str, Any] | None = None) -> str:
        """Readable JSON: one layer per line. `extra` adds top-level keys (e.g. provenance)."""
        return dumps_entry({**self.to_dict(), **(extra or {})})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "spec") -> "ModelSpec":
        if not isinstance(data, Mapping):
            raise SpecError(f"{source}: expected a JSON object, got {type(data).__name__}")
        known = {"format_version", "name", "description", "width_rounding", "stem", "blocks",
                 "head", "top", "reference"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecError(f"{source}: unknown field(s) {unknown}; known fields: {sorted(known)}")
        version = data.get("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise SpecError(f"{source}: format_version {version!r} is not supported "
                            f"(this mhmodels reads version {FORMAT_VERSION})")
        for required in ("name", "stem", "blocks"):
            if required not in data:
                raise SpecError(f"{source}: missing required field '{required}'")
        name = data["name"]
        where = f"{source} ({name!r})"

        def layers(key: str) -> tuple[LayerSpec, ...]:
            value = data.get(key, [])
            if not isinstance(value, list):
                raise SpecError(f"{where}: field '{key}' must be a list")
            return tuple(LayerSpec.from_dict(v, f"{where} {key}[{i}]") for i, v in enumerate(value))

        spec = cls(
            name=name,
            stem=LayerSpec.from_dict(data["stem"], f"{where} stem"),
            blocks=layers("blocks"),
            head=layers("head"),
            top=layers("top"),
            width_rounding=data.get("width_rounding", "round8"),
            description=data.get("description", ""),
            reference=dict(data.get("reference", {})),
        )
        spec.validate(where)
        return spec

    @classmethod
    def from_json(cls, text: str, source: str = "spec") -> "ModelSpec":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise SpecError(f"{source}: not valid JSON: {err}") from None
        return cls.from_dict(data, source)


def dumps_entry(data: Mapping[str, Any]) -> str:
    """JSON with each stem/body/head layer on one line, so diffs of zoo entries read well."""
    lines = ["{"]
    items = list(data.items())
    for i, (key, value) in enumerate(items):
        comma = "," if i < len(items) - 1 else ""
        if key in ("blocks", "head", "top") and value:
            inner = ",\n".join(f"    {json.dumps(v)}" for v in value)
            lines.append(f"  {json.dumps(key)}: [\n{inner}\n  ]{comma}")
        elif key == "stem":
            lines.append(f"  {json.dumps(key)}: {json.dumps(value)}{comma}")
        else:
            text = json.dumps(value, indent=2).replace("\n", "\n  ")
            lines.append(f"  {json.dumps(key)}: {text}{comma}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _is_integer(value: Any) -> bool:
    """An integer that is not a bool (JSON `true` equals 1 in Python and must not pass as one)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def round8(value: float, divisor: int = 8) -> int:
    """Round to a multiple of `divisor`, never below it, never more than 10% down."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def scale_filters(filters: int, width: float, rounding: str, shrink: bool = True) -> int:
    """Channel count of a layer at width multiplier `width` (the paper's width rules)."""
    if not shrink and width < 1.0:
        return filters
    if rounding == "truncate":
        return max(1, int(filters * width))
    return round8(filters * width)


def group_count(layer: LayerSpec, in_filters: int, hidden: int, where: str,
                width_one_groups: int | None = None) -> int | None:
    """Groups of `layer`'s grouped KxK conv at resolved channel counts; None if not grouped.

    The grouped conv maps `in_filters` (fused_ibn) or `hidden` (ibn) channels to `hidden`
    channels in hidden / group_size groups: both sides must split evenly, else SpecError.
    `width_one_groups`: the count at width 1.0, for another width (see `LayerSpec`).
    """
    if layer.group_size is None:
        return None
    conv_in = in_filters if layer.kind == "fused_ibn" else hidden
    if width_one_groups is not None:
        return math.gcd(width_one_groups, hidden, conv_in)
    size = layer.group_size
    conv_in = in_filters if layer.kind == "fused_ibn" else hidden
    if hidden % size:
        raise SpecError(f"{where}: group_size {size} does not divide the block's {hidden} "
                        "expanded channels (another width may fit)")
    groups = hidden // size
    if conv_in % groups:
        raise SpecError(f"{where}: group_size {size} gives {groups} groups, which do not "
                        f"divide the grouped conv's {conv_in} input channels")
    return groups
