"""TFLite export of float Keras 3 models and of QAT (tf_keras) twins.

    mhmodels.export_tflite(model, 'm.tflite')                                   # float
    mhmodels.export_tflite(model, 'm.tflite', quantization='dynamic')           # int8 weights
    mhmodels.export_tflite(model, 'm.tflite', quantization='int8',
                           representative_data=images)                          # post-training
    mhmodels.export_tflite(mhmodels.quantize(model), 'm.tflite', quantization='uint8')  # QAT

quantization:
  'float'   - float32 graph (of a QAT model: float ops with QUANTIZE/DEQUANTIZE pairs where
              the fake-quant ops were, i.e. quantization simulated in float).
  'dynamic' - int8 weights, float activations (dynamic-range quantization). Float models only.
  'int8'    - full integer: every op on int8 tensors (int32 biases), int8 input and output.
  'uint8'   - as 'int8' with uint8 input and output (a QUANTIZE op at each end).

Full-integer export of a float model calibrates on `representative_data` (required); of a QAT
model (`mhmodels.quantize`) it uses the ranges learned in training. Either way the written
graph is checked (`check_integer_only`): a float op left in it is an error and no file is
written. Writes are atomic: a temporary file in the target directory, replaced into place.

Conversion goes through a forward-pass-only SavedModel (`ExportArchive` of Keras 3 or tf_keras,
one `training=False` endpoint whose input signature has a static batch of 1 by default) and
`from_saved_model`. Never `from_concrete_functions`: it drops the weights. Inputs must have a
fixed shape (the builder requires one).

`tflite_ops(path)` lists a model's ops with their tensor dtypes (via the LiteRT interpreter,
which does not need TensorFlow).
"""
from __future__ import annotations

import collections
import contextlib
import io
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from mhmodels.cli import filtered_native_stderr
from mhmodels.files import atomic_write, check_writable_dir

from mhmodels.weights_manifest import QUANTIZATIONS  # one definition, on the low floor
# Dtypes allowed on every op of a full-integer graph (int32: biases, shapes, axes).
INTEGER_DTYPES = frozenset({"int8", "int32"})
DEFAULT_CALIBRATION_SAMPLES = 200


class ExportError(RuntimeError):
    """Conversion failed or produced a graph that does not meet the requested quantization."""


@dataclass(frozen=True)
class OpInfo:
    """One op of a TFLite graph: its name and the dtypes of its input and output tensors."""

    index: int
    name: str
    input_dtypes: tuple[str, ...]
    output_dtypes: tuple[str, ...]


@dataclass(frozen=True)
class ExportResult(os.PathLike):
    """What `export_tflite` wrote. Usable wherever a path is (`os.fspath(result)`)."""

    path: str
    quantization: str
    from_qat: bool
    size_bytes: int
    seconds: float
    op_counts: Mapping[str, int] = field(default_factory=dict)

    def __fspath__(self) -> str:
        return self.path

    def __str__(self) -> str:
        return self.path


# --------------------------------------------------------------------------------------------
# Reading TFLite graphs.

def _interpreter(path_or_bytes, **kwargs):
    from ai_edge_litert.interpreter import Interpreter
    if isinstance(path_or_bytes, (bytes, bytearray)):
        return Interpreter(model_content=bytes(path_or_bytes), **kwargs)
    return Interpreter(model_path=os.fspath(path_or_bytes), **kwargs)


def tflite_ops(path_or_bytes) -> list[OpInfo]:
    """Every op of the model's main graph in execution order, with tensor dtypes.

    Read with the LiteRT interpreter without the default (XNNPACK) delegate, so the list is the
    converter's graph, not delegate partitions.

    Args:
      path_or_bytes: a `.tflite` path (or an `ExportResult`) or the flatbuffer's bytes.
    Returns:
      One `OpInfo` (op name, input and output dtypes) per op.
    Raises:
      ValueError: the file or bytes are not a TFLite model LiteRT can load.
    """
    from ai_edge_litert.interpreter import OpResolverType
    interp = _interpreter(
        path_or_bytes,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    dtypes: dict[int, str] = {}

    def dtype(index: int) -> str:
        if index not in dtypes:
            dtypes[index] = _dtype_name(interp._get_tensor_details(index, 0)["dtype"])
        return dtypes[index]

    ops = []
    for op in interp._get_ops_details():
        ops.append(OpInfo(
            index=int(op["index"]),
            name=str(op["op_name"]),
            input_dtypes=tuple(dtype(int(i)) for i in op["inputs"] if int(i) >= 0),
            output_dtypes=tuple(dtype(int(i)) for i in op["outputs"] if int(i) >= 0),
        ))
    return ops


def _dtype_name(dtype) -> str:
    import numpy as np
    return np.dtype(dtype).name


def io_dtypes(path_or_bytes) -> tuple[list[str], list[str]]:
    """The dtypes of the model's inputs and outputs."""
    interp = _interpreter(path_or_bytes)
    return ([_dtype_name(d["dtype"]) for d in interp.get_input_details()],
            [_dtype_name(d["dtype"]) for d in interp.get_output_details()])


def float_ops(path_or_bytes, io_dtype: str = "int8") -> list[OpInfo]:
    """Ops of the graph that touch a tensor which is not int8/int32.

    With `io_dtype='uint8'` the QUANTIZE ops converting the uint8 input and output are allowed.
    """
    bad = []
    for op in tflite_ops(path_or_bytes):
        types = set(op.input_dtypes) | set(op.output_dtypes)
        if op.name == "QUANTIZE" and io_dtype == "uint8":
            types -= {"uint8"}
        if not types <= INTEGER_DTYPES:
            bad.append(op)
    return bad


def check_integer_only(path_or_bytes, io_dtype: str = "int8") -> None:
    """Raise ExportError unless every op is integer-only and the I/O are `io_dtype`."""
    bad = float_ops(path_or_bytes, io_dtype)
    if bad:
        listed = ", ".join(f"#{op.index} {op.name} {op.input_dtypes}->{op.output_dtypes}"
                           for op in bad[:8])
        raise ExportError(f"{len(bad)} op(s) are not integer-only: {listed}"
                          + (" ..." if len(bad) > 8 else ""))
    inputs, outputs = io_dtypes(path_or_bytes)
    if set(inputs) != {io_dtype} or set(outputs) != {io_dtype}:
        raise ExportError(f"expected {io_dtype} input and output, got inputs {inputs}, "
                          f"outputs {outputs}")


def op_counts(path_or_bytes) -> dict[str, int]:
    return dict(collections.Counter(op.name for op in tflite_ops(path_or_bytes)))


def predict_tflite(path_or_bytes, inputs, *, num_threads: int = 1):
    """Run a single-input TFLite model on float `inputs` (N, ...), one sample at a time.

    Integer inputs and outputs are (de)quantized with the model's own scale and zero point,
    so the result is float logits comparable with Keras for every `quantization`.
    """
    import numpy as np

    interp = _interpreter(path_or_bytes, num_threads=num_threads)
    interp.allocate_tensors()
    (inp,) = interp.get_input_details()
    (out,) = interp.get_output_details()
    results = []
    for sample in np.asarray(inputs, dtype=np.float32):
        value = sample[None]
        if inp["dtype"] != np.float32:
            scale, zero = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            value = np.clip(np.round(value / scale + zero), info.min, info.max).astype(
                inp["dtype"])
        interp.set_tensor(inp["index"], value)
        interp.invoke()
        result = interp.get_tensor(out["index"])
        if out["dtype"] != np.float32:
            scale, zero = out["quantization"]
            result = (result.astype(np.float32) - zero) * scale
        results.append(np.asarray(result, dtype=np.float32))
    return np.concatenate(results)


# --------------------------------------------------------------------------------------------
# Representative data.

def _input_shape(model) -> tuple[int, ...]:
    shape = model.inputs[0].shape
    dims = tuple(shape)[1:]
    if any(d is None for d in dims):
        raise ExportError(f"model {model.name!r} has a dynamic input shape {tuple(shape)}; "
                          "build it with a fixed input_shape (TFLite/XNNPACK need static shapes)")
    return tuple(int(d) for d in dims)


def representative_dataset(data, input_shape: tuple[int, ...],
                           max_samples: int = DEFAULT_CALIBRATION_SAMPLES):
    """A converter `representative_dataset` callable yielding single float32 samples.

    `data` is an array of inputs (N, H, W, C) or one input (H, W, C); an iterable of such
    batches or of (inputs, labels) pairs (a tf.data.Dataset, a list, a generator function);
    at most `max_samples` samples are used.
    """
    import numpy as np

    def batches():
        source = data() if callable(data) else data
        if isinstance(source, tuple) and len(source) in (2, 3) and \
                np.ndim(source[0]) == len(input_shape) + 1:
            source = source[0]  # one (inputs, labels[, weights]) tuple
        if hasattr(source, "shape") and not isinstance(source, (list, tuple)):
            yield np.asarray(source)
            return
        for item in source:
            if isinstance(item, (tuple, list)) and len(item) in (1, 2, 3) and \
                    not np.isscalar(item[0]):
                item = item[0]  # (inputs, labels[, weights])
            if isinstance(item, Mapping):
                if len(item) != 1:
                    raise ValueError("representative_data items must have one input")
                item = next(iter(item.values()))
            yield np.asarray(item)

    def gen():
        count = 0
        for batch in batches():
            batch = np.asarray(batch, dtype=np.float32)
            if batch.shape == tuple(input_shape):
                batch = batch[None]
            if batch.ndim != len(input_shape) + 1 or batch.shape[1:] != tuple(input_shape):
                raise ValueError(f"representative_data batch of shape {batch.shape} does not fit "
                                 f"the model input (N, {', '.join(map(str, input_shape))})")
            if not np.all(np.isfinite(batch)):
                raise ValueError("representative_data contains NaN or inf")
            for sample in batch:
                if count >= max_samples:
                    return
                yield [sample[None]]
                count += 1
        if count == 0:
            raise ValueError("representative_data is empty")

    return gen


# --------------------------------------------------------------------------------------------
# Conversion.

def _converter(model, frontend: str, workdir: str, batch_size: int | None):
    """A converter of the model's forward pass (training=False) with a fixed input signature.

    Both front-ends go through a forward-pass-only SavedModel (`ExportArchive`), whose input
    signature carries `batch_size`: with a static batch every shape op (e.g. Flatten's
    SHAPE / STRIDED_SLICE / PACK) folds to a constant, which NPUs need (vela cannot run SHAPE),
    and the graph states the batch the interpreter allocates anyway."""
    import tensorflow as tf
    saved = os.path.join(workdir, "saved_model")
    if frontend == "keras":
        import keras
        archive = keras.export.ExportArchive()
    else:  # tf_keras's full SavedModel tracing of every layer is slow: forward pass only
        import tf_keras
        archive = tf_keras.export.ExportArchive()
    archive.track(model)
    spec = tf.TensorSpec((batch_size, *_input_shape(model)), tf.float32, name="image")
    archive.add_endpoint("serve", lambda x: model(x, training=False), input_signature=[spec])
    archive.write_out(saved, **({"verbose": False} if frontend == "keras" else {}))
    return tf.lite.TFLiteConverter.from_saved_model(saved)


def _configure(converter, quantization: str, qat: bool, representative) -> None:
    import tensorflow as tf
    if quantization == "float":
        return
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "dynamic":
        return
    if not qat:
        # Not for QAT graphs: the converter validates this flag before it has looked at the
        # graph, and without a representative_dataset it raises "For full integer
        # quantization, a `representative_dataset` must be specified." The fake-quant ranges
        # make the QAT graph integer anyway; check_integer_only verifies it.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    io = tf.int8 if quantization == "int8" else tf.uint8
    converter.inference_input_type = io
    converter.inference_output_type = io
    if not qat:
        samples = representative  # checked and gathered before the conversion started

        def replay():
            for sample in samples:
                yield [sample]
        converter.representative_dataset = replay


def _frontend_and_qat(model) -> tuple[str, bool]:
    from mhmodels.builder import frontend_of
    frontend = frontend_of(model)
    qat = False
    if frontend == "tf_keras":
        from mhmodels.qat import is_qat_model
        qat = is_qat_model(model)
    return frontend, qat


def export_tflite(model, path: str | os.PathLike, quantization: str = "float",
                  representative_data: Any = None, *, check: bool = True,
                  calibration_samples: int = DEFAULT_CALIBRATION_SAMPLES,
                  batch_size: int | None = 1, grouped_conv: str | None = None) -> ExportResult:
    """Convert `model` to a TFLite flatbuffer at `path` (written atomically).

    Args:
      model: a float Keras 3 model, a float tf_keras model, or a QAT twin from
        `mhmodels.quantize`; built with a fixed input shape.
      path: the `.tflite` file to write (its directory must exist).
      quantization: 'float', 'dynamic' (int8 weights, float compute), 'int8' or 'uint8'
        (full integer, inputs and outputs of that type).
      representative_data: float models with 'int8' / 'uint8' only: input batches for
        calibration (an array, a list of arrays, a tf.data.Dataset; see
        `representative_dataset`). A QAT model's ranges are learned and need none.
      check: for 'int8' / 'uint8', fail (writing nothing) if any op keeps a float tensor.
      calibration_samples: at most this many calibration images are used.
      batch_size: the graph's static batch (default 1, what on-device interpreters and NPU
        compilers want); None leaves it dynamic (shape ops then stay in the graph).
      grouped_conv: write the grouped convolutions of a float mhmodels model 'native' (one
        CONV_2D), 'split' (SPLIT -> CONV_2D per group -> CONCATENATION) or per layer
        ('auto:u85': each conv's form by a measured rule, `mhmodels.grouped_forms`, the
        rule the direct writer follows too); None keeps the model's form.
        `grouped_conv_form(target)` says which form runs faster where. A QAT model keeps
        the form it was quantized in (quantize `mhmodels.with_grouped_conv(model, form)`
        for another one).
    Returns:
      An `ExportResult`: usable as the path, with size, seconds and op counts.
    Raises:
      ValueError: a bad argument (quantization, missing or superfluous representative_data,
        a directory as path, a calibration batch of another shape, a dynamic input shape).
      FileNotFoundError / PermissionError: the directory is missing or not writable.
      ExportError: the converter failed, or an int8 graph kept float ops (`check`).
    """
    frontend, qat = _frontend_and_qat(model)
    from mhmodels.builder import build_args
    takes_minus_one_one = build_args(model) is not None  # built by mhmodels: the input rule
    if grouped_conv is not None:
        model = _in_grouped_form(model, grouped_conv, qat)
    if frontend == "keras":  # a mixed-precision model converts from its float32 copy
        from mhmodels.builder import float32_copy
        model = float32_copy(model)
    _check_export_args(quantization, qat, representative_data, batch_size, calibration_samples)
    input_shape = _input_shape(model)  # a dynamic one is refused here
    path = _checked_target(path)
    if representative_data is not None:  # checked now, not after seconds of conversion
        representative_data = [s[0] for s in representative_dataset(
            representative_data, input_shape, calibration_samples)()]
        if takes_minus_one_one:
            from mhmodels.preprocessing import check_calibration_range
            check_calibration_range(representative_data)
    start = time.perf_counter()
    flatbuffer = _convert(model, frontend, qat, quantization, representative_data, batch_size)
    if quantization in ("int8", "uint8") and check:
        check_integer_only(flatbuffer, io_dtype=quantization)
    atomic_write(path, flatbuffer)
    return ExportResult(path=str(path), quantization=quantization, from_qat=qat,
                        size_bytes=len(flatbuffer), seconds=time.perf_counter() - start,
                        op_counts=op_counts(flatbuffer))


def _check_export_args(quantization: str, qat: bool, representative_data, batch_size,
                       calibration_samples) -> None:
    """Refuse a bad combination of export arguments before any work (one-line errors)."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}")
    full_integer = quantization in ("int8", "uint8")
    if qat and quantization == "dynamic":
        raise ValueError("quantization='dynamic' is for float models; a QAT model converts "
                         "to full integer with quantization='int8' or 'uint8' (or 'float')")
    if full_integer and not qat and representative_data is None:
        raise ValueError(
            f"quantization={quantization!r} of a float model needs representative_data (input "
            "batches to calibrate activation ranges, e.g. a few hundred training images "
            "preprocessed like the model's inputs); or quantize the model for QAT first with "
            "mhmodels.quantize(model)")
    if representative_data is not None and not (full_integer and not qat):
        raise ValueError(f"representative_data is only used for 'int8'/'uint8' export of float "
                         f"models, not for quantization={quantization!r}"
                         + (" of a QAT model (its ranges are learned)" if qat else ""))
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
    if not isinstance(calibration_samples, int) or calibration_samples < 1:
        raise ValueError(f"calibration_samples must be a positive integer, got "
                         f"{calibration_samples!r}")


def _checked_target(path: str | os.PathLike) -> Path:
    """`path` as a Path, once its directory is known to exist and take files."""
    path = Path(os.fspath(path))
    if path.is_dir():
        raise ValueError(f"{path} is a directory; give a file path such as {path / 'model.tflite'}")
    directory = path.parent  # Path("m.tflite").parent is Path(".")
    if not directory.is_dir():
        raise FileNotFoundError(f"directory {directory} does not exist")
    check_writable_dir(directory, f"export to {path}")
    return path


def _convert(model, frontend: str, qat: bool, quantization: str, representative_data,
             batch_size: int | None) -> bytes:
    """The TFLite converter run on `model`, quietly; its failures as ExportError."""
    workdir = tempfile.mkdtemp(prefix="mhmodels_export_")
    try:
        # Keras' SavedModel export prints "Saved artifact at ..." with its endpoints: noise.
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            # int8/uint8 I/O: TF's converter warns that it has no input statistics, which
            # only a v1 graph-def conversion would use (the range is in the graph).
            warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
            converter = _converter(model, frontend, workdir, batch_size)
            _configure(converter, quantization, qat, representative_data)
            try:
                with filtered_native_stderr(_is_converter_chatter):
                    return converter.convert()
            except ValueError as err:  # e.g. a bad representative_data batch
                if "representative_data" in str(err):
                    raise
                raise ExportError(f"TFLite conversion of {model.name!r} ({quantization}) "
                                  f"failed: {err}") from err
            except Exception as err:  # the converter raises many types; keep the cause
                raise ExportError(f"TFLite conversion of {model.name!r} ({quantization}) "
                                  f"failed: {err}") from err
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# Which form of grouped convolution each target runs faster (docs/grouped.md, measured at
# 224): on U55 / U65 vela's estimate is lower for the split form on all five
# MobileNet-EdgeTPU-V2 models (3-8%) and on 40 of 40 random multi_hw_grouped architectures
# (geometric mean 5%; a native grouped CONV_2D is split by vela itself, its fused ReLU left as
# a separate pass after the concat). On the U85 neither whole form wins: split is faster on 19
# of those 40 (by up to 22%) but up to 2.1x slower on the others, 7.8% slower in geometric
# mean, because the faster form depends on the layer (up to +9.2 ms for one split conv of 5
# input channels per group; up to -0.52 ms for a split regular g32 conv at 28x28). So the U85
# gets 'auto:u85': each grouped conv native or split by `mhmodels.grouped_forms.U85_RULE`
# (read from 916 per-layer vela probes, its comment gives them). End to end
# (benchmarks/grouped_forms.py --mode=archs, vela 5.2, 224): on 40 random multi_hw_grouped
# architectures not used to make the rule (seed 11) per layer / native is 0.932 in geometric
# mean (max 0.997), per layer / split 0.870 (max 1.013), within 1% of the better whole form
# on 39; on the 40 of seed 7, 0.949 (max 1.011) and 0.880 (max 1.004); on the five V2 models
# split's latency (tiny: +0.5%), 3-8% below native. LiteRT/XNNPACK on the
# CPU runs the native form as fast or faster (float and int8: within noise to 10%), with
# fewer ops.
GROUPED_CONV_BY_TARGET = {"cpu_float": "native", "cpu_int8": "native", "ethos-u": "split",
                          "ethos-u85": "auto:u85"}


def grouped_conv_form(target: str) -> str:
    """The form of grouped convs that runs faster on `target`: 'native', 'split' or a
    per-layer form ('auto:u85', `mhmodels.grouped_forms`).

    Args:
      target: 'cpu_float', 'cpu_int8', or a hardware name starting 'ethos-u' / 'ethos_u' /
        'u55' / 'u65' / 'u85' (an Arm NPU compiled by vela: split on the U55 / U65, per layer
        on the U85); other names get 'native' (one op: what the converter writes for a Keras
        grouped Conv2D).
    """
    name = target.lower().replace("_", "-")
    if name.startswith(("ethos-u85", "u85")):
        return GROUPED_CONV_BY_TARGET["ethos-u85"]
    if name.startswith(("ethos-u", "u55", "u65")):
        return GROUPED_CONV_BY_TARGET["ethos-u"]
    return GROUPED_CONV_BY_TARGET.get(name.replace("-", "_"), "native")


def _in_grouped_form(model, form: str, qat: bool):
    """`model` in grouped-conv `form` (see `export_tflite`)."""
    from mhmodels.builder import build_args, with_grouped_conv
    from mhmodels.grouped_forms import check_form

    check_form(form)
    if qat:
        from mhmodels.qat import recorded_build_args
        recorded = recorded_build_args(model).get("grouped_conv", "native")
        if recorded != form:
            raise ValueError(f"QAT model {model.name!r} holds its grouped convs in the "
                             f"{recorded!r} form; quantize mhmodels.with_grouped_conv(model, "
                             f"{form!r}) to export the {form!r} form")
        return model
    if build_args(model) is None:
        raise ValueError(f"grouped_conv={form!r} needs a model built by mhmodels in this "
                         f"process (model {model.name!r} has no build record)")
    return with_grouped_conv(model, form)


# Lines the converter's native code prints on every full-integer conversion, whatever the
# log level: they say nothing the caller did not ask for.
_CONVERTER_CHATTER = ("fully_quantize: ",)


def _is_converter_chatter(line: str) -> bool:
    return line.startswith(_CONVERTER_CHATTER)
