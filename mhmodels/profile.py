"""Params and MAdds: the one counting function (the convention that reproduces the paper).

Params = conv / depthwise / dense kernels + biases (batch norm excluded).
MAdds  = multiply-adds of conv, depthwise conv and dense layers only.
Counted from a built Keras model (Keras 3 or tf_keras), so anything `build` makes, or any
user model made of those layers, is counted the same way.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence


@dataclass(frozen=True)
class LayerCount:
    name: str
    kind: str  # conv | depthwise | dense
    output_shape: tuple[int, ...]
    params: int
    madds: int


@dataclass(frozen=True)
class Profile:
    params: int
    madds: int
    rows: tuple[LayerCount, ...] = field(default=(), repr=False)

    @property
    def params_m(self) -> float:
        return self.params / 1e6

    @property
    def madds_m(self) -> float:
        return self.madds / 1e6

    def table(self) -> str:
        """Per-layer rows as text, for `python -m mhmodels summary --layers`."""
        lines = [f"{'layer':40s} {'kind':9s} {'output':>16s} {'params':>10s} {'MAdds':>12s}"]
        for r in self.rows:
            shape = "x".join(str(d) for d in r.output_shape)
            lines.append(f"{r.name:40s} {r.kind:9s} {shape:>16s} {r.params:10d} {r.madds:12d}")
        lines.append(f"{'total':40s} {'':9s} {'':>16s} {self.params:10d} {self.madds:12d}")
        return "\n".join(lines)


def _kind(layer: Any) -> str | None:
    # Class names are shared by Keras 3 and tf_keras; check DepthwiseConv2D before Conv2D.
    names = {cls.__name__ for cls in type(layer).__mro__}
    if "DepthwiseConv2D" in names:
        return "depthwise"
    if "Conv2D" in names:
        return "conv"
    if "Dense" in names:
        return "dense"
    return None


def _size(weight: Any) -> int:
    n = 1
    for d in weight.shape:
        n *= int(d)
    return n


def count_layers(model: Any) -> Profile:
    """Count params and MAdds of every conv / depthwise / dense layer of a functional model."""
    rows = []
    for layer in _flat_layers(model):
        kind = _kind(layer)
        if kind is None:
            continue
        # Keras 3 calls the depthwise weights `kernel`, tf_keras `depthwise_kernel`.
        kernel = getattr(layer, "depthwise_kernel", None)
        kernel = layer.kernel if kernel is None else kernel
        params = _size(kernel) + (_size(layer.bias) if layer.use_bias else 0)
        out_shape = tuple(int(d) for d in layer.output.shape[1:])
        if kind == "dense":
            madds = _size(kernel)
        else:
            spatial = 1
            for d in out_shape[:-1]:
                spatial *= d
            madds = _size(kernel) * spatial  # KxKxCinxCout (conv) or KxKxCxM (depthwise)
        rows.append(LayerCount(layer.name, kind, out_shape, params, madds))
    return Profile(sum(r.params for r in rows), sum(r.madds for r in rows), tuple(rows))


def _flat_layers(model: Any):
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.layers and _kind(layer) is None:
            yield from _flat_layers(layer)
        else:
            yield layer


def profile(model_or_name: Any, width: float = 1.0, *,
            input_shape: Sequence[int] = (224, 224, 3), num_classes: int = 1001,
            include_top: bool = True) -> Profile:
    """Params / MAdds / per-layer rows of a model, a registered name, or a `ModelSpec`.

    Defaults match the paper's Table 1: 224x224 input and a 1001-class ImageNet head.
    Params count conv / dense kernels and biases (batch norm excluded); MAdds count conv,
    depthwise and dense multiply-adds.

    Args:
      model_or_name: a built Keras model (counted as it is; the other arguments are then
        ignored), a zoo name (`list_models()`) or a `ModelSpec`.
      width: width multiplier of the network built from a name or spec.
      input_shape: (height, width, 3) of that network.
      num_classes: its classifier outputs.
      include_top: count the classifier (and the layers after pooling) too.
    Returns:
      A `Profile` (`params_m`, `madds_m`, per-layer rows).
    Raises:
      ValueError: an unknown model name or bad build arguments (see `mhmodels.build`).
    """
    if hasattr(model_or_name, "layers"):
        return count_layers(model_or_name)
    from mhmodels.builder import build_model
    from mhmodels.registry import get_spec
    from mhmodels.spec import ModelSpec

    spec = model_or_name if isinstance(model_or_name, ModelSpec) else get_spec(model_or_name)
    model = build_model(spec, width, input_shape=input_shape, num_classes=num_classes,
                        include_top=include_top)
    return count_layers(model)
