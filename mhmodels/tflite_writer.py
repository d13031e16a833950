"""Latency-only TFLite export: the float or int8 .tflite of a spec, written directly.

    data = write_tflite(mhmodels.get_spec('multi_max'), quantization='int8')   # bytes
    estimate_tflite(data, preset('ethos_u55'))                                 # vela

The TFLite converter takes 5-26 s per architecture (a SavedModel, MLIR, a calibration pass);
latency does not depend on trained weights or calibrated ranges, only on the graph: its ops,
shapes, fused activations, data types and quantization layout. This module writes that graph
straight from the spec (channel counts from `builder.resolve`, the one place width rules live)
with the flatbuffer schema bindings that Arm's vela ships (`ethosu.vela.tflite`, the TFLite
schema; vela is a base dependency), random weights and fixed quantization parameters, in
milliseconds.

The graph is the one the converter makes of `builder.build_model(spec, ...)` (batch 1,
BatchNormalization folded into conv biases, ReLU / ReLU6 fused into the producing op):

  conv  -> CONV_2D (+ HARD_SWISH)         ds  -> DEPTHWISE_CONV_2D, CONV_2D 1x1
  ibn   -> [CONV_2D 1x1] DEPTHWISE_CONV_2D [SE] CONV_2D 1x1 [ADD]
  fused -> [CONV_2D KxK] [SE] CONV_2D 1x1 [ADD]
  grouped (group_size): the KxK conv (ibn: in place of the depthwise) is one CONV_2D of
           filter depth in / groups ('native'), or SPLIT -> CONV_2D per group ->
           CONCATENATION ('split'), or either per layer ('auto:u85', `grouped_forms`), as
           `export_tflite(..., grouped_conv=form)` writes it
  SE    -> MEAN, CONV_2D 1x1 (relu), CONV_2D 1x1 (relu6; the hard sigmoid's +3 in its bias),
           MUL (1/6, a scalar constant), MUL (broadcast over the image)
  top   -> MEAN (keep_dims when the spec has top layers), 1x1 CONV_2Ds, FULLY_CONNECTED

int8 (what `export_tflite(..., quantization='int8')` writes): int8 input and output, int8
weights quantized per output channel (CONV_2D: dimension 0, DEPTHWISE_CONV_2D: 3), int32
biases of scale input_scale * weight_scale, per-tensor int8 activations. float: all float32.
`tflite_structure` reads any .tflite into that comparable form; tests/test_tflite_writer.py
checks it equal to the converter's export for zoo models and random architectures of the
search space, vela's estimates within 1% and LiteRT CPU latency within run-to-run noise.

Not written (no effect on latency): tensor names, signature defs, metadata.
"""
from __future__ import annotations

import functools
import importlib
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from mhmodels.builder import ResolvedLayer, check_input_shape, resolve
from mhmodels.grouped_forms import check_form, layer_form
from mhmodels.spec import ModelSpec

QUANTIZATIONS = ("float", "int8")
TFLITE_SCHEMA_VERSION = 3
# Op versions the converter (TF 2.21) writes; LiteRT and vela accept them.
_INT8_VERSIONS = {"CONV_2D": 3, "DEPTHWISE_CONV_2D": 3, "ADD": 2, "MEAN": 2, "MUL": 2,
                  "FULLY_CONNECTED": 4, "HARD_SWISH": 1, "SPLIT": 2, "CONCATENATION": 2}
# A graph with a native grouped CONV_2D (filter depth < input depth) has CONV_2D version 6
# for every conv, float and int8 (one operator code per op).
_GROUPED_CONV_VERSION = 6
_FUSED = {"relu": "RELU", "relu6": "RELU6", "linear": "NONE", "hard_swish": "NONE"}
# Fixed activation quantization (per tensor): (scale, zero point) by what produced the tensor.
# Values do not change latency; zero points at -128 after ReLU as a calibration gives.
_ACT_QUANT = {"input": (2.0 / 255.0, -1), "relu": (0.025, -128), "relu6": (6.0 / 255.0, -128),
              "linear": (0.05, 0), "hard_swish": (0.03, -10), "add": (0.06, 0),
              "mean": (0.02, -100), "gate": (1.0 / 255.0, -128), "logits": (0.1, 0)}


def _schema(name: str):
    """A module of vela's generated TFLite schema bindings (`ethosu.vela.tflite.<name>`)."""
    try:
        return importlib.import_module(f"ethosu.vela.tflite.{name}")
    except ImportError as err:  # vela is a base dependency; say so if it is missing
        raise ImportError(f"the TFLite schema bindings of ethos-u-vela are missing ({err}): "
                          "pip install 'ethos-u-vela>=5.2'") from None


@functools.lru_cache(maxsize=None)
def _enum(name: str) -> dict[str, int]:
    """A schema enum's names -> values (read once; do not modify the dict)."""
    cls = getattr(_schema(name), name)
    return {k: v for k, v in vars(cls).items() if not k.startswith("_")}


_POOLS: dict[str, np.ndarray] = {}


def _pool(kind: str, n: int) -> np.ndarray:
    """At least `n` float32 draws of 'normal' (truncated at 2 sigma, as Keras'
    TruncatedNormal) or 'uniform' ([-1, 1]), drawn once per process."""
    pool = _POOLS.get(kind)
    if pool is None or pool.size < n:
        rng = np.random.default_rng(len(kind) + n)
        size = max(n, 1 << 23)
        if kind == "uniform":
            pool = rng.uniform(-1.0, 1.0, size).astype(np.float32)
        else:
            pool = rng.standard_normal(size, dtype=np.float32)
            outside = np.abs(pool) > 2.0
            while outside.any():
                pool[outside] = rng.standard_normal(int(outside.sum()), dtype=np.float32)
                outside = np.abs(pool) > 2.0
        _POOLS[kind] = pool
    return pool


@dataclass
class _Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: str  # 'float32' | 'int8' | 'int32'
    data: bytes | None = None
    scale: np.ndarray | None = None
    zero_point: np.ndarray | None = None
    quantized_dimension: int = 0


class GraphWriter:
    """Builds one TFLite subgraph op by op and serialises it (`to_bytes`).

    Each emitter takes and returns tensor indices and chooses the weights, biases and
    quantization parameters of its op, so the block code reads like `mhmodels.layers`.
    """

    def __init__(self, quantization: str, seed: int = 0, grouped_conv: str = "native"):
        if quantization not in QUANTIZATIONS:
            raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got "
                             f"{quantization!r}")
        self.quantization = quantization
        self.grouped_conv = check_form(grouped_conv)
        self.native_grouped = False  # a CONV_2D with groups > 1 was written
        self.rng = np.random.default_rng(seed)
        self.tensors: list[_Tensor] = []
        self.ops: list[tuple[str, list[int], list[int], str, dict]] = []
        self.inputs: list[int] = []
        self.outputs: list[int] = []
        self.params = 0  # as mhmodels.profile counts them (kernels + Keras biases, no BN)
        self.madds = 0

    @property
    def profile(self):
        """Params and MAdds of the network written (`mhmodels.profile`'s convention: kernels
        plus the biases the Keras layers have; batch norm, folded into biases here, not
        counted); equal to `mhmodels.profile` of the built model (tested)."""
        from mhmodels.profile import Profile
        return Profile(self.params, self.madds)

    def _count(self, weights: int, output: int, keras_bias: bool) -> None:
        kernel = int(np.prod(self.shape(weights)))
        spatial = int(np.prod(self.shape(output)[1:-1])) if len(self.shape(output)) > 2 else 1
        self.params += kernel + (self.shape(output)[-1] if keras_bias else 0)
        self.madds += kernel * spatial

    @property
    def int8(self) -> bool:
        return self.quantization == "int8"

    # -- tensors ---------------------------------------------------------------------------
    def shape(self, index: int) -> tuple[int, ...]:
        return self.tensors[index].shape

    def _add(self, tensor: _Tensor) -> int:
        self.tensors.append(tensor)
        return len(self.tensors) - 1

    def activation(self, name: str, shape: Sequence[int], produced_by: str) -> int:
        """A runtime tensor (no data), quantized per tensor in int8."""
        if not self.int8:
            return self._add(_Tensor(name, tuple(shape), "float32"))
        scale, zero = _ACT_QUANT[produced_by]
        return self._add(_Tensor(name, tuple(shape), "int8", None, np.array([scale], np.float32),
                                 np.array([zero], np.int64)))

    def input(self, shape: Sequence[int]) -> int:
        index = self.activation("image", shape, "input")
        self.inputs.append(index)
        return index

    def _weights(self, name: str, shape: tuple[int, ...], channel_axis: int, fan_in: int,
                 uniform: bool = False) -> int:
        """Random weights drawn as `mhmodels.layers` initialises them (truncated normal for
        convolutions, uniform for the classifier); int8: quantized per output channel
        (symmetric, zero point 0), every channel spanning [-127, 127] as in a converter
        export. The value distribution matters: vela compresses the weight stream."""
        w = self._draw(int(np.prod(shape)), uniform).reshape(shape)
        w = w * np.float32(np.sqrt(2.0 / max(fan_in, 1)))
        if not self.int8:
            return self._add(_Tensor(name, shape, "float32", w.tobytes()))
        axes = tuple(a for a in range(len(shape)) if a != channel_axis)
        max_abs = np.maximum(np.abs(w).max(axis=axes), 1e-8)
        scale = (max_abs / 127.0).astype(np.float32)
        bshape = [1] * len(shape)
        bshape[channel_axis] = shape[channel_axis]
        q = np.round(w / scale.reshape(bshape)).astype(np.int8)
        return self._add(_Tensor(name, shape, "int8", q.tobytes(), scale,
                                 np.zeros(len(scale), np.int64), channel_axis))

    def _draw(self, n: int, uniform: bool) -> np.ndarray:
        """`n` independent draws: a window at a random offset of a pool drawn once per process
        (drawing ~10 M truncated normals per network took most of the writing time)."""
        pool = _pool("uniform" if uniform else "normal", n)
        start = int(self.rng.integers(0, pool.size - n + 1))
        return pool[start:start + n]

    def _bias(self, name: str, x: int, weights: int, n: int, offset: float = 0.0) -> int:
        """`n` biases of a conv / fully connected op; int8: int32 of scale input x weight
        scale (per channel)."""
        b = (0.1 * self.rng.standard_normal(n) + offset).astype(np.float32)
        if not self.int8:
            return self._add(_Tensor(name, (n,), "float32", b.tobytes()))
        scale = (self.tensors[x].scale[0] * self.tensors[weights].scale).astype(np.float32)
        q = np.clip(np.round(b / scale), -2**31, 2**31 - 1).astype(np.int32)
        return self._add(_Tensor(name, (n,), "int32", q.tobytes(), scale,
                                 np.zeros(n, np.int64)))

    def _constant(self, name: str, value: np.ndarray, produced_by: str | None = None) -> int:
        value = np.asarray(value)
        if value.dtype == np.int32:
            return self._add(_Tensor(name, value.shape, "int32", value.tobytes()))
        if not self.int8:
            return self._add(_Tensor(name, value.shape, "float32",
                                     value.astype(np.float32).tobytes()))
        scale, zero = _ACT_QUANT[produced_by]
        q = np.clip(np.round(value / scale + zero), -128, 127).astype(np.int8)
        return self._add(_Tensor(name, value.shape, "int8", q.tobytes(),
                                 np.array([scale], np.float32), np.array([zero], np.int64)))

    def _op(self, name: str, inputs: list[int], outputs: list[int], options_type: str = "NONE",
            **options: Any) -> int:
        self.ops.append((name, inputs, outputs, options_type, options))
        return outputs[0]

    # -- ops -------------------------------------------------------------------------------
    def conv(self, x: int, filters: int, kernel: int, stride: int, act: str, name: str,
             bias: bool = True, bias_offset: float = 0.0, groups: int = 1,
             padding: str = "SAME", keras_bias: bool = False) -> int:
        """CONV_2D, the activation fused (hard_swish: a HARD_SWISH op after). `keras_bias`:
        the Keras layer has a bias of its own (counted as params), not a folded batch norm.

        `groups` > 1 is a grouped convolution: the filter's input depth is in / groups
        (TFLite's CONV_2D infers the groups from it)."""
        n, h, w, cin = self.shape(x)
        if cin % groups:
            raise ValueError(f"{name}: {cin} input channels are not divisible into {groups} "
                             "groups")
        wt = self._weights(f"{name}/weights", (filters, kernel, kernel, cin // groups), 0,
                           kernel * kernel * cin // groups)
        b = self._bias(f"{name}/bias", x, wt, filters, bias_offset) if bias else -1
        self.native_grouped |= groups > 1
        out = self.activation(name, (n, -(-h // stride), -(-w // stride), filters),
                              "relu6" if act == "relu6" else
                              "relu" if act == "relu" else "linear")
        self._count(wt, out, keras_bias)
        self._op("CONV_2D", [x, wt, b], [out], "Conv2DOptions", Padding=padding,
                 StrideW=stride, StrideH=stride, FusedActivationFunction=_FUSED[act],
                 DilationWFactor=1, DilationHFactor=1)
        return self.hard_swish(out, name) if act == "hard_swish" else out

    def grouped(self, x: int, filters: int, kernel: int, stride: int, act: str, name: str,
                groups: int | None) -> int:
        """A KxK conv of `groups` groups (None: a plain conv) in this writer's form:
        'native' one CONV_2D, 'split' SPLIT -> CONV_2D per group -> CONCATENATION (the split
        tensors keep the input's quantization, as the converter writes them); a per-layer
        form picks one of the two for this conv (`grouped_forms.layer_form`, as the builder)."""
        n, h, w, c = self.shape(x)
        if not groups or groups == 1 or layer_form(
                self.grouped_conv, height=h, in_channels=c, out_channels=filters,
                groups=groups, kernel=kernel, stride=stride) == "native":
            return self.conv(x, filters, kernel, stride, act, name, groups=groups or 1)
        axis = self._constant(f"{name}/split_axis", np.array(3, np.int32))
        source = self.tensors[x]
        parts = [self._add(_Tensor(f"{name}/split{i}", (n, h, w, c // groups), source.dtype,
                                   None, source.scale, source.zero_point))
                 for i in range(groups)]
        self._op("SPLIT", [axis, x], parts, "SplitOptions", NumSplits=groups)
        outs = [self.conv(p, filters // groups, kernel, stride, act, f"{name}_g{i}")
                for i, p in enumerate(parts)]
        out = self.activation(f"{name}/concat", (*self.shape(outs[0])[:3], filters),
                              "relu6" if act == "relu6" else
                              "relu" if act == "relu" else "linear")
        return self._op("CONCATENATION", outs, [out], "ConcatenationOptions", Axis=-1,
                        FusedActivationFunction="NONE")

    def depthwise(self, x: int, kernel: int, stride: int, act: str, name: str) -> int:
        """DEPTHWISE_CONV_2D (depth multiplier 1), padding SAME, the activation fused."""
        n, h, w, c = self.shape(x)
        wt = self._weights(f"{name}/weights", (1, kernel, kernel, c), 3, kernel * kernel)
        b = self._bias(f"{name}/bias", x, wt, c)
        out = self.activation(name, (n, -(-h // stride), -(-w // stride), c),
                              "relu6" if act == "relu6" else
                              "relu" if act == "relu" else "linear")
        self._count(wt, out, False)
        self._op("DEPTHWISE_CONV_2D", [x, wt, b], [out], "DepthwiseConv2DOptions",
                 Padding="SAME", StrideW=stride, StrideH=stride, DepthMultiplier=1,
                 FusedActivationFunction=_FUSED[act], DilationWFactor=1, DilationHFactor=1)
        return self.hard_swish(out, name) if act == "hard_swish" else out

    def hard_swish(self, x: int, name: str) -> int:
        out = self.activation(f"{name}/hard_swish", self.shape(x), "hard_swish")
        return self._op("HARD_SWISH", [x], [out])

    def add(self, a: int, b: int, name: str) -> int:
        out = self.activation(f"{name}/add", self.shape(a), "add")
        return self._op("ADD", [a, b], [out], "AddOptions", FusedActivationFunction="NONE")

    def mul(self, a: int, b: int, name: str, produced_by: str) -> int:
        shape = tuple(np.broadcast_shapes(self.shape(a), self.shape(b)))
        out = self.activation(f"{name}/mul", shape, produced_by)
        return self._op("MUL", [a, b], [out], "MulOptions", FusedActivationFunction="NONE")

    def mean(self, x: int, keep_dims: bool, name: str) -> int:
        """Global average pooling: MEAN over axes (1, 2)."""
        n, _, _, c = self.shape(x)
        axes = self._constant(f"{name}/axes", np.array([1, 2], np.int32))
        out = self.activation(f"{name}/mean", (n, 1, 1, c) if keep_dims else (n, c), "mean")
        return self._op("MEAN", [x, axes], [out], "ReducerOptions", KeepDims=keep_dims)

    def fully_connected(self, x: int, units: int, name: str) -> int:
        """FULLY_CONNECTED over the last dimension (a [1, 1, 1, C] input is flattened)."""
        cin = self.shape(x)[-1]
        wt = self._weights(f"{name}/weights", (units, cin), 0, cin, uniform=True)
        b = self._bias(f"{name}/bias", x, wt, units)
        out = self.activation(name, (self.shape(x)[0], units), "logits")
        self._count(wt, out, True)
        return self._op("FULLY_CONNECTED", [x, wt, b], [out], "FullyConnectedOptions",
                        FusedActivationFunction="NONE", WeightsFormat="DEFAULT",
                        KeepNumDims=False)

    # -- blocks (as mhmodels.layers.block builds them) ---------------------------------------
    def squeeze_excite(self, x: int, squeeze: int, name: str) -> int:
        s = self.mean(x, True, f"{name}/pool")
        # Keras' default padding (VALID) there, as in mhmodels.layers.squeeze_excite.
        s = self.conv(s, squeeze, 1, 1, "relu", f"{name}/reduce", padding="VALID",
                      keras_bias=True)
        # relu6(x + 3) / 6: the converter folds + 3 into the bias and fuses the ReLU6.
        s = self.conv(s, self.shape(x)[-1], 1, 1, "relu6", f"{name}/expand", bias_offset=3.0,
                      padding="VALID", keras_bias=True)
        sixth = self._constant(f"{name}/sixth", np.array(1.0 / 6.0, np.float32), "gate")
        s = self.mul(s, sixth, f"{name}/gate", "gate")
        return self.mul(x, s, f"{name}/scale", "linear")

    def block(self, x: int, r: ResolvedLayer) -> int:
        layer, name = r.layer, r.name
        if layer.kind == "conv":
            return self.conv(x, r.filters, layer.kernel, layer.stride, layer.activation, name,
                             bias=layer.use_bias or layer.batch_norm, keras_bias=layer.use_bias)
        if layer.kind == "ds":
            x = self.depthwise(x, layer.kernel, layer.stride, layer.activation, f"{name}/dw")
            return self.conv(x, r.filters, 1, 1, layer.activation, f"{name}/pw")
        h = x
        if layer.kind == "fused_ibn":
            if layer.expansion != 1:
                h = self.grouped(h, r.hidden, layer.kernel, layer.stride, layer.activation,
                                 f"{name}/fused", r.groups)
        else:  # ibn
            if layer.expansion != 1:
                h = self.conv(h, r.hidden, 1, 1, layer.activation, f"{name}/expand")
            if r.groups:
                h = self.grouped(h, r.hidden, layer.kernel, layer.stride, layer.activation,
                                 f"{name}/group", r.groups)
            else:
                h = self.depthwise(h, layer.kernel, layer.stride, layer.activation,
                                   f"{name}/dw")
        if r.se_squeeze is not None:
            h = self.squeeze_excite(h, r.se_squeeze, f"{name}/se")
        h = self.conv(h, r.filters, 1, 1, "linear", f"{name}/project")
        if layer.residual and layer.stride == 1 and self.shape(x)[-1] == r.filters:
            h = self.add(x, h, name)
        return h

    # -- serialisation ---------------------------------------------------------------------
    def to_bytes(self, description: str = "mhmodels.tflite_writer") -> bytes:
        """The .tflite flatbuffer: buffers, tensors, operators, the subgraph, operator codes,
        then the model table (flatbuffers are written back to front, in this order)."""
        import flatbuffers
        opcodes = list(dict.fromkeys(op[0] for op in self.ops))
        b = flatbuffers.Builder(1024 + sum(len(t.data or b"") for t in self.tensors))
        buffer_offsets, buffer_of = _write_buffers(b, self.tensors)
        tensor_offsets = _write_tensors(b, self.tensors, buffer_of)
        op_offsets = [_write_operator(b, op, opcodes) for op in self.ops]
        subgraph = _write_subgraph(b, tensor_offsets, op_offsets, self.inputs, self.outputs)
        code_offsets = _write_opcodes(b, opcodes, self.int8, self.native_grouped)
        M = _schema("Model")
        codes = _table_vector(b, M.ModelStartOperatorCodesVector, code_offsets)
        subgraphs = _table_vector(b, M.ModelStartSubgraphsVector, [subgraph])
        buffers = _table_vector(b, M.ModelStartBuffersVector, buffer_offsets)
        desc = b.CreateString(description)
        M.ModelStart(b)
        M.ModelAddVersion(b, TFLITE_SCHEMA_VERSION)
        M.ModelAddOperatorCodes(b, codes)
        M.ModelAddSubgraphs(b, subgraphs)
        M.ModelAddDescription(b, desc)
        M.ModelAddBuffers(b, buffers)
        b.Finish(M.ModelEnd(b), file_identifier=b"TFL3")
        return bytes(b.Output())


# --------------------------------------------------------------------------------------------
# Serialisation: each part of the flatbuffer, in the order GraphWriter.to_bytes writes them.

def _table_vector(b, start, offsets: list[int]) -> int:
    """A vector of table offsets (prepended back to front, as flatbuffers lays them out)."""
    start(b, len(offsets))
    for v in reversed(offsets):
        b.PrependUOffsetTRelative(v)
    return b.EndVector()


def _write_buffers(b, tensors: Sequence[_Tensor]) -> tuple[list[int], dict[int, int]]:
    """Buffers: 0 is the empty sentinel; one per constant tensor, data 16-byte aligned.
    -> (buffer offsets, tensor index -> buffer index)."""
    Buf = _schema("Buffer")
    buffer_of: dict[int, int] = {}
    buffer_offsets = []
    Buf.BufferStart(b)
    buffer_offsets.append(Buf.BufferEnd(b))
    for i, t in enumerate(tensors):
        if t.data is None:
            continue
        b.StartVector(1, len(t.data), 16)
        b.head -= len(t.data)
        b.Bytes[b.head:b.head + len(t.data)] = t.data
        data = b.EndVector()
        Buf.BufferStart(b)
        Buf.BufferAddData(b, data)
        buffer_of[i] = len(buffer_offsets)
        buffer_offsets.append(Buf.BufferEnd(b))
    return buffer_offsets, buffer_of


def _write_quantization(b, t: _Tensor) -> int:
    """A tensor's scales and zero points along its quantized dimension."""
    Q = _schema("QuantizationParameters")
    scale = b.CreateNumpyVector(np.asarray(t.scale, np.float32))
    zero = b.CreateNumpyVector(np.asarray(t.zero_point, np.int64))
    Q.QuantizationParametersStart(b)
    Q.QuantizationParametersAddScale(b, scale)
    Q.QuantizationParametersAddZeroPoint(b, zero)
    Q.QuantizationParametersAddQuantizedDimension(b, t.quantized_dimension)
    return Q.QuantizationParametersEnd(b)


def _write_tensors(b, tensors: Sequence[_Tensor], buffer_of: dict[int, int]) -> list[int]:
    """Every tensor: shape, type, its buffer (0: none) and quantization."""
    T, ttype = _schema("Tensor"), _enum("TensorType")
    tensor_offsets = []
    for i, t in enumerate(tensors):
        quant = _write_quantization(b, t) if t.scale is not None else None
        name = b.CreateString(t.name)
        shape = b.CreateNumpyVector(np.asarray(t.shape, np.int32))
        T.TensorStart(b)
        T.TensorAddShape(b, shape)
        T.TensorAddType(b, ttype[t.dtype.upper()])
        T.TensorAddBuffer(b, buffer_of.get(i, 0))
        T.TensorAddName(b, name)
        if quant is not None:
            T.TensorAddQuantization(b, quant)
        tensor_offsets.append(T.TensorEnd(b))
    return tensor_offsets


def _write_options(b, options_type: str, options: dict[str, Any]) -> int:
    """An operator's builtin options table; enum-valued options given by their names."""
    enums = {"FusedActivationFunction": _enum("ActivationFunctionType"),
             "Padding": _enum("Padding"),
             "WeightsFormat": _enum("FullyConnectedOptionsWeightsFormat")}
    module = _schema(options_type)
    getattr(module, f"{options_type}Start")(b)
    for key, value in options.items():
        if key in enums:
            value = enums[key][value]
        getattr(module, f"{options_type}Add{key}")(b, value)
    return getattr(module, f"{options_type}End")(b)


def _write_operator(b, op: tuple, opcodes: list[str]) -> int:
    """One operator: its opcode index, input and output tensors, builtin options."""
    name, inputs, outputs, options_type, options = op
    Op = _schema("Operator")
    opts = _write_options(b, options_type, options) if options_type != "NONE" else 0
    ins = b.CreateNumpyVector(np.asarray(inputs, np.int32))
    outs = b.CreateNumpyVector(np.asarray(outputs, np.int32))
    Op.OperatorStart(b)
    Op.OperatorAddOpcodeIndex(b, opcodes.index(name))
    Op.OperatorAddInputs(b, ins)
    Op.OperatorAddOutputs(b, outs)
    if options_type != "NONE":
        Op.OperatorAddBuiltinOptionsType(b, _enum("BuiltinOptions")[options_type])
        Op.OperatorAddBuiltinOptions(b, opts)
    return Op.OperatorEnd(b)


def _write_subgraph(b, tensor_offsets: list[int], op_offsets: list[int],
                    inputs: Sequence[int], outputs: Sequence[int]) -> int:
    """The one subgraph, 'main'."""
    SG = _schema("SubGraph")
    tensors = _table_vector(b, SG.SubGraphStartTensorsVector, tensor_offsets)
    sg_inputs = b.CreateNumpyVector(np.asarray(inputs, np.int32))
    sg_outputs = b.CreateNumpyVector(np.asarray(outputs, np.int32))
    operators = _table_vector(b, SG.SubGraphStartOperatorsVector, op_offsets)
    sg_name = b.CreateString("main")
    SG.SubGraphStart(b)
    SG.SubGraphAddTensors(b, tensors)
    SG.SubGraphAddInputs(b, sg_inputs)
    SG.SubGraphAddOutputs(b, sg_outputs)
    SG.SubGraphAddOperators(b, operators)
    SG.SubGraphAddName(b, sg_name)
    return SG.SubGraphEnd(b)


def _write_opcodes(b, opcodes: list[str], int8: bool, native_grouped: bool = False
                   ) -> list[int]:
    """The operator codes, at the versions the converter writes (a native grouped CONV_2D
    needs the version that infers groups from the filter depth)."""
    OC, builtin = _schema("OperatorCode"), _enum("BuiltinOperator")
    code_offsets = []
    for name in opcodes:
        code = builtin[name]
        version = _GROUPED_CONV_VERSION if name == "CONV_2D" and native_grouped \
            else _INT8_VERSIONS.get(name, 1) if int8 else 1
        OC.OperatorCodeStart(b)
        OC.OperatorCodeAddDeprecatedBuiltinCode(b, min(code, 127))
        OC.OperatorCodeAddBuiltinCode(b, code)
        OC.OperatorCodeAddVersion(b, version)
        code_offsets.append(OC.OperatorCodeEnd(b))
    return code_offsets


def write_graph(spec: ModelSpec, width: float = 1.0, *, quantization: str = "int8",
                input_shape: Sequence[int] = (224, 224, 3), num_classes: int = 1001,
                seed: int = 0, grouped_conv: str = "native") -> GraphWriter:
    """The graph of `spec` (see `write_tflite`), before serialisation: `.profile` gives its
    params and MAdds without building a Keras model, `.to_bytes()` the file."""
    shape = check_input_shape(spec, input_shape)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    g = GraphWriter(quantization, seed, grouped_conv)
    x = g.input((1, *shape))
    layers = resolve(spec, width, in_channels=shape[2])
    for r in layers:
        if not r.name.startswith("top"):
            x = g.block(x, r)
    x = g.mean(x, bool(spec.top), "pool")
    for r in layers:
        if r.name.startswith("top"):
            x = g.block(x, r)
    g.outputs.append(g.fully_connected(x, num_classes, "classifier"))
    return g


def write_tflite(spec: ModelSpec, width: float = 1.0, *, quantization: str = "int8",
                 input_shape: Sequence[int] = (224, 224, 3), num_classes: int = 1001,
                 seed: int = 0, grouped_conv: str = "native") -> bytes:
    """The TFLite flatbuffer of `spec` at `width`, as `export_tflite` would write the model
    `build_model(spec, width, input_shape=..., num_classes=...)` (batch 1, logits), with
    random weights and fixed quantization parameters: for latency, not for predictions.

    Args:
      spec: the architecture.
      width: width multiplier (the builder's rounding rules).
      quantization: 'int8' (full integer, int8 input and output) or 'float'.
      input_shape: (height, width, 3), fixed.
      num_classes: classifier outputs.
      seed: of the random weights.
      grouped_conv: the form of grouped convolutions, 'native', 'split' or per layer
        ('auto:u85', `mhmodels.grouped_forms`) (as
        `export_tflite(..., grouped_conv=...)`; `mhmodels.export.grouped_conv_form(target)`
        says which a hardware runs faster).
    Returns:
      The .tflite file's bytes.
    Raises:
      ValueError: a bad quantization, width, input shape or num_classes.
    """
    return write_graph(spec, width, quantization=quantization, input_shape=input_shape,
                       num_classes=num_classes, seed=seed,
                       grouped_conv=grouped_conv).to_bytes()


def write_tflite_file(spec: ModelSpec, path: str | os.PathLike, **kwargs) -> str:
    """`write_tflite` to `path` (atomically); returns the path."""
    from mhmodels.files import atomic_write
    atomic_write(path, write_tflite(spec, **kwargs))
    return os.fspath(path)


# --------------------------------------------------------------------------------------------
# Reading: the structure two .tflite files must share to have the same latency.

@dataclass(frozen=True)
class TensorStructure:
    """A tensor as latency sees it: dtype, shape, constant or not, quantization layout
    ('none', 'per_tensor' or 'per_channel:<dimension>')."""

    dtype: str
    shape: tuple[int, ...]
    constant: bool
    quantization: str


@dataclass(frozen=True)
class OpStructure:
    """One op: builtin name, version, options (fused activation, strides, padding, ...)."""

    name: str
    version: int
    options: tuple[tuple[str, Any], ...]
    inputs: tuple[TensorStructure | None, ...]
    outputs: tuple[TensorStructure, ...]


def tflite_structure(model: bytes | str | os.PathLike) -> list[OpStructure]:
    """The ops of the main subgraph in order, with what determines their latency (no names,
    no values, no scales)."""
    from pathlib import Path
    data = bytes(model) if isinstance(model, (bytes, bytearray)) else Path(model).read_bytes()
    M = _schema("Model").Model.GetRootAs(data, 0)
    names = {v: k for k, v in _enum("BuiltinOperator").items()}
    type_names = {v: k.lower() for k, v in _enum("TensorType").items()}
    option_names = {v: k for k, v in _enum("BuiltinOptions").items()}
    sg = M.Subgraphs(0)

    def tensor(i: int) -> TensorStructure | None:
        if i < 0:
            return None
        t = sg.Tensors(i)
        q = t.Quantization()
        layout = "none"
        if q is not None and q.ScaleLength() > 1:
            layout = f"per_channel:{q.QuantizedDimension()}"
        elif q is not None and q.ScaleLength() == 1:
            layout = "per_tensor"
        shape = tuple(int(d) for d in t.ShapeAsNumpy()) if t.ShapeLength() else ()
        return TensorStructure(type_names[t.Type()], shape,
                               M.Buffers(t.Buffer()).DataLength() > 0, layout)

    ops = []
    for j in range(sg.OperatorsLength()):
        op = sg.Operators(j)
        code = M.OperatorCodes(op.OpcodeIndex())
        name = names[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())]
        options: dict[str, Any] = {}
        kind = option_names.get(op.BuiltinOptionsType(), "NONE")
        if kind != "NONE" and op.BuiltinOptions() is not None:
            table = op.BuiltinOptions()
            cls = getattr(_schema(kind), kind)
            obj = cls()
            obj.Init(table.Bytes, table.Pos)
            for attr in dir(cls):
                if attr[0].isupper() and not attr.startswith(("GetRootAs", "Init")) and \
                        "BufferHasIdentifier" not in attr and callable(getattr(cls, attr)):
                    try:
                        options[attr] = getattr(obj, attr)()
                    except TypeError:  # vector accessors take an index
                        continue
        ops.append(OpStructure(name, int(code.Version()), tuple(sorted(options.items())),
                               tuple(tensor(int(i)) for i in op.InputsAsNumpy()),
                               tuple(tensor(int(i)) for i in op.OutputsAsNumpy())))
    return ops
