"""The one builder: shapes, width rules, bad input, and the Keras 3 / tf_keras twin."""
import numpy as np
import pytest

import mhmodels
from mhmodels.builder import build_args, resolve


def small(model, /, **kw):
    kw.setdefault("input_shape", (64, 64, 3))
    kw.setdefault("num_classes", 10)
    return mhmodels.build(model, kw.pop("width", 0.5), **kw)


def test_build_returns_keras3_model_with_imagenet_head():
    import keras
    model = mhmodels.build("multi_max", width=1.0)
    assert isinstance(model, keras.Model)
    assert tuple(model.input.shape) == (None, 224, 224, 3)
    assert tuple(model.output.shape) == (None, 1001)
    assert model.get_layer("classifier").activation.__name__ == "linear"
    assert model.get_layer("dropout").rate == 0.2
    assert build_args(model).width == 1.0


@pytest.mark.parametrize("include_top, pooling, shape", [
    (True, None, (None, 10)),
    (False, None, (None, 2, 2, 480)),     # head 960 * 0.5, before pooling
    (False, "avg", (None, 480)),
    (False, "max", (None, 480)),
])
def test_include_top_and_pooling(include_top, pooling, shape):
    model = small("multi_avg", include_top=include_top, pooling=pooling)
    assert tuple(model.output.shape) == shape


def test_classes_alias_and_classifier_activation():
    model = mhmodels.build("mobilenet_v2", 0.35, input_shape=(32, 32, 3), classes=7,
                           classifier_activation="softmax")
    out = model(np.zeros((2, 32, 32, 3), "float32"), training=False).numpy()
    assert out.shape == (2, 7)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="disagree"):
        mhmodels.build("mobilenet_v2", classes=7, num_classes=8)


def test_width_rules_on_resolved_channels():
    v3 = {r.name: r for r in resolve(mhmodels.get_spec("mobilenet_v3_large_min"), 1.25)}
    assert v3["stem"].filters == 24          # the stem is scaled too (16 -> 20 -> 24)
    assert v3["head0"].filters == 1200       # 960 * 1.25
    assert v3["top0"].filters == 1600        # the last 1x1 grows for w > 1
    v3_small = {r.name: r for r in resolve(mhmodels.get_spec("mobilenet_v3_large"), 0.5)}
    assert v3_small["top0"].filters == 1280  # ... but is never shrunk
    v1 = {r.name: r for r in resolve(mhmodels.get_spec("mobilenet_v1"), 0.75)}
    assert v1["stem"].filters == 24 and v1["block0"].filters == 48  # truncation, no round8
    assert v1["block12"].filters == 768
    ibn = {r.name: r for r in resolve(mhmodels.get_spec("multi_max"), 1.0)}
    assert ibn["block1"].hidden == 32 * 6 and ibn["block1"].in_filters == 32


def test_fused_expansion_one_is_only_a_projection():
    model = mhmodels.build("mobilenet_edgetpu", 1.0)
    names = {layer.name for layer in model.layers}
    assert "block0_project" in names and "block0_fused" not in names
    assert "block1_fused" in names
    assert model.get_layer("block1_fused").kernel.shape == (3, 3, 16, 128)


def test_residuals_and_no_residual_flag():
    names = {layer.name for layer in mhmodels.build("mobilenet_edgetpu").layers}
    adds = sorted(n for n in names if n.endswith("_add"))
    assert "block13_add" not in names   # the e8 block marked residual: false
    assert "block12_add" in names and "block14_add" in names
    assert len(adds) == 15  # 5 stages x 3 repeats; strided, channel-changing and flagged blocks add nothing


@pytest.mark.parametrize("kwargs, message", [
    ({"width": 0}, "width must be > 0"),
    ({"width": -0.5}, "width must be > 0"),
    ({"width": "wide"}, "width must be a number"),
    ({"input_shape": (64, 64, 1)}, "must have 3 channels"),
    ({"input_shape": (64, 64)}, "input_shape must be"),
    ({"input_shape": (None, None, 3)}, "a fixed size is required"),
    ({"input_shape": (16, 16, 3)}, "too small"),
    ({"num_classes": 0}, "num_classes must be a positive integer"),
    ({"pooling": "mean", "include_top": False}, "pooling must be"),
])
def test_bad_arguments_get_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        small("multi_max", **kwargs)


@pytest.mark.parametrize("name", ["mobilenet_v3_large", "multi_max", "mobilenet_edgetpu"])
def test_tf_keras_twin_gives_identical_logits(name):
    """Same spec, both front-ends, weights copied by layer name -> same logits."""
    import tf_keras
    rng = np.random.default_rng(0)
    k3 = small(name, width=0.75)
    for layer in k3.layers:  # non-trivial weights and BN statistics
        layer.set_weights([rng.normal(0.0, 0.1, w.shape).astype("float32") +
                           (1.0 if "moving_variance" in v.path or "gamma" in v.path else 0.0)
                           for w, v in zip(layer.get_weights(), layer.weights)])
    k2 = small(name, width=0.75, frontend="tf_keras")
    assert isinstance(k2, tf_keras.Model)
    assert [layer.name for layer in k2.layers] == [layer.name for layer in k3.layers]
    for layer in k2.layers:
        layer.set_weights(k3.get_layer(layer.name).get_weights())
    images = rng.uniform(-1, 1, (4, 64, 64, 3)).astype("float32")
    a = k3(images, training=False).numpy()
    b = k2(images, training=False).numpy()
    assert np.abs(a).max() > 1e-2
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * np.abs(a).max())
    assert k2.count_params() == k3.count_params()


# Keras conventions a user relies on (name, input_tensor, dynamic size, data format, mixed
# precision).

def test_default_names_carry_width_and_size_and_name_overrides():
    import keras
    assert small("multi_max", width=0.25).name == "multi_max_0.25_64"
    assert small("multi_max", width=0.125, input_shape=(64, 96, 3)).name == \
        "multi_max_0.125_64x96"
    assert small("multi_max", name="backbone_a").name == "backbone_a"
    # Two widths of one network in one Keras graph (used to clash: both named 'multi_max').
    a = small("multi_max", width=0.25, include_top=False, pooling="avg")
    b = small("multi_max", width=0.5, include_top=False, pooling="avg")
    image = keras.Input((64, 64, 3))
    both = keras.Model(image, keras.layers.Concatenate()([a(image), b(image)]))
    assert tuple(both.output.shape) == (None, 240 + 480)  # head 960 at widths 0.25, 0.5


def test_parse_model_name_round_trips_the_default_name():
    from mhmodels.builder import parse_model_name
    names = mhmodels.list_models()
    assert parse_model_name("multi_max_0.75_224", names) == ("multi_max", 0.75)
    assert parse_model_name("mobilenet_v3_large_min_1.25_96x128", names) == \
        ("mobilenet_v3_large_min", 1.25)
    assert parse_model_name("mobilenet_v2_0.35", names) == ("mobilenet_v2", 0.35)
    assert parse_model_name("functional", names) is None
    assert parse_model_name("multi_max_wide", names) is None


def test_fully_convolutional_features_take_any_size():
    features = mhmodels.build("multi_avg", 0.5, include_top=False, input_shape=(None, None, 3))
    assert features.name == "multi_avg_0.50"
    assert tuple(features.output.shape) == (None, None, None, 480)
    for height, width in ((64, 64), (96, 160)):
        out = features(np.zeros((1, height, width, 3), "float32"), training=False)
        assert tuple(out.shape) == (1, height // 32, width // 32, 480)
    pooled = mhmodels.build("multi_avg", 0.5, include_top=False, pooling="avg",
                            input_shape=(None, None, 3))
    assert tuple(pooled(np.zeros((2, 96, 64, 3), "float32")).shape) == (2, 480)


def test_input_tensor_builds_on_another_layer():
    import keras
    image = keras.Input((64, 64, 3), name="pixels")
    scaled = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="to_unit")(image)
    model = mhmodels.build("mobilenet_v2", 0.35, input_tensor=scaled, num_classes=5)
    assert model.input is image and model.layers[1].name == "to_unit"
    assert tuple(model.output.shape) == (None, 5)
    assert build_args(model).input_shape == (64, 64, 3)
    out = model(np.full((1, 64, 64, 3), 255.0, "float32"), training=False).numpy()
    assert np.isfinite(out).all()
    with pytest.raises(ValueError, match="disagrees with input_tensor"):
        mhmodels.build("mobilenet_v2", 0.35, input_tensor=scaled, input_shape=(96, 96, 3))


@pytest.mark.parametrize("frontend", ["keras", "tf_keras"])
def test_channels_first_is_refused_with_the_fix_in_the_message(frontend):
    import importlib
    k = importlib.import_module(frontend)
    before = k.backend.image_data_format()
    k.backend.set_image_data_format("channels_first")
    try:
        with pytest.raises(ValueError, match=r"channels_last \(NHWC\).*set_image_data_format"):
            mhmodels.build("multi_max", width=0.25, input_shape=(96, 96, 3), frontend=frontend)
    finally:
        k.backend.set_image_data_format(before)
    assert small("multi_max").get_layer("stem").output.shape[-1] == 16


def test_mixed_precision_gives_float32_logits_and_exports(tmp_path):
    import keras
    from ai_edge_litert.interpreter import Interpreter
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = mhmodels.build("multi_max", 0.25, input_shape=(32, 32, 3), num_classes=10)
        features = mhmodels.build("multi_max", 0.25, input_shape=(32, 32, 3), include_top=False)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.get_layer("stem").compute_dtype == "float16"
    assert model.output.dtype == "float32" and features.output.dtype == "float16"
    images = np.random.default_rng(0).uniform(-1, 1, (1, 32, 32, 3)).astype("float32")
    logits = model(images, training=False).numpy()
    assert logits.dtype == np.float32
    path = mhmodels.export_tflite(model, tmp_path / "mixed.tflite")  # used to fail in MLIR
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], images)
    interpreter.invoke()
    out = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    assert out.dtype == np.float32
    # The float32 TFLite graph equals the float16 Keras model up to float16 rounding.
    np.testing.assert_allclose(out, logits, atol=0.02 * np.abs(logits).max() + 1e-3)
