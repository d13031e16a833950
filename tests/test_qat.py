"""mhmodels.quantize (mhmodels/qat.py): the QAT twin built with tfmot on the tf_keras build.

Sizes: small by default (width 0.35, 32x32); MHMODELS_TEST_FULL=1: full (width 0.5, 64x64).
Per-model coverage (twin + one fit step for every zoo model) is in test_export.py, where the
same QAT twin is also exported; here: the twin's structure, weight transfer, calibration,
build-argument handling, and Keras 3 + tfmot in one process.
"""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import mhmodels
from mhmodels import images

from mhmodels import qat as Q

from conftest import FULL  # the one size switch, MHMODELS_TEST_FULL=1

WIDTH = 0.5 if FULL else 0.35
SIZE = 64 if FULL else 32
SHAPE = (SIZE, SIZE, 3)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def digits():
    return images.digits(SIZE, n=128)


@pytest.fixture(scope="module")
def v3_small():
    """MobileNetV3-Small: hard-swish, hard-sigmoid and squeeze-excite in one small model.

    Seeded: its random weights would otherwise depend on which tests ran before it on the
    same xdist worker, and the calibration test's tolerance is for these weights."""
    import keras
    keras.utils.set_random_seed(1)
    return mhmodels.build("mobilenet_v3_small", WIDTH, input_shape=SHAPE, num_classes=10,
                          dropout=0.0)


@pytest.fixture(scope="module")
def v3_small_qat(v3_small):
    return Q.quantize(v3_small)


def test_import_does_not_load_tensorflow():
    code = ("import sys, mhmodels, mhmodels.qat, mhmodels.export, mhmodels.images; "
            "bad = [m for m in ('tensorflow', 'tf_keras', 'keras', "
            "'tensorflow_model_optimization') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)


def test_qat_twin_is_tf_keras_and_every_layer_quantized(v3_small, v3_small_qat):
    qat = v3_small_qat
    assert Q.frontend_of(v3_small) == "keras"
    assert Q.frontend_of(qat) == "tf_keras"
    assert Q.is_qat_model(qat) and not Q.is_qat_model(v3_small)
    wrapped = {layer.layer.name: layer for layer in qat.layers if hasattr(layer, "layer")}
    for layer in v3_small.layers:
        kind = type(layer).__name__
        if kind in Q.PASS_THROUGH:
            continue
        assert layer.name in wrapped, f"{layer.name} ({kind}) not quantized"
    # hard-swish / hard-sigmoid / SE pieces carry an output fake-quant
    for name in ("stem_hswish", "stem_hsig_shift", "stem_hsig_scale", "block0_se_scale"):
        wrapper = wrapped[name]
        assert wrapper.quantize_config.get_output_quantizers(wrapper.layer), name
    # regression: tfmot's LayerReLUQuantize drops the kernel quantizer of Conv2D -> ReLU
    se_reduce = wrapped["block0_se_reduce"]
    assert se_reduce.quantize_config.get_weights_and_quantizers(se_reduce.layer)
    # the Dense classifier is quantized per-tensor (per-channel breaks conversion)
    dense = wrapped["classifier"]
    pairs = dense.quantize_config.get_weights_and_quantizers(dense.layer)
    assert pairs and not any(q.per_axis for _, q in pairs)
    Q.check_quantized(mhmodels.build("mobilenet_v3_small", WIDTH, input_shape=SHAPE,
                                     num_classes=10, dropout=0.0, frontend="tf_keras"), qat)


def test_weights_carried_over_by_name(v3_small, v3_small_qat):
    # tfmot moves the inner layer's variables onto the wrapper
    wrapped = {layer.layer.name: layer for layer in v3_small_qat.layers
               if hasattr(layer, "layer")}
    checked = 0
    for layer in v3_small.layers:
        if not layer.weights:
            continue
        # the wrapper adds range variables and re-orders: match each weight by value
        others = wrapped[layer.name].get_weights()
        for a in layer.get_weights():
            assert any(b.shape == a.shape and np.array_equal(a, b) for b in others), \
                f"{layer.name}: weight {a.shape} not carried over"
        checked += 1
    assert checked > 50


def test_float_tf_keras_twin_matches_keras3(v3_small, digits):
    x, _ = digits
    twin = mhmodels.build("mobilenet_v3_small", WIDTH, input_shape=SHAPE, num_classes=10,
                          dropout=0.0, frontend="tf_keras")
    assert Q.copy_weights(v3_small, twin) > 50
    a = v3_small(x[:16], training=False).numpy()
    b = twin(x[:16], training=False).numpy()
    assert np.abs(a - b).max() <= 1e-5 * np.abs(a).max()


def test_build_args_attribute_and_explicit_fallback(digits):
    model = mhmodels.build("mobilenet_v1", 0.25, input_shape=SHAPE, num_classes=7, dropout=0.1,
                           name="my_net")  # not the default name, which quantize would parse
    args = Q.build_args_of(model)
    assert args["spec"].name == "mobilenet_v1" and args["width"] == 0.25
    assert tuple(args["input_shape"]) == SHAPE and args["num_classes"] == 7
    assert args["dropout"] == pytest.approx(0.1)
    # without the attribute: spec and width are required, the rest is read off the model
    if hasattr(model, Q.BUILD_ARGS_ATTR):
        delattr(model, Q.BUILD_ARGS_ATTR)
    with pytest.raises(Q.QuantizeError, match="spec and width unknown"):
        Q.quantize(model)
    args = Q.build_args_of(model, spec="mobilenet_v1", width=0.25)
    assert args["num_classes"] == 7 and tuple(args["input_shape"]) == SHAPE
    assert args["dropout"] == pytest.approx(0.1) and args["include_top"] is True
    qat = Q.quantize(model, spec="mobilenet_v1", width=0.25)
    assert qat.output_shape == (None, 7)
    # a wrong width is caught by the weight transfer, not silently ignored
    with pytest.raises(Q.QuantizeError, match="weight shapes differ"):
        Q.quantize(model, spec="mobilenet_v1", width=0.5)
    with pytest.raises(Q.QuantizeError, match="already quantization-aware"):
        Q.quantize(qat)


def test_quantize_float_tf_keras_model_and_headless():
    twin = mhmodels.build("mobilenet_v2", 0.35, input_shape=SHAPE, include_top=False,
                          pooling="avg", frontend="tf_keras")
    qat = Q.quantize(twin)
    assert Q.is_qat_model(qat)
    assert qat.output_shape == twin.output_shape


def test_calibrate_sets_ranges_from_data(v3_small, digits):
    x, _ = digits
    qat = Q.quantize(v3_small)
    pairs, _ = Q._range_variables(qat)
    assert all(float(np.min(lo.numpy())) == -6.0 for lo, _ in pairs)  # tfmot's start
    bn_before = qat.get_layer("quant_stem_bn").layer.moving_mean.numpy().copy()
    assert Q.calibrate(qat, x[:64], passes=2) == len(pairs)
    np.testing.assert_array_equal(bn_before, qat.get_layer("quant_stem_bn").layer.moving_mean)
    for lo, hi in pairs:
        assert np.all(lo.numpy() <= 0) and np.all(hi.numpy() >= 0)
    # the input quantizer covers exactly the data's range
    (quant_input,) = [l for l in qat.layers if type(l).__name__ == "QuantizeLayer"]
    assert float(quant_input.quantizer_vars["min_var"].numpy()) == pytest.approx(x[:64].min())
    with pytest.raises(ValueError, match=r"calibration data spans \[0, 255\].*"
                       r"mhmodels.preprocess_input\(images\)"):
        Q.calibrate(qat, np.round((x[:16] + 1.0) * 127.5))
    assert float(quant_input.quantizer_vars["max_var"].numpy()) == pytest.approx(x[:64].max())
    # the logits' range is the range of training-mode logits on that data (up to the small
    # change from refined upstream ranges between the two passes)
    logits = qat(x[:64], training=True).numpy()
    dense = qat.get_layer("quant_classifier")
    lo = float(dense._quantize_activations[0]._post_activation_vars["min_var"].numpy())
    hi = float(dense._quantize_activations[0]._post_activation_vars["max_var"].numpy())
    span = logits.max() - logits.min()
    assert abs(hi - max(logits.max(), 0)) < 0.2 * span
    assert abs(lo - min(logits.min(), 0)) < 0.2 * span
    assert hi - lo < 6.0  # far tighter than tfmot's [-6, 6]


def test_fit_changes_weights_and_loss_is_finite(v3_small_qat, digits):
    import tf_keras
    x, y = digits
    qat = v3_small_qat
    qat.compile(tf_keras.optimizers.SGD(0.05),
                tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                run_eagerly=True)
    before = [v.numpy().copy() for v in qat.trainable_variables]
    history = qat.fit(x[:32], y[:32], batch_size=16, epochs=1, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    changed = sum(not np.array_equal(a, v.numpy()) for a, v in zip(before, qat.trainable_variables))
    assert changed >= len(before) // 2


@pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")
def test_qat_model_saves_as_h5_and_loads_in_quantize_scope(v3_small_qat, digits, tmp_path):
    import tf_keras
    x, _ = digits
    path = str(tmp_path / "qat.h5")  # tfmot 0.8.1 QAT models do not reload from .keras files
    v3_small_qat.save(path)
    with Q.quantize_scope():
        loaded = tf_keras.models.load_model(path)
    assert Q.is_qat_model(loaded)
    np.testing.assert_allclose(loaded(x[:4]).numpy(), v3_small_qat(x[:4]).numpy(), atol=1e-6)


@pytest.mark.slow
def test_keras3_and_tfmot_in_one_fresh_process():
    """quantize() first (tfmot import sets TF_USE_LEGACY_KERAS), then Keras 3 as usual."""
    code = textwrap.dedent(f"""
        import os, numpy as np
        assert "TF_USE_LEGACY_KERAS" not in os.environ
        import mhmodels
        from mhmodels import qat as Q
        m = mhmodels.build("mobilenet_v1", 0.25, input_shape={SHAPE}, num_classes=4)
        qat = Q.quantize(m)
        assert Q.frontend_of(qat) == "tf_keras"
        assert "TF_USE_LEGACY_KERAS" not in os.environ, "tfmot's env change leaked"
        import tensorflow as tf, keras
        assert tf.keras.__version__.startswith("3."), tf.keras.__version__
        k3 = mhmodels.build("mobilenet_v2", 0.35, input_shape={SHAPE}, num_classes=4)
        assert Q.frontend_of(k3) == "keras"
        k3.compile(keras.optimizers.SGD(0.01),
                   keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        x = np.random.RandomState(0).uniform(-1, 1, (8,) + {SHAPE}).astype("float32")
        h = k3.fit(x, np.arange(8) % 4, epochs=1, verbose=0)
        assert np.isfinite(h.history["loss"][0])
        assert k3.predict(x, verbose=0).shape == (8, 4)
        layer = tf.keras.layers.Dense(2)  # tf.keras is still Keras 3
        assert type(layer).__module__.startswith("keras."), type(layer).__module__
        print("OK")
    """)
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, timeout=600,
                         capture_output=True, text=True)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]


# A pip user's QAT: the install command, reloaded models, models wrapping a zoo backbone.

def test_install_command_matches_the_readme_and_the_installed_tensorflow():
    import tensorflow as tf
    major_minor = ".".join(tf.__version__.split(".")[:2])
    command = Q.install_command()
    assert command == (f"pip install --no-deps tf-keras~={major_minor}.0 "
                       f"tensorflow-model-optimization=={Q.TFMOT_VERSION}")
    assert Q.install_command("2.20.0").startswith("pip install --no-deps tf-keras~=2.20.0 ")
    with open(os.path.join(REPO, "README.md")) as f:
        readme = f.read()
    if major_minor == "2.21":  # the README shows the command for the TF it documents
        assert command in readme


def test_quantize_a_model_reloaded_from_a_keras_file(tmp_path, digits):
    import keras
    x, _ = digits
    model = mhmodels.build("multi_max", WIDTH, input_shape=SHAPE, num_classes=10)
    model.save(tmp_path / "m.keras")
    reloaded = keras.models.load_model(tmp_path / "m.keras")
    assert not hasattr(reloaded, Q.BUILD_ARGS_ATTR) and reloaded.name == model.name
    qat = Q.quantize(reloaded)
    args = Q.build_args_of(reloaded)
    assert args["spec"].name == "multi_max" and args["width"] == WIDTH
    assert qat.output_shape == (None, 10)
    wrapped = {layer.layer.name: layer for layer in qat.layers if hasattr(layer, "layer")}
    kernel = model.get_layer("classifier").get_weights()[0]
    assert any(np.array_equal(kernel, w) for w in wrapped["classifier"].get_weights())
    renamed = keras.Model(reloaded.input, reloaded.output, name="whatever")
    with pytest.raises(Q.QuantizeError, match="spec and width unknown"):
        Q.quantize(renamed)


def _wrapping_models():
    import keras
    keras.utils.set_random_seed(3)  # untrained outputs are ~1e-3: the same ones in every order
    base = mhmodels.build("mobilenet_v3_small", WIDTH, input_shape=SHAPE, include_top=False,
                          pooling="avg")
    image = keras.Input(SHAPE)
    head = keras.layers.Dense(5, name="head")(keras.layers.Dropout(0.1)(base(image)))
    functional = keras.Model(image, head, name="transfer")
    sequential = keras.Sequential([keras.Input(SHAPE), base, keras.layers.Dense(3)])
    return functional, sequential


@pytest.mark.slow  # over 20 s on 2 idle cores (CI durations)
def test_quantize_a_model_that_wraps_a_zoo_backbone(tmp_path, digits):
    import keras
    x, _ = digits
    functional, sequential = _wrapping_models()
    for outer in (functional, sequential):
        twin, backbones = Q._flat_tf_keras_twin(outer)
        assert backbones == [f"mobilenet_v3_small_{WIDTH:.2f}_{SIZE}"]
        assert not any(hasattr(layer, "layers") for layer in twin.layers)  # flat for tfmot
        a = outer(x[:8], training=False).numpy()
        b = twin(x[:8], training=False).numpy()
        assert np.abs(a).max() > 1e-4  # not all zero: the tolerance below is relative to it
        np.testing.assert_allclose(b, a, atol=1e-5 * np.abs(a).max())
    qat = Q.quantize(functional, calibration_data=x)
    wrapped = {layer.layer.name for layer in qat.layers if hasattr(layer, "layer")}
    assert {"head", "stem", "block0_dw"} <= wrapped
    assert qat.output_shape == (None, 5) and Q.is_qat_model(qat)
    path = mhmodels.export_tflite(qat, tmp_path / "transfer.tflite", quantization="int8")
    ops = mhmodels.tflite_ops(path)
    assert "FULLY_CONNECTED" in {op.name for op in ops}
    assert not [op for op in ops if "float32" in op.input_dtypes + op.output_dtypes]
    # ... and the same model saved and reloaded
    functional.save(tmp_path / "transfer.keras")
    reloaded = keras.models.load_model(tmp_path / "transfer.keras")
    assert Q.quantize(reloaded).output_shape == (None, 5)
