"""search.experiment: single- vs multi-hardware searches, trained and measured (Tables 2, 3).

The slow test runs the experiment's small mode for real (searches, trainings, LiteRT timings,
vela estimates) in a subprocess, kills it once its first search is done, reruns it to the end
and once more: the finished search is not redone, the tables have every row and only finite
measurements, and a third run reproduces the report from the saved units.
"""
import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from search import experiment as E  # noqa: E402
from search import experiment_report as R  # noqa: E402


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_validate_names_the_flag():
    base = dict(output_dir="/tmp/x", hardware=("cpu_float", "ethos_u55"))
    E.validate(E.ExperimentConfig(**base))
    cases = [
        (dict(hardware=("cpu_float",)), "--hardware: name at least two"),
        (dict(hardware=("cpu_float",), searches=("single", "max")), "one is enough with "
                                                                    "--searches=single"),
        (dict(searches=()), "--searches=: a non-empty subset"),
        (dict(searches=("single", "min")), "--searches=single,min"),
        (dict(hardware=("cpu_float", "cpu_float")), "listed twice"),
        (dict(hardware=("cpu_float", "no_such")), "--hardware: unknown hardware 'no_such'"),
        (dict(hardware=("cpu_float", "csv:/tmp/lat.csv")), "cannot measure new architectures"),
        (dict(baselines=("multi_max", "no_such_model")), "--baselines"),
        (dict(seeds=0), "--seeds=0"),
        (dict(random_tolerance=1.5), "--random_tolerance=1.5"),
        (dict(beta=0.1), "--beta=0.1"),
        (dict(image_size=16), "--image_size=16"),
        (dict(calibration_archs=5), "--calibration_archs=5"),
        (dict(widths=(0.75, 1.25)), "--widths=0.75,1.25"),
    ]
    for change, message in cases:
        with pytest.raises(ValueError, match=message):
            E.validate(E.ExperimentConfig(**{**base, **change}))
    # Single-hardware searches alone (comparing spaces of one hardware): one hardware is enough.
    one = E.ExperimentConfig(output_dir="/tmp/x", hardware=("ethos_u55",), searches=("single",))
    E.validate(one)
    assert E._search_labels(one) == [("single_ethos_u55", "single", ("ethos_u55",))]
    assert [label for label, _, _ in E._search_labels(E.ExperimentConfig(**base))] == [
        "single_cpu_float", "single_ethos_u55", "searched_avg", "searched_max"]
    # The default is left out of the recorded settings (directories from before the flag).
    assert "searches" not in E.ExperimentConfig(**base).identity()
    assert one.identity()["searches"] == ["single"]


def test_settings_are_recorded_and_other_settings_refused(tmp_path):
    config = E.ExperimentConfig(output_dir=str(tmp_path), hardware=("cpu_float", "ethos_u55"))
    E.check_settings(config)
    saved = json.loads((tmp_path / E.SETTINGS_JSON).read_text())
    assert saved["hardware"] == ["cpu_float", "ethos_u55"] and "seeds" not in saved
    E.check_settings(E.ExperimentConfig(output_dir=str(tmp_path), seeds=5,  # more seeds: fine
                                        hardware=("cpu_float", "ethos_u55")))
    with pytest.raises(ValueError, match=r"search_steps: 600 -> 100"):
        E.check_settings(E.ExperimentConfig(output_dir=str(tmp_path), search_steps=100,
                                            hardware=("cpu_float", "ethos_u55")))


def test_structure_and_madds_by_stride_of_multi_max():
    import mhmodels
    spec = mhmodels.get_spec("multi_max")
    s = R.structure(spec)
    # Table 1 / zoo/models/multi_max.json: 14 regular IBNs, four 5x5, no fused block.
    assert (s["blocks"], s["fused"], s["kernel5"]) == (14, 0, 4)
    assert s["mean_expansion"] == pytest.approx(57 / 14)
    assert s["stages"][0] == "I3k3 (32)" and len(s["stages"]) == 4
    assert s["stages"][1] == "I6k5 I2k3 I2k3 (64)"
    by = E.madds_by_stride(spec)
    assert sorted(by) == [2, 4, 8, 16, 32]
    assert sum(by.values()) == pytest.approx(mhmodels.profile(spec).madds_m)
    assert 340 < sum(by.values()) < 360  # the paper's 349 M
    # The same architecture under another name is the same digest; another one is not.
    renamed = type(spec).from_dict({**spec.to_dict(), "name": "other"})
    assert E.spec_digest(renamed) == E.spec_digest(spec)
    assert E.spec_digest(mhmodels.get_spec("multi_avg")) != E.spec_digest(spec)


def _row(seed, label, top1, fmax, wall, steps=100, width=1.0):
    return {"seed": seed, "label": label, "group": R.group_of(label), "top1": top1,
            "mn_norm_max": fmax, "mn_norm_avg": fmax * 0.9, "search_wall_s": wall,
            "search_steps": steps, "width": width}


def test_paired_difference_on_fixed_numbers():
    # d = [0.1, -0.2, 0.4, 0.1]: mean 0.1, sd 0.2449, se 0.12247, t(3) 0.975 = 3.18245
    c = R.paired_difference([1.1, 0.8, 1.4, 1.2], [1.0, 1.0, 1.0, 1.1])
    assert c["n"] == 4 and c["mean"] == pytest.approx(0.1)
    assert c["t"] == pytest.approx(0.1 / 0.122474, rel=1e-4)
    assert (c["low"], c["high"]) == pytest.approx((0.1 - 0.389763, 0.1 + 0.389763), rel=1e-4)
    one = R.paired_difference([1.0], [0.5])
    assert one["mean"] == 0.5 and np.isnan(one["low"]) and np.isnan(one["t"])


def test_table3_leads_with_the_paired_comparison_against_the_best_single_search():
    singles = ["single_cpu_float", "single_ethos_u55"]
    rows = [_row(0, "single_cpu_float", 0.80, 1.30, 100), _row(0, "single_ethos_u55", 0.70,
                                                                 1.10, 120),
            _row(0, "searched_avg", 0.75, 1.05, 110), _row(0, "searched_max", 0.78, 1.00, 90),
            _row(1, "single_cpu_float", 0.82, 1.00, 100), _row(1, "single_ethos_u55", 0.72,
                                                                 1.20, 100),
            _row(1, "searched_avg", 0.74, 1.04, 100), _row(1, "searched_max", 0.80, 1.02, 110),
            _row(1, "searched_max", 0.99, 0.10, 110, width=0.75)]  # other widths: not compared
    comps = {(c["metric"], c["quantity"]): c for c in R.comparisons(singles, rows)}
    # max: best single per seed by MN-Norm max is ethos_u55 (1.10), then cpu_float (1.00)
    c = comps[("max", "MN-Norm max")]
    assert c["winners"] == ["single_ethos_u55", "single_cpu_float"]
    assert c["differences"] == pytest.approx([1.00 - 1.10, 1.02 - 1.00])
    assert c["mean"] == pytest.approx(-0.04)
    half = 12.7062 * np.std([-0.1, 0.02], ddof=1) / np.sqrt(2)  # t(1) 0.975 = 12.706
    assert (c["low"], c["high"]) == pytest.approx((-0.04 - half, -0.04 + half), rel=1e-4)
    assert comps[("max", "top-1")]["differences"] == pytest.approx([8.0, -2.0])
    assert comps[("avg", "MN-Norm max")]["differences"] == pytest.approx([1.05 - 1.10,
                                                                          1.04 - 1.00])
    text, csv_rows = R.table3(singles, rows)
    assert text.index("best of the single-hardware searches") < text.index("Search cost")
    assert "| searched_max | MN-Norm max | 2 | 1.010 | 1.050 | -0.040 |" in text
    assert "no difference resolved" in text and "**" not in text.split("\n", 1)[1]
    cost = [r for r in csv_rows if r["row"] == "cost"]
    assert [r["searches"] for r in cost] == [2, 1, 1]
    assert cost[0]["wall_mean"] == 210 and cost[0]["steps_mean"] == 200
    # Single-hardware searches only (--searches=single): no comparison, one cost row.
    singles_only = [r for r in rows if r["label"].startswith("single_")]
    assert R.comparisons(singles, singles_only) == []
    text, csv_rows = R.table3(singles, singles_only)
    assert [r["strategy"] for r in csv_rows] == ["2 single-hardware searches"]
    assert "multi-hardware search (" not in text


def test_accuracy_is_compared_at_a_matched_point_on_the_width_curves():
    """A smaller model cannot pass for a better one: each model's top-1 is read off its width
    curve at MN-Norm = T and the paired difference taken there."""
    # A curve: f_max 0.8 -> 70%, 1.2 -> 80%: at 1.0 it reads 75% (linear); outside, NaN.
    curve = [_row(0, "x", 0.70, 0.8, 0, width=0.75), _row(0, "x", 0.80, 1.2, 0)]
    assert R.accuracy_at(curve, "mn_norm_max", 1.0) == pytest.approx(75.0)
    assert np.isnan(R.accuracy_at(curve, "mn_norm_max", 1.3))
    assert np.isnan(R.accuracy_at(curve[:1], "mn_norm_max", 0.8))  # one point: no curve
    singles = ["single_cpu_float", "single_ethos_u55"]

    def curve_of(seed, label, points):
        return [_row(seed, label, top1, f, 100, width=w) for w, f, top1 in points]
    rows = []
    for seed, (cpu, u55, multi) in enumerate([
            # seed 0: at f_max = 1 the CPU search reads 0.82, the U55 one 0.85 (best), max 0.80
            ([(0.75, 0.9, 0.80), (1.0, 1.3, 0.88)],
             [(0.75, 0.6, 0.81), (1.0, 1.1, 0.86)],
             [(0.75, 0.8, 0.70), (1.0, 1.0, 0.80), (1.25, 1.3, 0.90)]),
            # seed 1: the U55 curve stops below 1.0 (not compared); CPU 0.90, max 0.93
            ([(0.75, 0.8, 0.85), (1.0, 1.2, 0.95)],
             [(0.75, 0.5, 0.80), (1.0, 0.9, 0.90)],
             [(0.75, 0.6, 0.85), (1.0, 1.0, 0.93)]),
            # seed 2: the max search never reaches 1.0: the seed drops out
            ([(0.75, 0.8, 0.85), (1.0, 1.2, 0.95)],
             [(0.75, 0.8, 0.85), (1.0, 1.2, 0.95)],
             [(0.75, 0.5, 0.85), (1.0, 0.7, 0.93)])]):
        rows += curve_of(seed, "single_cpu_float", cpu) + curve_of(seed, "single_ethos_u55", u55)
        rows += curve_of(seed, "searched_max", multi)
    (c,) = R.matched_comparisons(singles, rows, 1.0)  # no searched_avg rows: max only
    assert c["metric"] == "max" and c["seeds"] == [0, 1]
    assert c["winners"] == ["single_ethos_u55", "single_cpu_float"]
    assert c["differences"] == pytest.approx([80.0 - 85.0, 93.0 - 90.0])
    text, csv_rows = R.table3(singles, rows, 1.0, ["searched_max", "single_cpu_float"])
    assert "| searched_max | top-1 at MN-Norm max = 1 | 2 | 86.5 | 87.5 | -1.0 |" in text
    assert "| searched_max | 2 of 3 | 86.5 |" in text  # its curve reaches 1.0 in seeds 0, 1
    assert [r["difference"] for r in csv_rows if r["row"] == "paired at matched point"] == \
        pytest.approx([-1.0])
    assert "**" not in text.split("\n", 1)[1]
    assert "At a matched point" not in R.table3(singles, rows)[0]  # no target: not shown


def test_each_search_is_compared_with_the_mean_of_its_own_random_control():
    """Per seed: the search minus the mean of the K random architectures drawn for it; the
    other group's randoms and other widths do not enter."""
    def row(seed, label, top1, f, madds, width=1.0):
        return {**_row(seed, label, top1, f, 0, width=width), "measured_f": f, "madds_m": madds}
    rows = [row(0, "searched_max", 0.90, 1.00, 300), row(0, "random_searched_max_0", 0.80,
                                                         0.90, 400),
            row(0, "random_searched_max_1", 0.70, 1.10, 500),
            row(1, "searched_max", 0.85, 0.98, 280), row(1, "random_searched_max_0", 0.95,
                                                         1.02, 420),
            row(1, "random_searched_max_1", 0.55, 0.20, 10, width=0.75),  # not width 1.0
            row(1, "random_single_cpu_float_0", 0.10, 3.0, 9)]  # another group's control
    comps = {c["quantity"]: c for c in R.random_comparisons(["searched_max"], rows)}
    assert comps["top1"]["differences"] == pytest.approx([90.0 - 75.0, 85.0 - 95.0])
    assert comps["measured_f"]["differences"] == pytest.approx([0.0, 0.98 - 1.02])
    assert comps["madds_m"]["random_mean"] == pytest.approx((450 + 420) / 2)
    assert R.random_comparisons(["single_cpu_float"], rows) == []  # no search rows
    text, csv_rows = R.table3(["single_cpu_float"], rows)
    assert "| searched_max | top-1 (%) | 2 | 87.5 | 85.0 | +2.5 |" in text
    assert [r["difference"] for r in csv_rows if r["row"] == "search vs random control"
            and r["quantity"] == "top1"] == pytest.approx([2.5])


def test_random_control_is_drawn_per_search_group_at_its_predicted_f(tmp_path):
    from search.cost_model import load_cost_model
    from search.reward import latency_metric
    from search.space import get_space
    space = get_space("multi_hw")
    hardware = ("cpu_float", "ethos_u55")
    models = {h: load_cost_model(h, space=space) for h in hardware}
    config = E.ExperimentConfig(output_dir=str(tmp_path), hardware=hardware, random_k=2)
    searches = {"single_ethos_u55": ("single", ("ethos_u55",), 0.9),
                "searched_avg": ("avg", hardware, 1.1), "searched_max": ("max", hardware, 1.2)}
    drawn = {}
    for label, (metric, hws, f) in searches.items():
        entries = E.random_control(config, 3, {"label": label, "metric": metric,
                                               "hardware": list(hws), "predicted_f_metric": f,
                                               "space": "multi_hw"}, models)
        assert sorted(entries) == [f"random_{label}_0", f"random_{label}_1"]
        for path in entries.values():
            choices = np.array(json.loads(Path(path).read_text())["provenance"]["choices"])
            lat = [float(np.asarray(models[h].predict(choices[None])).reshape(-1)[0])
                   for h in hws]
            got = float(latency_metric(lat, [models[h].normalizer_ms for h in hws], metric))
            assert abs(got / f - 1) <= config.random_tolerance
            drawn[path] = label
    assert len(drawn) == 6  # six distinct entries, two per group
    again = E.random_control(config, 3, {"label": "searched_max"}, models)  # recorded
    assert sorted(again.values()) == sorted(p for p, l in drawn.items() if l == "searched_max")


def test_widths_curve_the_compared_models_and_not_the_random_control():
    """The width curves are for models compared across operating points (searched and
    baselines); a random control is drawn at its search's point, so it trains at 1.0 only: in
    the 8-seed experiment that is 120 trainings instead of 360."""
    config = E.ExperimentConfig(output_dir="/tmp/x", widths=(0.75, 1.0, 1.25))
    assert E.widths_of(config, "searched_max") == (0.75, 1.0, 1.25)
    assert E.widths_of(config, "single_ethos_u55") == (0.75, 1.0, 1.25)
    assert E.widths_of(config, "mobilenet_v2") == (0.75, 1.0, 1.25)
    assert E.widths_of(config, E.random_label("searched_max", 2)) == (1.0,)


@pytest.mark.slow
def test_a_training_stopped_by_a_signal_is_not_recorded_and_resumes(tmp_path):
    """mhmodels.train returns early (checkpointed, no final evaluation) on SIGINT / SIGTERM, as
    with --stop_at_step: the experiment's training unit must stop with one clear line, not
    record a result (nor fail on the missing top-1), and its rerun finishes the training."""
    from mhmodels import train as T
    cfg = dict(model="multi_max", width=0.25, dataset="digits", image_size=32, batch_size=16,
               steps=3, seed=0, model_dir=str(tmp_path / "t"), mode="train_and_eval",
               eval_every_epoch=False, progress=False, log_every=3, checkpoint_every=1)
    first = T.train(T.TrainConfig(**cfg, stop_at_step=2))
    assert (first.step, first.total_steps) == (2, 3) and "top1" not in first.metrics
    with pytest.raises(E.Interrupted, match=r"training multi_max@0.75 \(seed 0\) stopped at "
                                            r"step 2 of 3, checkpointed; rerun"):
        E.train_record(first, 0, "multi_max@0.75", "multi_max", 0.75, 1.0)
    second = T.train(T.TrainConfig(**cfg))
    record = E.train_record(second, 0, "multi_max@0.75", "multi_max", 0.75, 1.0)
    assert second.resumed_from == 2 and record["steps"] == 3
    assert 0.0 <= record["top1"] <= 1.0 and record["eval_count"] > 100


@pytest.mark.slow
def test_small_experiment_resumes_after_a_kill_and_reports_every_model(tmp_path):
    """Stopped by SIGTERM to its own process (as `kill <pid>` or a preemption does) while two
    worker processes run units: one `stopped:` line, exit status 1 and no worker left behind
    (an orphan would keep writing into the directory the rerun uses); the rerun keeps the
    finished search, resumes the rest and reports every model."""
    out = tmp_path / "exp"
    cmd = [sys.executable, "-m", "search.experiment", f"--output_dir={out}", "--mode=small",
           "--hardware=cpu_int8,ethos_u55", "--jobs=2"]  # one int8 file serves both (CI time)
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    first = out / "seed0" / "search" / "single_cpu_int8.done.json"
    log = tmp_path / "first.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=sink, stderr=sink,
                                start_new_session=True)
    try:
        deadline = time.time() + 600
        while not first.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        assert first.exists(), "the first search did not finish: " + log.read_text()[-3000:]
        proc.send_signal(signal.SIGTERM)  # the experiment's process only, not its workers
        assert proc.wait(timeout=300) == 1, log.read_text()[-3000:]
        deadline = time.time() + 30  # the group empties: no worker outlives the experiment
        while time.time() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.5)
        else:
            pytest.fail("a worker process outlived the stopped experiment")
        stopped = [l for l in log.read_text().splitlines() if l.startswith("stopped: ")]
        assert len(stopped) == 1 and "rerun the same command to resume" in stopped[0]
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    kept = first.read_bytes()
    mtime = first.stat().st_mtime_ns

    cmd = cmd[:-1]  # the rest in one process: a worker per unit costs a TensorFlow start each
    rerun = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert re.search(r"searches: [123] of 4 already done \(kept\)", rerun.stdout), \
        rerun.stdout[-3000:]
    assert first.read_bytes() == kept and first.stat().st_mtime_ns == mtime

    hardware = ["cpu_int8", "ethos_u55"]
    results = _rows(out / "results.csv")
    labels = ["single_cpu_int8", "single_ethos_u55", "searched_avg", "searched_max",
              "random_single_cpu_int8_0", "random_single_ethos_u55_0", "random_searched_avg_0",
              "random_searched_max_0", "multi_max"]
    assert sorted(r["label"] for r in results) == sorted(labels)
    measured = [json.loads(p.read_text()) for p in (out / "measure").glob("*.json")]
    # Each distinct architecture once, and the normaliser.
    assert len(measured) == len({r["architecture"] for r in results}) + 1 >= 3
    for m in measured:  # the CPU timed in 2 rounds, the minimum kept; vela (exact) once
        assert sorted(m["rounds_ms"]) == ["cpu_int8"] and len(m["rounds_ms"]["cpu_int8"]) == 2
        assert m["latency_ms"]["cpu_int8"] == min(m["rounds_ms"]["cpu_int8"])
    reference = next(m for m in measured if m["label"] == "mobilenet_v1")["latency_ms"]
    for r in results:
        lat = np.array([float(r[f"latency_ms_{h}"]) for h in hardware])
        assert np.all(np.isfinite(lat)) and np.all(lat > 0), r
        norm = lat / np.array([reference[h] for h in hardware])
        assert float(r["mn_norm_max"]) == pytest.approx(norm.max(), rel=1e-4)
        assert float(r["mn_norm_avg"]) == pytest.approx(norm.mean(), rel=1e-4)
        assert 0.0 <= float(r["top1"]) <= 1.0
        if r["label"].startswith(("single_", "searched_")):
            assert int(r["search_steps"]) == 8 and float(r["search_wall_s"]) > 0
            f = norm.max() if r["search_metric"] != "avg" else norm.mean()
            if r["search_metric"] == "single":
                f = norm[hardware.index(r["label"][len("single_"):])]
            assert float(r["measured_f"]) == pytest.approx(f, rel=1e-4)
            assert float(r["predicted_f"]) > 0
        assert r["binding_hardware"] == hardware[int(np.argmax(norm))]
    table = _rows(out / "table2.csv")
    assert [t["model"] for t in table] == ["single_cpu_int8", "single_ethos_u55",
                                           "searched_avg", "searched_max",
                                           "random @ single_cpu_int8", "random @ single_ethos_u55",
                                           "random @ searched_avg", "random @ searched_max",
                                           "multi_max"]
    for t in table:
        for key, value in t.items():
            searched = t["group"].endswith("search")  # only searches have a predicted f
            if key.endswith("_mean") and (searched or not key.startswith("predicted_f")) and \
                    (t["group"] != "zoo baseline" or not key.startswith("measured_f")):
                assert math.isfinite(float(value)), (t["model"], key, value)
    md = (out / "table2.md").read_text()
    assert md.count("\n| ") == 1 + 1 + len(table)  # header, the normaliser, the models
    assert md.count("\n|---") == 1
    used = sorted(p.name for p in (out / "cost_models").glob("*.json"))
    assert used == ["cpu_int8.json", "ethos_u55.json"]  # small mode: no calibration, copies
    t3 = (out / "table3.md").read_text()
    assert "2 single-hardware searches" in t3 and "| searched_max | MN-Norm max | 1 |" in t3
    assert [r["searches"] for r in _rows(out / "table3.csv") if r["row"] == "cost"] == \
        ["2", "1", "1"]
    structure = (out / "structure.md").read_text()
    for label in labels[:4]:
        assert f"| {label} | 0 |" in structure
    for png in ("fmax_vs_accuracy.png", "latency_bars.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000

    # Everything is done: a third run redoes nothing and reproduces the report exactly.
    before = (out / "results.csv").read_text()
    third = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "searches: 4 of 4 already done (kept)" in third.stdout
    assert "trainings: 9 of 9 already done (kept)" in third.stdout
    assert (out / "results.csv").read_text() == before
