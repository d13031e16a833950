"""Grouped-convolution inverted bottlenecks (LayerSpec.group_size) and MobileNet-EdgeTPU-V2."""
import json
from pathlib import Path

import numpy as np
import pytest

import mhmodels
from mhmodels import export as E
from mhmodels.builder import build_model, resolve, with_grouped_conv
from mhmodels.profile import count_layers
from mhmodels.spec import ModelSpec, SpecError

FIXTURES = Path(__file__).parent / "fixtures" / "model_garden"
SHAPE = (32, 32, 3)
# Both grouped kinds: a grouped fused IBN (2 groups of 64) and a grouped IBN (4 groups of 32).
SPEC = ModelSpec.from_dict({
    "name": "grouped_test", "stem": {"kind": "conv", "filters": 32, "stride": 2},
    "blocks": [{"kind": "fused_ibn", "filters": 32, "expansion": 4, "group_size": 64},
               {"kind": "ibn", "filters": 64, "stride": 2, "expansion": 4, "group_size": 32},
               {"kind": "ibn", "filters": 64, "expansion": 2}],
    "head": [{"kind": "conv", "filters": 128, "kernel": 1}]})


@pytest.fixture(scope="module")
def model():
    built = build_model(SPEC, 1.0, input_shape=SHAPE, num_classes=10)
    rng = np.random.default_rng(0)  # non-trivial BN statistics, so a mis-sliced BN shows
    for layer in built.layers:
        if type(layer).__name__ == "BatchNormalization":
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32")
                               for w in layer.get_weights()])
    return built


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).uniform(-1, 1, (4, *SHAPE)).astype("float32")


def test_grouped_counts_divide_by_groups(model):
    rows = {r.name: r for r in count_layers(model).rows}
    # fused: 3x3, 32 -> 128 in 2 groups; grouped IBN: 3x3, 128 -> 128 in 4 groups (stride 2).
    assert rows["block0_fused"].params == 3 * 3 * 32 * 128 // 2
    assert rows["block0_fused"].madds == 3 * 3 * 32 * 128 // 2 * 16 * 16
    assert rows["block1_group"].params == 3 * 3 * 128 * 128 // 4
    assert rows["block1_group"].output_shape == (8, 8, 128)


def test_split_form_and_tf_keras_twin_compute_the_same_function(model, images):
    from mhmodels.qat import copy_weights
    expected = model(images, training=False).numpy()
    split = with_grouped_conv(model, "split")
    assert "block1_group_g3" in [layer.name for layer in split.layers]
    assert (count_layers(split).params, count_layers(split).madds) == \
        (count_layers(model).params, count_layers(model).madds)
    np.testing.assert_allclose(split(images, training=False).numpy(), expected, atol=1e-5)
    back = with_grouped_conv(split, "native")
    np.testing.assert_allclose(back(images, training=False).numpy(), expected, atol=1e-5)
    for form in ("native", "split"):
        twin = build_model(SPEC, 1.0, input_shape=SHAPE, num_classes=10, frontend="tf_keras",
                           grouped_conv=form)
        copy_weights(with_grouped_conv(model, form), twin)
        np.testing.assert_allclose(twin(images, training=False).numpy(), expected, atol=1e-5)


def test_params_and_madds_equal_the_tflite_graph_count(model):
    from test_profile import tflite_madds
    ours = count_layers(model)
    for form in ("native", "split"):
        madds, params = tflite_madds(with_grouped_conv(model, form))
        assert madds == ours.madds
        kernels = ours.params - 10  # the classifier's bias; TFLite adds folded BN biases
        assert 0 <= params - kernels < 0.02 * kernels


@pytest.mark.parametrize("bad, message", [
    ({"kind": "ds", "filters": 32, "group_size": 8}, "only applies to ibn/fused_ibn"),
    ({"kind": "ibn", "filters": 32, "expansion": 4, "group_size": 0}, "positive integer"),
    ({"kind": "fused_ibn", "filters": 32, "group_size": 8}, "needs expansion > 1"),
])
def test_bad_group_size_in_a_spec_is_one_clear_error(bad, message):
    data = {**SPEC.to_dict(), "blocks": [bad]}
    with pytest.raises(SpecError, match=message) as err:
        ModelSpec.from_dict(data, "test")
    assert "\n" not in str(err.value) and "blocks[0]" in str(err.value)


def test_group_size_that_does_not_divide_is_one_clear_error():
    data = {**SPEC.to_dict(), "blocks": [
        {"kind": "ibn", "filters": 32, "expansion": 3, "group_size": 64}]}  # 96 hidden
    spec = ModelSpec.from_dict(data, "test")
    with pytest.raises(SpecError, match="group_size 64 does not divide the block's 96 "
                       "expanded channels") as err:
        build_model(spec, 1.0, input_shape=SHAPE)
    assert "block0" in str(err.value) and "\n" not in str(err.value)
    # Other widths keep the width-1.0 group count where it divides (gcd otherwise): all build.
    for width in (0.25, 0.35, 0.5, 0.75, 1.25):
        assert all(r.groups is None or r.hidden % r.groups == 0
                   for r in resolve(mhmodels.get_spec("mobilenet_edgetpu_v2_s"), width))


@pytest.mark.slow
@pytest.mark.parametrize("form", ["native", "split"])
def test_grouped_qat_int8_has_no_float_op_and_runs_whole_on_the_npu(model, images, form,
                                                                     tmp_path):
    from mhmodels import vela
    qat = mhmodels.quantize(with_grouped_conv(model, form))
    result = E.export_tflite(qat, tmp_path / "q.tflite", quantization="int8")
    assert E.float_ops(result) == []
    ops = E.op_counts(result)
    assert ops["CONV_2D"] == (9 if form == "native" else 13), ops
    assert ("SPLIT" in ops) == (form == "split")
    for npu in ("ethos_u55", "ethos_u85"):
        est = vela.estimate_tflite(result, vela.preset(npu))
        assert est.cpu_ops == 0 and est.npu_ops > 0, (npu, est)
    # A QAT model keeps its form; asking export for the other one is one clear error.
    other = "split" if form == "native" else "native"
    with pytest.raises(ValueError, match=f"holds its grouped convs in the '{form}' form"):
        E.export_tflite(qat, tmp_path / "x.tflite", quantization="int8", grouped_conv=other)


def test_export_grouped_conv_option_writes_either_form(model, images, tmp_path):
    native = E.export_tflite(model, tmp_path / "n.tflite", grouped_conv="native")
    split = E.export_tflite(model, tmp_path / "s.tflite", grouped_conv="split")
    assert native.op_counts["CONV_2D"] == 9 and "SPLIT" not in native.op_counts
    assert split.op_counts["CONV_2D"] == 13 and split.op_counts["SPLIT"] == 2
    expected = model(images[:1], training=False).numpy()
    for result in (native, split):
        np.testing.assert_allclose(E.predict_tflite(result, images[:1]), expected, atol=1e-4)
    assert [E.grouped_conv_form(t) for t in ("cpu_float", "cpu_int8", "ethos_u55", "u65",
                                                "u85", "ethos-u85-256")] == \
        ["native", "native", "split", "split", "auto:u85", "auto:u85"]


V2 = ["tiny", "xs", "s", "m", "l"]


@pytest.mark.parametrize("size", V2)
def test_edgetpu_v2_entries_match_the_model_garden_layer_by_layer(size):
    """Counts written by the Model Garden's own builder (tools/make_edgetpu_v2_fixtures.py)."""
    name = f"mobilenet_edgetpu_v2_{size}"
    peer = json.loads((FIXTURES / "edgetpu_v2_counts.json").read_text())[name]
    ours = mhmodels.profile(name)  # 224x224, 1001 classes
    assert (ours.params, ours.madds) == (peer["params"], peer["madds"])
    theirs = [(r["kind"], tuple(r["output_shape"][-3:]) if len(r["output_shape"]) == 3
               else (r["output_shape"][-1],), r["params"], r["madds"]) for r in peer["layers"]]
    mine = [(r.kind if r.kind != "dense" else "conv",
             r.output_shape if r.kind != "dense" else r.output_shape,
             r.params, r.madds) for r in ours.rows]
    # The Model Garden's classifier is a 1x1 conv on the pooled 1x1 map, ours a Dense.
    assert [t[1] for t in theirs[-1:]] == [(1, 1, 1001)] and mine[-1][1] == (1001,)
    assert [t[:1] + t[2:] for t in theirs] == [m[:1] + m[2:] for m in mine]
    assert [t[1] for t in theirs[:-1]] == [m[1] for m in mine[:-1]]
    groups = [r["groups"] for r in peer["layers"] if r["groups"] > 1]
    assert groups and groups == [r.groups for r in resolve(mhmodels.get_spec(name))
                                 if r.groups and r.groups > 1]
