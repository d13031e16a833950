"""The one latency-measurement path (mhmodels.latency) on real exported models."""
import time

import numpy as np
import pytest

import mhmodels
from mhmodels.export import export_tflite
from mhmodels.latency import LatencyResult, measure_interleaved, measure_tflite


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("latency")
    small = mhmodels.build("mobilenet_v1", 0.25, input_shape=(64, 64, 3), num_classes=10)
    big = mhmodels.build("mobilenet_v1", 1.0, input_shape=(128, 128, 3), num_classes=10)
    paths = {"small": d / "small.tflite", "big": d / "big.tflite", "int8": d / "int8.tflite"}
    export_tflite(small, paths["small"])
    export_tflite(big, paths["big"])
    rep = np.random.default_rng(0).uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
    export_tflite(small, paths["int8"], quantization="int8", representative_data=rep)
    return paths


def test_result_fields_and_consistency(models):
    r = measure_tflite(models["small"], warmup=2, runs=9)
    assert isinstance(r, LatencyResult)
    assert r.runs == 9 and len(r.samples_ms) == 9 and r.warmup == 2
    assert 0 < r.min_ms <= r.p10_ms <= r.median_ms <= r.p90_ms
    assert r.median_ms == pytest.approx(float(np.median(r.samples_ms)))
    assert r.mean_ms == pytest.approx(float(np.mean(r.samples_ms)))
    assert r.input_shape == (1, 64, 64, 3) and r.input_dtype == "float32"
    assert r.threads == 1 and r.use_xnnpack
    # One thread: timed by the thread's CPU time, which never exceeds the wall time.
    assert r.clock == "cpu" and r.wall_median_ms > 0
    assert r.median_ms <= r.wall_median_ms * 1.05
    d = r.to_dict()
    assert "samples_ms" not in d and d["median_ms"] == r.median_ms


def test_bytes_and_path_give_the_same_model(models):
    data = models["small"].read_bytes()
    r = measure_tflite(data, runs=3, warmup=1)
    assert r.input_shape == (1, 64, 64, 3)


def test_int8_model_gets_int8_input(models):
    r = measure_tflite(models["int8"], runs=5)
    assert r.input_dtype == "int8"
    assert r.median_ms > 0


def test_min_time_extends_runs(models):
    t0 = time.perf_counter()
    r = measure_tflite(models["small"], runs=2, warmup=0, min_time_s=0.3, clock="wall")
    assert time.perf_counter() - t0 >= 0.3
    assert r.runs > 2
    assert measure_tflite(models["small"], runs=2, warmup=0, min_time_s=0.3).runs > 2


def test_bigger_model_measures_slower(models):
    # ~35x the MAdds; interleaved so that load on the shared machine hits both alike.
    res = measure_interleaved({"small": models["small"], "big": models["big"]}, rounds=3,
                              runs=7, warmup=2)
    assert res["big"].p10_ms > 5 * res["small"].p10_ms, res
    assert res["big"].runs == 21


def test_reference_kernels_slower_than_xnnpack(models):
    xnn, ref = [], []
    for _ in range(2):
        xnn.append(measure_tflite(models["big"], use_xnnpack=True, runs=7).p10_ms)
        ref.append(measure_tflite(models["big"], use_xnnpack=False, runs=5).p10_ms)
    assert min(ref) > 1.5 * min(xnn), (xnn, ref)


def test_wall_clock_and_threads(models):
    wall = measure_tflite(models["small"], runs=5, clock="wall")
    assert wall.clock == "wall" and wall.median_ms > 0
    two = measure_tflite(models["small"], runs=5, threads=2)
    assert two.clock == "wall" and two.threads == 2
    with pytest.raises(ValueError, match="threads=1"):
        measure_tflite(models["small"], threads=2, clock="cpu")
    with pytest.raises(ValueError, match="clock"):
        measure_tflite(models["small"], clock="gpu")


def test_errors(models, tmp_path):
    with pytest.raises(FileNotFoundError):
        measure_tflite(tmp_path / "missing.tflite")
    with pytest.raises(ValueError, match="runs"):
        measure_tflite(models["small"], runs=0)
    with pytest.raises(ValueError, match="threads"):
        measure_tflite(models["small"], threads=0)
