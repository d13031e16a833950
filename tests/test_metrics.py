"""f_avg / f_max (paper eq. 4-5) against Table 1's MN-Norm columns, numpy and TF."""
import json
import math
from pathlib import Path

import numpy as np
import pytest

from mhmodels.metrics import f_avg, f_max, mn_norm, normalized

ZOO = Path(__file__).resolve().parent.parent / "zoo" / "models"
HARDWARE = ("cpu_float", "cpu_uint8", "gpu", "dsp", "edgetpu")
C = (36.83, 12.97, 4.78, 3.06, 2.38)  # SPEC section 3: fitted MobileNetV1-1.0 latencies
# Table 1's MN-Norm (avg, max), as printed (two decimals); V3-Large has no EdgeTPU number.
PAPER = {
    "mobilenet_v1": (1.36, 1.49), "mobilenet_v2": (1.28, 1.62),
    "mobilenet_v3_large_min": (1.00, 1.25), "proxylessnas_mobile": (1.14, 1.30),
    "mobilenet_edgetpu": (1.44, 1.61), "multi_avg": (1.06, 1.25), "multi_max": (0.91, 1.10),
}


def reference_latencies(name):
    ref = json.loads((ZOO / f"{name}.json").read_text())["reference"]["latency_ms"]
    return [ref.get(h) for h in HARDWARE]


@pytest.mark.parametrize("name", sorted(PAPER))
def test_table1_mn_norm_columns(name):
    avg, mx = mn_norm(reference_latencies(name), C)
    assert round(avg, 2) == pytest.approx(PAPER[name][0], abs=1e-9), avg
    assert round(mx, 2) == pytest.approx(PAPER[name][1], abs=1e-9), mx


def test_multi_max_exact_values():
    avg, mx = mn_norm(reference_latencies("multi_max"), C)
    assert avg == pytest.approx(0.912, abs=5e-4)
    assert mx == pytest.approx(1.105, abs=5e-4)


def test_v3_large_missing_edgetpu_uses_the_four_it_has():
    lat = reference_latencies("mobilenet_v3_large")
    assert lat[-1] is None
    avg, mx = mn_norm(lat, C)
    four = [l / c for l, c in zip(lat[:4], C[:4])]
    assert avg == pytest.approx(sum(four) / 4)
    assert mx == pytest.approx(max(four))
    # Without skipping, a missing hardware poisons the metric rather than vanishing silently.
    assert math.isnan(f_avg(np.array(lat, dtype=float), C))


def test_mobilenet_v1_normalises_to_one():
    assert f_avg(list(C), C) == pytest.approx(1.0)
    assert f_max(list(C), C) == pytest.approx(1.0)


def test_weights_reweight_normalisers():
    lat = np.array([2.0, 1.0])
    c = [1.0, 1.0]
    assert f_avg(lat, c) == pytest.approx(1.5)
    assert f_avg(lat, c, weights=[1.0, 3.0]) == pytest.approx((2.0 + 3.0) / 4.0)
    assert f_max(lat, c, weights=[1.0, 3.0]) == pytest.approx(3.0)
    assert f_max(lat, c, weights=[1.0, 0.0]) == pytest.approx(2.0)
    np.testing.assert_allclose(normalized(lat, [2.0, 4.0]), [1.0, 0.25])


def test_batched_last_axis():
    lat = np.array([[36.83, 12.97], [73.66, 12.97]])
    np.testing.assert_allclose(f_avg(lat, C[:2]), [1.0, 1.5])
    np.testing.assert_allclose(f_max(lat, C[:2]), [1.0, 2.0])


def test_bad_inputs():
    with pytest.raises(ValueError, match="positive"):
        f_avg([1.0, 2.0], [1.0, 0.0])
    with pytest.raises(ValueError, match="hardware"):
        f_avg([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="weights"):
        f_max([1.0, 2.0], [1.0, 2.0], weights=[1.0])


def test_tf_tensors_inside_tf_function_match_numpy():
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(0)
    lat = rng.uniform(1, 50, size=(4, 5)).astype(np.float32)
    w = [1.0, 2.0, 1.0, 0.5, 1.0]

    @tf.function
    def both(x):
        return f_avg(x, C, w), f_max(x, C, w), f_avg(x[0], C), f_max(x[0], C)

    a, m, a0, m0 = both(tf.constant(lat))
    assert a.dtype == tf.float32 and a.shape == (4,)
    np.testing.assert_allclose(a.numpy(), f_avg(lat, C, w), rtol=1e-5)
    np.testing.assert_allclose(m.numpy(), f_max(lat, C, w), rtol=1e-5)
    np.testing.assert_allclose(a0.numpy(), f_avg(lat[0], C), rtol=1e-5)
    np.testing.assert_allclose(m0.numpy(), f_max(lat[0], C), rtol=1e-5)
