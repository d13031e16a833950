"""The direct TFLite writer against the converter: same graph, same vela estimate, same speed.

Each spec is exported once through the converter (`search.hardware.export_bytes`, the path
collection used so far), from a model whose batch-norm statistics and biases are random
(non-zero, as trained ones: the converter drops an all-zero classifier bias), and written once
by `mhmodels.tflite_writer`. Small mode: 48x48 inputs, five specs covering every block kind;
MHMODELS_TEST_FULL=1: every zoo model in both formats at 96x96.
"""
import time

import numpy as np
import pytest

from conftest import FULL

import mhmodels
from mhmodels.profile import count_layers
from mhmodels.tflite_writer import tflite_structure, write_graph, write_tflite

SIZE = 96 if FULL else 48
WIDTH = 0.5
CLASSES = 10
ZOO = ["mobilenet_edgetpu", "mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large",
       "mobilenet_v3_large_min", "mobilenet_v3_small", "multi_avg", "multi_max",
       "proxylessnas_mobile"]
# (spec, quantization): SE + hard-swish + a biased top (v3 small), fused blocks incl. fused
# e1 (EdgeTPU), depthwise-separable without a top (V1), random architectures of the space.
CASES = [(name, q) for name in ZOO for q in ("int8", "float")] + \
    [(f"space:{seed}", q) for seed in (1, 2, 3) for q in ("int8", "float")] if FULL else \
    [("mobilenet_v3_small", "int8"), ("mobilenet_edgetpu", "int8"), ("mobilenet_v1", "float"),
     ("space:1", "int8"), ("space:2", "float")]
# The grouped space (issue #20) in every form of its grouped convs: 'grouped:<seed>:<form>';
# 'auto:u85' is the U85's per-layer form, mixed in these specs (seed 2 at 48x48: 4 grouped
# convs split, 6 native), so both paths must take the same per-layer decisions.
CASES += [(f"grouped:{seed}:{form}", q) for seed in (1, 2)
          for form in ("native", "split", "auto:u85") for q in ("int8", "float")] if FULL else \
    [("grouped:1:split", "int8"), ("grouped:2:native", "float"), ("grouped:2:auto:u85", "int8")]


def spec_of(name: str):
    if name.startswith(("space:", "grouped:")):
        from search.space import get_space
        space = get_space("multi_hw" if name.startswith("space:") else "multi_hw_grouped")
        choices = space.sample(np.random.default_rng(int(name.split(":")[1])))
        return space.decode(space.canonical(choices), name="space_arch")
    return mhmodels.get_spec(name)


def form_of(name: str) -> str:
    """The grouped-conv form a case is exported in ('grouped:<seed>:<form>'; else native)."""
    return name.split(":", 2)[2] if name.startswith("grouped:") else "native"


def trained_like(model, seed: int = 0):
    """Random batch-norm statistics and biases: what a trained model's export looks like."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        if type(layer).__name__ == "BatchNormalization":
            gamma, beta, mean, var = weights
            weights = [rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.1, beta.shape),
                       rng.normal(0, 0.1, mean.shape), rng.uniform(0.5, 1.5, var.shape)]
        elif len(weights) == 2:  # kernel + bias
            weights = [weights[0], rng.normal(0, 0.1, weights[1].shape)]
        layer.set_weights([np.asarray(w, np.float32) for w in weights])
    return model


_CONVERTED: dict = {}
_PROFILES: dict = {}


def converted(name: str, quantization: str) -> bytes:
    """The converter's export of `name` (once per session)."""
    key = (name, quantization)
    if key not in _CONVERTED:
        from mhmodels.builder import build_model
        from search.hardware import export_bytes
        model = trained_like(build_model(spec_of(name), WIDTH, input_shape=(SIZE, SIZE, 3),
                                         num_classes=CLASSES, grouped_conv=form_of(name)))
        _CONVERTED[key] = export_bytes(model, quantization, SIZE)
        _PROFILES[name] = count_layers(model)
    return _CONVERTED[key]


def written(name: str, quantization: str) -> bytes:
    return write_tflite(spec_of(name), WIDTH, quantization=quantization,
                        input_shape=(SIZE, SIZE, 3), num_classes=CLASSES,
                        grouped_conv=form_of(name))


@pytest.mark.parametrize("name,quantization", CASES)
def test_structure_equals_the_converters(name, quantization):
    ours = tflite_structure(written(name, quantization))
    theirs = tflite_structure(converted(name, quantization))
    assert [op.name for op in ours] == [op.name for op in theirs]
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert a == b, f"op {i} ({a.name}) differs:\n ours   {a}\ntheirs {b}"
    graph = write_graph(spec_of(name), WIDTH, quantization=quantization,
                        input_shape=(SIZE, SIZE, 3), num_classes=CLASSES,
                        grouped_conv=form_of(name))
    assert (graph.profile.params, graph.profile.madds) == \
        (_PROFILES[name].params, _PROFILES[name].madds)
    if quantization == "int8":  # the quantization layout the issue names, spelled out
        convs = [op for op in ours if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D")]
        assert convs and all(op.inputs[1].quantization.startswith("per_channel")
                             and op.inputs[2].dtype == "int32"
                             and op.inputs[0].quantization == "per_tensor" for op in convs)


@pytest.mark.parametrize("name", sorted({n for n, q in CASES if q == "int8"}))
def test_vela_estimate_within_one_percent(name):
    from mhmodels.vela import PRESETS, estimate_tflite, preset
    for hw in PRESETS:
        theirs = estimate_tflite(converted(name, "int8"), preset(hw))
        ours = estimate_tflite(written(name, "int8"), preset(hw))
        assert ours.cpu_ops == theirs.cpu_ops == 0
        assert ours.npu_ops == theirs.npu_ops
        assert abs(ours.latency_ms / theirs.latency_ms - 1) < 0.01, (hw, ours, theirs)


@pytest.mark.parametrize("quantization", ["float", "int8"])
def test_litert_cpu_latency_within_noise(quantization):
    """Interleaved rounds (converter, writer, converter, ...): the writer's minimum thread CPU
    time is within the spread the converter's own file shows between rounds."""
    from mhmodels.latency import measure_tflite
    name = "space:1" if quantization == "int8" else "space:2"  # exported above already
    files = {"converter": converted(name, quantization), "writer": written(name, quantization)}
    rounds = {k: [] for k in files}
    for _ in range(6 if FULL else 4):
        for key, data in files.items():
            rounds[key].append(measure_tflite(data, runs=30, warmup=3, min_time_s=0.2).min_ms)
    conv, ours = np.array(rounds["converter"]), np.array(rounds["writer"])
    noise = max(conv.max() / conv.min() - 1, 0.05)
    assert abs(ours.min() / conv.min() - 1) <= noise, (rounds, noise)


def test_write_speed_and_size_at_224():
    spec = mhmodels.get_spec("multi_max")
    t0 = time.perf_counter()
    data = write_tflite(spec, quantization="int8")
    seconds = time.perf_counter() - t0
    assert seconds < 2.0, seconds  # measured ~0.2 s; the converter takes 5-26 s
    ops = tflite_structure(data)
    assert ops[0].inputs[0].shape == (1, 224, 224, 3) and ops[-1].outputs[0].shape == (1, 1001)
    # int8 weights: a byte per parameter (4.39 M, paper Table 1) plus per-channel int32
    # biases, scales and int64 zero points (measured 4.90 MB)
    assert 4.39e6 < len(data) < 5.2e6, len(data)


def test_bad_input_is_one_clear_error():
    spec = mhmodels.get_spec("multi_max")
    with pytest.raises(ValueError, match="quantization must be one of"):
        write_tflite(spec, quantization="uint8")
    with pytest.raises(ValueError, match="too small"):
        write_tflite(spec, input_shape=(16, 16, 3))
    with pytest.raises(ValueError, match="num_classes"):
        write_tflite(spec, num_classes=0)


@pytest.mark.parametrize("space_name", ["multi_hw",
                                        pytest.param("multi_hw_grouped", marks=pytest.mark.slow)])
def test_collection_rows_equal_with_either_export(space_name):
    """collect_latency's direct path gives the converter path's row: the same vela estimate
    (within 1%), MAdds and params, for the normaliser and a space architecture (the grouped
    space's written split, the form the NPUs get, on both paths)."""
    from search.collect_latency import measure_key, measure_key_direct
    from search.hardware import get_hardware
    from search.space import get_space
    space = get_space(space_name)
    hw = [get_hardware("ethos_u55")]
    arch = space.encode(space.canonical(space.sample(np.random.default_rng(5))))
    assert any(b.group_size for b in space.decode(space.parse(arch)).blocks) == \
        (space_name == "multi_hw_grouped")
    for key in ("mobilenet_v1", arch):
        slow = measure_key(key, hw, 32, {}, space)
        fast = measure_key_direct(key, hw, 32, {}, space)
        assert fast["madds_m"] == pytest.approx(slow["madds_m"], abs=1e-9)
        assert fast["params_m"] == pytest.approx(slow["params_m"], abs=1e-9)
        assert fast["ethos_u55_ms"] == pytest.approx(slow["ethos_u55_ms"], rel=0.01)
        assert fast["ethos_u55_cpu_ops"] == slow["ethos_u55_cpu_ops"] == 0


def _grouped_native(ops) -> int:
    """Native grouped KxK CONV_2Ds among `ops` (filter depth below the input's)."""
    return sum(op.name == "CONV_2D" and op.inputs[1].shape[-1] < op.inputs[0].shape[-1]
               and op.inputs[1].shape[1] > 1 for op in ops)


def test_each_hardware_gets_its_grouped_conv_form():
    """Ethos-U55 / U65 files hold the grouped convs split (SPLIT / CONCATENATION), the CPU's
    native (grouped CONV_2D, version 6), the U85's (any U85 configuration) each conv in the
    form of the per-layer rule: here both; a spec without grouped convs is one int8 file for
    all."""
    from search.hardware import get_hardware, write_formats
    hws = [get_hardware(n) for n in ("cpu_int8", "ethos_u55", "ethos_u65", "ethos_u85",
                                     "cpu_float", "vela:ethos-u85-256:Ethos_U85_SYS_DRAM_Low:"
                                     "Dedicated_Sram_384KB")]
    assert [hw.export_format for hw in hws] == ["int8", "int8+split", "int8+split",
                                                "int8+auto:u85", "float", "int8+auto:u85"]
    files, _ = write_formats(spec_of("grouped:2:native"), [hw.export_format for hw in hws],
                             SIZE)
    ops = {f: tflite_structure(data) for f, data in files.items()}
    names = {f: [op.name for op in o] for f, o in ops.items()}
    assert "SPLIT" in names["int8+split"] and "CONCATENATION" in names["int8+split"]
    assert "SPLIT" not in names["int8"] and "SPLIT" not in names["float"]
    assert not _grouped_native(ops["int8+split"])
    native = [op for op in ops["int8"] if op.name == "CONV_2D"]
    assert _grouped_native(native) and {op.version for op in native} == {6}
    # seed 2 at width 1.0, 48x48: 6 of its grouped convs split, 4 native
    assert names["int8+auto:u85"].count("SPLIT") == 6 and _grouped_native(ops["int8+auto:u85"]) == 4
    formats = ["int8", "int8+split", "int8+auto:u85"]
    files, _ = write_formats(mhmodels.get_spec("multi_max"), formats, SIZE)
    assert files["int8"] is files["int8+split"] is files["int8+auto:u85"]
