"""`python -m mhmodels benchmark`, run small: files, columns, MN-Norm consistency."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mhmodels.benchmark import format_table, run_benchmark
from mhmodels.metrics import mn_norm

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    res = run_benchmark(["multi_max", "mobilenet_v3_small"], ["0.5"], ["float", "int8"],
                        image_size=64, xnnpack="both", runs=3, warmup=1, rounds=2,
                        output_dir=out, progress=False, npu=["ethos_u55", "ethos_u85"])
    return out, res


@pytest.mark.slow  # over 20 s on 2 idle cores (CI durations)
def test_files_and_table_shape(result):
    out, res = result
    for name in ("benchmark.csv", "benchmark.json", "benchmark.png"):
        assert (out / name).stat().st_size > 0
    assert res["hardware"] == ["cpu_float", "cpu_int8", "cpu_ref_float", "cpu_ref_int8",
                               "ethos_u55", "ethos_u85"]
    with (out / "benchmark.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    # The two models plus MobileNetV1 1.0, the normaliser, measured in the same run.
    assert [(r["model"], float(r["width"])) for r in rows] == [
        ("multi_max", 0.5), ("mobilenet_v3_small", 0.5), ("mobilenet_v1", 1.0)]
    for r in rows:
        assert float(r["params_m"]) > 0 and float(r["madds_m"]) > 0
        for h in res["hardware"]:
            assert 0 < float(r[f"{h}_p10_ms"]) <= float(r[f"{h}_ms"]) <= float(r[f"{h}_p90_ms"])
    v1 = rows[-1]
    assert float(v1["mn_norm_avg"]) == pytest.approx(1.0)
    assert float(v1["mn_norm_max"]) == pytest.approx(1.0)
    # multi_max at width 0.5 is far smaller than MobileNetV1 1.0.
    assert float(rows[0]["madds_m"]) < 0.5 * float(v1["madds_m"])
    assert float(rows[0]["cpu_float_ms"]) < float(v1["cpu_float_ms"])


@pytest.mark.slow  # over 20 s on 2 idle cores (CI durations)
def test_json_matches_csv_and_metrics(result):
    out, res = result
    data = json.loads((out / "benchmark.json").read_text())
    assert data["config"]["image_size"] == 64 and data["config"]["rounds"] == 2
    norm = data["normalizer"]["latency_ms"]
    assert set(norm) == set(data["hardware"])
    for row in data["rows"]:
        lat = [row["latency"][h]["median_ms"] for h in data["hardware"]]
        avg, mx = mn_norm(lat, [norm[h] for h in data["hardware"]])
        assert row["mn_norm_avg"] == pytest.approx(avg, abs=1e-4)
        assert row["mn_norm_max"] == pytest.approx(mx, abs=1e-4)
        assert all(row["latency"][h]["runs"] == 6 for h in data["hardware"][:4])
        # NPU columns: one deterministic vela estimate, every op on the NPU.
        assert all(row["latency"][h]["runs"] == 1 and row["latency"][h]["cpu_ops"] == 0
                   for h in ("ethos_u55", "ethos_u85"))
    assert data["config"]["npu"]["ethos_u55"]["accelerator"] == "ethos-u55-256"
    # Reference latencies (ref kernels) are slower than XNNPACK for MobileNetV1.
    v1 = data["rows"][-1]["latency"]
    assert v1["cpu_ref_float"]["p10_ms"] > v1["cpu_float"]["p10_ms"]
    assert "multi_max" in format_table(res)


def test_unknown_model_fails_fast(tmp_path):
    with pytest.raises(ValueError, match="unknown model"):
        run_benchmark(["no_such_model"], [1.0], ["float"], output_dir=tmp_path, progress=False)


@pytest.mark.slow  # a fresh interpreter imports TensorFlow: ~35 s in CI
def test_command_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "mhmodels", "benchmark", "--models=mobilenet_v1",
         "--widths=0.25", "--quantization=float", "--image_size=32", "--runs=2", "--warmup=0",
         "--rounds=1", "--xnnpack=on", "--noplot", f"--output_dir={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "mobilenet_v1" in proc.stdout and "avg" in proc.stdout
    with (tmp_path / "benchmark.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["model"], float(r["width"])) for r in rows] == [("mobilenet_v1", 0.25),
                                                               ("mobilenet_v1", 1.0)]
    assert not (tmp_path / "benchmark.png").exists()
