"""Params / MAdds reproduce the paper's Table 1, cross-checked against the TFLite graph."""
import os

import numpy as np
import pytest

import mhmodels

FULL = os.environ.get("MHMODELS_TEST_FULL") == "1"  # slow tests: all models, not two

TABLE1 = [  # (model, width, params M, MAdds M, MAdds tolerance) from the paper, 1001 classes
    ("mobilenet_v1", 1.25, 6.25, 883, 0.01),
    ("mobilenet_v2", 1.25, 5.01, 487, 0.01),
    ("mobilenet_v3_large", 1.0, 5.45, 217, 0.01),
    ("mobilenet_v3_large_min", 1.25, 5.73, 346, 0.02),
    ("proxylessnas_mobile", 1.0, 4.05, 321, 0.01),
    ("mobilenet_edgetpu", 1.0, 4.05, 991, 0.01),
    ("multi_avg", 1.0, 4.91, 433, 0.01),
    ("multi_max", 1.0, 4.39, 349, 0.01),
]


@pytest.mark.parametrize("name, width, params_m, madds_m, madds_tol", TABLE1)
def test_table1_params_and_madds(name, width, params_m, madds_m, madds_tol):
    result = mhmodels.profile(name, width)
    assert abs(result.params_m - params_m) / params_m <= 0.01, result.params_m
    assert abs(result.madds_m - madds_m) / madds_m <= madds_tol, result.madds_m
    # The zoo entries carry the same reference numbers the summary prints.
    reference = mhmodels.get_spec(name).reference
    assert (reference["width"], reference["params_m"], reference["madds_m"]) == \
        (width, params_m, madds_m)


@pytest.mark.parametrize("name, madds_m", [("multi_avg", 250.0), ("multi_max", 202.4)])
def test_width_075_published_madds(name, madds_m):
    assert round(mhmodels.profile(name, 0.75).madds_m, 1) == madds_m


def test_rows_sum_to_totals_and_exclude_batch_norm():
    result = mhmodels.profile("mobilenet_v3_large")
    assert sum(r.params for r in result.rows) == result.params
    assert sum(r.madds for r in result.rows) == result.madds
    assert {r.kind for r in result.rows} == {"conv", "depthwise", "dense"}
    classifier = result.rows[-1]
    assert (classifier.name, classifier.params, classifier.madds) == \
        ("classifier", 1280 * 1001 + 1001, 1280 * 1001)
    stem = result.rows[0]
    assert (stem.output_shape, stem.params, stem.madds) == ((112, 112, 16), 432, 432 * 112 * 112)


def test_profile_accepts_model_spec_and_tf_keras_model():
    spec = mhmodels.get_spec("multi_max")
    by_spec = mhmodels.profile(spec, 0.5, input_shape=(96, 96, 3), num_classes=10)
    tf_keras_model = mhmodels.build(spec, 0.5, input_shape=(96, 96, 3), num_classes=10,
                                    frontend="tf_keras")
    by_model = mhmodels.profile(tf_keras_model)
    assert (by_spec.params, by_spec.madds) == (by_model.params, by_model.madds)
    assert by_spec.params == tf_keras_model.count_params() - sum(
        int(np.prod(w.shape)) for layer in tf_keras_model.layers
        if type(layer).__name__ == "BatchNormalization" for w in layer.weights)


def tflite_madds(model) -> tuple[int, int]:
    """Independent count: MAdds and weights of CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED
    read from the float TFLite graph (shapes only, nothing from our counting code)."""
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter
    flatbuffer = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    interpreter = Interpreter(model_content=flatbuffer)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    madds = params = 0
    for op in interpreter._get_ops_details():
        name = op["op_name"]
        if name not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            continue
        weights = tensors[op["inputs"][1]]["shape"]
        out = tensors[op["outputs"][0]]["shape"]
        bias = op["inputs"][2] if len(op["inputs"]) > 2 else -1
        params += int(np.prod(weights)) + (int(np.prod(tensors[bias]["shape"])) if bias >= 0 else 0)
        if name == "FULLY_CONNECTED":
            madds += int(np.prod(weights))
        elif name == "CONV_2D":  # weights [O, kh, kw, I], output [1, H, W, O]
            madds += int(np.prod(weights)) * int(out[1] * out[2])
        else:  # depthwise weights [1, kh, kw, C*M]
            madds += int(np.prod(weights)) * int(out[1] * out[2])
    return madds, params


CROSS_CHECK = ["multi_max", "mobilenet_v3_large"] + (
    ["multi_avg", "mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large_min",
     "mobilenet_v3_small", "mobilenet_edgetpu", "proxylessnas_mobile"] if FULL else [])


@pytest.mark.slow
@pytest.mark.parametrize("name", CROSS_CHECK)
def test_madds_match_an_independent_tflite_count(name):
    width = mhmodels.get_spec(name).reference.get("width", 1.0)
    model = mhmodels.build(name, width)
    ours = mhmodels.profile(model)
    madds, params = tflite_madds(model)
    assert madds == ours.madds
    # TFLite folds BN into conv biases, so it has more biases than our BN-free count:
    # the kernels alone must agree exactly.
    kernels = sum(r.params for r in ours.rows) - sum(
        int(np.prod(layer.bias.shape)) for layer in model.layers
        if getattr(layer, "use_bias", False) and hasattr(layer, "bias"))
    assert params >= kernels and params - kernels < 0.02 * kernels
