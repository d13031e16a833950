"""The search loop: zoo entry, name clashes, summaries, exact resume, MirroredStrategy.

Everything runs a tiny two-stage space on digits at 16x16 with stand-in linear cost models,
so a run is seconds. The resume and mirrored tests run in subprocesses (this file is also the
script they run) to get fresh TensorFlow runtimes.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# -- helpers shared with the subprocesses ----------------------------------------------------

def tiny_space():
    """One searched stage (4 block positions): a few seconds to trace."""
    from search import space as space_lib
    return space_lib.SearchSpace(stages=(space_lib.Stage(32, 2),), stem_filters=16,
                                 head_filters=32, top_filters=32, name="tiny")


class StandInCostModel:
    """Same interface as search.cost_model.LinearCostModel: latency = bias + sum of w[d, c_d]."""

    def __init__(self, space, hardware, seed, scale=1.0, normalizer_ms=10.0):
        rng = np.random.default_rng(seed)
        self.hardware, self.version, self.normalizer_ms = hardware, f"standin-{seed}", normalizer_ms
        self.table = np.zeros((len(space.decisions), max(space.num_choices)), np.float32)
        for i, n in enumerate(space.num_choices):
            self.table[i, :n] = rng.uniform(0, scale, n)
        self.bias = 1.0

    def predict(self, choices):
        c = np.asarray(choices).reshape(-1, self.table.shape[0])
        return self.table[np.arange(self.table.shape[0]), c].sum(-1) + self.bias

    def predict_tf(self, choices):
        import tensorflow as tf
        c = tf.cast(choices, tf.int32)
        return tf.reduce_sum(tf.gather(tf.constant(self.table), c[:, None], axis=1,
                                       batch_dims=1)) + self.bias


def tiny_config(model_dir, **overrides):
    from search.loop import SearchConfig
    kw = dict(model_dir=str(model_dir), hardware=("hw_a", "hw_b"), metric="max",
              image_size=16, batch_size=8, steps=8, warmup_fraction=0.25,
              rl_delay_fraction=0.0, supernet_width=1.0, rl_learning_rate=0.1,
              checkpoint_every=4, summary_every=2, log_every=4, seed=7)
    kw.update(overrides)
    return SearchConfig(**kw)


def run_tiny(model_dir, strategy=None, write_entry=False, on_step=None, **overrides):
    from search.loop import run_search
    space = tiny_space()
    cms = [StandInCostModel(space, "hw_a", 1), StandInCostModel(space, "hw_b", 2, 0.5)]
    return run_search(tiny_config(model_dir, **overrides), strategy=strategy, cost_models=cms,
                      space=space, write_entry=write_entry, on_step=on_step)


def subprocess_main(mode, model_dir, out_path, extra):
    if mode == "mirrored":
        from search.distribute import make_strategy
        strategy = make_strategy("mirrored", num_cpu_devices=2)
        steps = []
        result = run_tiny(model_dir, strategy=strategy, steps=6,
                          on_step=lambda s, v: steps.append(
                              {k: np.asarray(v[k]).tolist() for k in
                               ("choices", "reward", "mean_reward", "baseline")}))
        ctrl = result.objects["controller"]
        per_replica = [np.asarray(strategy.experimental_local_results(v)).tolist()
                       for v in ctrl.logits]
        out = {"replicas": strategy.num_replicas_in_sync, "steps": steps,
               "logits_per_replica": per_replica,
               "baseline_final": float(ctrl.baseline.numpy())}
    else:
        result = run_tiny(model_dir, **json.loads(extra))
        out = {"logits": result.logits, "steps_done": result.steps_done,
               "finished": result.finished, "history": result.history}
    Path(out_path).write_text(json.dumps(out))


def run_subprocess(mode, model_dir, out_path, extra="{}", timeout=600):
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, __file__, mode, str(model_dir), str(out_path), extra],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(Path(out_path).read_text())


# -- tests -----------------------------------------------------------------------------------

def test_search_writes_entry_that_builds(tmp_path, monkeypatch):
    import mhmodels
    from mhmodels.registry import ZOO_PATH_ENV
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    monkeypatch.setenv(ZOO_PATH_ENV, str(zoo))
    result = run_tiny(tmp_path / "run", write_entry=True, entry_name="tiny_searched",
                      zoo_dir=str(zoo))
    assert result.finished and result.steps_done == 8
    path = zoo / "tiny_searched.json"
    assert result.entry_path == str(path) and path.exists()
    assert not [p for p in zoo.iterdir() if p.name.startswith(".")]  # no temp file left
    data = json.loads(path.read_text())
    prov = data["provenance"]
    assert prov["hardware"] == ["hw_a", "hw_b"]
    assert prov["cost_models"]["hw_a"]["version"] == "standin-1"
    assert prov["choices"] == [int(c) for c in result.choices]
    assert set(prov["predicted_latency_ms"]) == {"hw_a", "hw_b"}
    assert prov["flags"]["metric"] == "max" and prov["flags"]["steps"] == 8
    assert len(prov["final_logits"]) == len(tiny_space().decisions)
    assert prov["reward_history"]["steps"] == 8
    # The spec is the argmax architecture, and mhmodels builds it by name.
    assert mhmodels.get_spec("tiny_searched") == tiny_space().decode(result.choices,
                                                                     "tiny_searched",
                                                                     data["description"])
    model = mhmodels.build("tiny_searched", input_shape=(64, 64, 3), num_classes=10)
    assert model.output_shape == (None, 10)
    # TensorBoard event files and checkpoints exist
    assert list((tmp_path / "run" / "summaries").glob("events.out.tfevents*"))
    assert (tmp_path / "run" / "checkpoints" / "checkpoint").exists()


def test_clashing_name_is_an_error_before_any_work(tmp_path, monkeypatch):
    from search.loop import check_entry_name
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    (zoo / "taken.json").write_text("{}")
    with pytest.raises(FileExistsError, match="already exists"):
        run_tiny(tmp_path / "run1", write_entry=True, entry_name="taken", zoo_dir=str(zoo))
    with pytest.raises(FileExistsError, match="multi_max"):
        run_tiny(tmp_path / "run2", write_entry=True, entry_name="multi_max", zoo_dir=str(zoo))
    with pytest.raises(ValueError, match="must match"):
        check_entry_name("Bad-Name", zoo)
    assert not (tmp_path / "run1").exists() and not (tmp_path / "run2").exists()


@pytest.mark.slow  # over 20 s on 2 idle cores (CI durations)
def test_rerun_of_a_finished_search_reports_its_entry(tmp_path, monkeypatch):
    """Default name and location: one entry in the user zoo, however often the run is redone;
    an explicit --entry_name rerun reports the same instead of 'pick another --entry_name'."""
    import mhmodels
    monkeypatch.setenv("MHMODELS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MHMODELS_ZOO_PATH", raising=False)
    part = run_tiny(tmp_path / "run", write_entry=True, steps=2, checkpoint_every=1,
                    max_steps=1)
    assert not part.finished and part.entry_path is None
    name = json.loads((tmp_path / "run" / "search_config.json").read_text())["entry_name"]
    import time
    time.sleep(1.1)  # a new default name would carry a new timestamp
    first = run_tiny(tmp_path / "run", write_entry=True, steps=2, checkpoint_every=1)
    assert Path(first.entry_path).stem == name  # the resumed search kept its name
    user_zoo = tmp_path / "home" / "zoo" / "models"
    entries = sorted(user_zoo.glob("*.json"))
    assert [str(p) for p in entries] == [first.entry_path]
    assert entries[0].name.startswith("searched_max_")
    from mhmodels.registry import builtin_zoo_dir
    assert not (builtin_zoo_dir() / "models" / entries[0].name).exists()
    assert entries[0].stem in mhmodels.list_models()
    again = run_tiny(tmp_path / "run", write_entry=True, steps=2, checkpoint_every=1)
    assert again.already_finished and again.finished and not first.already_finished
    assert again.entry_path == first.entry_path and again.steps_done == 2
    assert list(again.choices) == [int(c) for c in first.choices]
    assert sorted(user_zoo.glob("*.json")) == entries
    named = run_tiny(tmp_path / "named", write_entry=True, entry_name="tiny_named", steps=2,
                     checkpoint_every=2)
    rerun = run_tiny(tmp_path / "named", write_entry=True, entry_name="tiny_named", steps=2,
                     checkpoint_every=2)
    assert rerun.already_finished and rerun.entry_path == named.entry_path


@pytest.mark.parametrize("bad, message", [
    ({"batch_size": 0}, "--batch_size=0: must be >= 1"),
    ({"target": 0}, "--target=0: must be > 0"),
    ({"warmup_fraction": 2.0}, "--warmup_fraction=2.0: must be in"),
    ({"rl_delay_fraction": -0.1}, "--rl_delay_fraction=-0.1"),
    ({"beta": 0.5}, "--beta=0.5: must be <= 0"),
    ({"steps": 0}, "--steps=0"),
    ({"keep_checkpoints": -1}, "--keep_checkpoints=-1"),
    ({"dataset": "folder:/nonexistent/images"}, "no such image folder"),
    ({"zoo_dir": str(ROOT / "zoo" / "models")}, "shipped files, which are never written"),
])
def test_invalid_settings_write_nothing(tmp_path, bad, message):
    with pytest.raises(ValueError) as err:
        run_tiny(tmp_path / "run", **bad)
    assert message in str(err.value)
    assert not (tmp_path / "run").exists()
    if "batch_size" in bad:  # the corrected command is not refused as "different settings"
        assert run_tiny(tmp_path / "run", steps=2, checkpoint_every=2).finished


def test_state_files_are_replaced_atomically_and_a_damaged_one_is_named(tmp_path):
    run = tmp_path / "run"
    run_tiny(run, max_steps=4)
    names = ("history.json", "search_config.json")
    inodes = {n: os.stat(run / n).st_ino for n in names}
    assert all(oct(os.stat(run / n).st_mode & 0o777) == "0o644" for n in names)
    run_tiny(run)  # resumed at 4, checkpoint at 8: both files rewritten
    # a rename replaces the file (a new inode); writing in place would tear it on a crash
    assert all(os.stat(run / n).st_ino != inodes[n] for n in names)
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]
    for name in names:
        good = (run / name).read_text()
        (run / name).write_text(good[: len(good) // 2])  # a torn copy
        with pytest.raises(ValueError) as err:
            run_tiny(run)
        assert str(run / name) in str(err.value) and "damaged" in str(err.value)
        (run / name).write_text(good)


def test_state_files_on_a_remote_filesystem(tmp_path):
    """gs:// paths go through tf.io.gfile; ram:// is the in-process stand-in."""
    import tensorflow as tf
    from mhmodels.files import atomic_write, read_json
    tf.io.gfile.makedirs("ram://state")
    atomic_write("ram://state/h.json", '{"a": 1}')
    atomic_write("ram://state/h.json", '{"a": 2}')
    assert read_json("ram://state/h.json", "history") == {"a": 2}
    assert tf.io.gfile.listdir("ram://state") == ["h.json"]


@pytest.mark.slow  # over 20 s on 2 idle cores (CI durations)
def test_keep_checkpoints(tmp_path, monkeypatch):
    run_tiny(tmp_path / "run", steps=8, checkpoint_every=2, keep_checkpoints=1)
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("*.index"))
    assert kept == ["ckpt-8.index"]
    # 0: one checkpoint while running (resumable), none once the entry is written
    monkeypatch.setenv("MHMODELS_HOME", str(tmp_path / "home"))
    part = run_tiny(tmp_path / "zero", write_entry=True, entry_name="tiny_zero", steps=8,
                    checkpoint_every=2, keep_checkpoints=0, max_steps=5)
    kept = sorted(p.name for p in (tmp_path / "zero" / "checkpoints").glob("*.index"))
    assert not part.finished and kept == ["ckpt-4.index"]
    done = run_tiny(tmp_path / "zero", write_entry=True, entry_name="tiny_zero", steps=8,
                    checkpoint_every=2, keep_checkpoints=0)
    assert done.finished and Path(done.entry_path).exists()
    assert not (tmp_path / "zero" / "checkpoints").exists()
    again = run_tiny(tmp_path / "zero", write_entry=True, entry_name="tiny_zero", steps=8,
                     checkpoint_every=2, keep_checkpoints=0)
    assert again.already_finished and again.entry_path == done.entry_path


def test_a_running_search_holds_its_model_dir(tmp_path):
    """While run_search works, a second search on its --model_dir stops at once, naming it."""
    import socket
    import time
    from mhmodels.locking import LOCK_NAME
    run_dir = tmp_path / "run"
    seen = []

    def second_search(step, values):
        if seen:
            return
        holder = json.loads((run_dir / LOCK_NAME).read_text())
        start = time.perf_counter()
        other = subprocess.run([sys.executable, "-m", "search", f"--model_dir={run_dir}",
                                "--nomeasure"], cwd=ROOT, capture_output=True, text=True,
                               timeout=60, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        seen.append((holder, other, time.perf_counter() - start))

    result = run_tiny(run_dir, steps=2, checkpoint_every=2, on_step=second_search)
    (holder, other, seconds), = seen
    assert holder["pid"] == os.getpid() and holder["what"] == "search"
    assert other.returncode == 2 and seconds < 4.0  # before TensorFlow loads (see test_cli)
    assert other.stderr.startswith(f"error: --model_dir={run_dir} is in use by search on host "
                                   f"{socket.gethostname()}, pid {os.getpid()}, started ")
    assert result.finished and not (run_dir / LOCK_NAME).exists()  # released at the end


@pytest.mark.slow  # over 20 s on 2 idle cores (CI durations)
def test_resume_reproduces_uninterrupted_run(tmp_path):
    """Run 8 steps killed after step 5 (checkpoints every 4), resume to 8 in a new process:
    same controller logits and reward history as one uninterrupted 8-step run."""
    full = run_subprocess("run", tmp_path / "full", tmp_path / "full.json")
    part = run_subprocess("run", tmp_path / "resumed", tmp_path / "part.json",
                          json.dumps({"max_steps": 5}))
    assert part["steps_done"] == 5 and not part["finished"]
    resumed = run_subprocess("run", tmp_path / "resumed", tmp_path / "resumed.json")
    assert resumed["finished"] and resumed["steps_done"] == 8
    assert full["finished"]
    assert np.any([np.any(np.asarray(l) != 0) for l in full["logits"]])  # the controller moved
    for a, b in zip(full["logits"], resumed["logits"]):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    np.testing.assert_allclose(full["history"]["reward"], resumed["history"]["reward"],
                               atol=1e-6)


def test_resume_with_different_settings_is_refused(tmp_path):
    run_tiny(tmp_path / "run", steps=2, checkpoint_every=2)
    with pytest.raises(ValueError, match="different settings"):
        run_tiny(tmp_path / "run", steps=2, checkpoint_every=2, seed=8)


@pytest.mark.slow  # over 20 s on 2 idle cores (CI durations)
def test_mirrored_replicas_sample_their_own_architectures(tmp_path):
    out = run_subprocess("mirrored", tmp_path / "m", tmp_path / "m.json")
    assert out["replicas"] == 2
    steps = out["steps"]
    # each replica samples its own child (distinct at least once over the steps)
    assert any(s["choices"][0] != s["choices"][1] for s in steps)
    baseline = None
    for s in steps:
        mean = float(np.mean(s["reward"]))
        assert s["mean_reward"] == pytest.approx([mean, mean], abs=1e-6)
        used = mean if baseline is None else baseline
        assert s["baseline"] == pytest.approx([used, used], abs=1e-6)
        baseline = 0.95 * used + 0.05 * mean
    assert out["baseline_final"] == pytest.approx(baseline, abs=1e-6)
    # the controller's mirrored copies stay identical
    for per_replica in out["logits_per_replica"]:
        assert per_replica[0] == per_replica[1]


@pytest.mark.slow
def test_cli_end_to_end(tmp_path):
    """`python -m search` on the real space and the shipped cost models, a few tiny steps."""
    from search.cost_model import DEFAULT_DIR
    if not all((Path(DEFAULT_DIR) / f"{h}.json").exists()
               for h in ("cpu_float", "cpu_int8", "ethos_u55", "ethos_u85")):
        pytest.skip("shipped cost models not fitted yet")
    zoo = tmp_path / "zoo"
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    cmd = [sys.executable, "-m", "search", f"--model_dir={tmp_path / 'run'}", "--steps=3",
           "--batch_size=4", "--log_every=1", "--nomeasure", "--nocalibrate",
           f"--zoo_dir={zoo}",
           "--entry_name=cli_entry"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "search finished: 3 steps" in proc.stdout
    entry = json.loads((zoo / "cli_entry.json").read_text())
    # the default hardware: two CPU formats and two Ethos-U NPUs
    assert entry["provenance"]["hardware"] == ["cpu_float", "cpu_int8", "ethos_u55", "ethos_u85"]
    assert entry["provenance"]["flags"]["metric"] == "max"
    # the untrained policy's argmax (choice 0 everywhere) is far below T = 1: the landing
    # moved it there by vela's exact price on the NPUs, and says so beside the model's guess
    final = entry["provenance"]["final_architecture"]
    assert final["decisions_moved"] >= 1 and final["exact_f"] is not None, final
    assert (f"by its exact price on ethos_u55, ethos_u85: f {final['exact_f']:.3f} (the cost "
            f"models say {final['predicted_f']:.3f})") in proc.stdout
    # the same name again is refused before any work
    proc = subprocess.run(cmd[:1] + cmd[1:3] + [f"--model_dir={tmp_path / 'run2'}"] + cmd[4:],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "already exists" in proc.stderr
    # one error line, after at most one-line warnings (e.g. the shipped CPU models' host
    # differs from this one and --nocalibrate keeps them)
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "Traceback" not in proc.stderr
    assert all(line.startswith("warning: ") for line in lines[:-1]), lines
    assert not (tmp_path / "run2").exists()
    # the finished search rerun: done, where its entry is, nothing new written
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "holds a finished search (3 steps)" in proc.stdout
    assert str(zoo / "cli_entry.json") in proc.stdout
    assert [p.name for p in zoo.iterdir()] == ["cli_entry.json"]


def test_cli_unknown_compare_model_is_an_error_before_any_work(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-m", "search", f"--model_dir={tmp_path / 'run'}",
                           "--compare=multi_max,multi_maxx"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "--compare: unknown model 'multi_maxx'; did you mean 'multi_max'" in proc.stderr
    assert not (tmp_path / "run").exists()

@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("MHMODELS_TEST_FULL") != "1",
                    reason='full size only (CI time): tests/test_experiment.py measures zoo models normalised by MobileNetV1 measured in the same run')
def test_compare_latency_normalises_measured_rows_by_mobilenet_v1_measured_here(capsys):
    """Cost-model ms belong to the host they were fitted on: measured rows use C measured here."""
    from search.compare import compare_latency
    from search.loop import SearchConfig
    hardware = ("cpu_float", "cpu_int8")
    config = SearchConfig(model_dir="unused", hardware=hardware, entry_name="multi_max")
    compare_latency(config, ["mobilenet_v2"], image_size=96)
    lines = capsys.readouterr().out.splitlines()
    norm_line = next(line for line in lines if line.startswith("normaliser C"))
    measured_c = [float(part.split()[1]) for part in norm_line.split(": ", 1)[1].split(", ")]
    assert all(c > 0 for c in measured_c)
    for name in ("multi_max", "mobilenet_v2"):
        fields = next(line for line in lines if line.startswith(name + " ")).split()[1:]
        measured = [float(fields[3 * i]) for i in range(len(hardware))]
        f_avg, f_max = float(fields[-2]), float(fields[-1])
        ratios = [m / c for m, c in zip(measured, measured_c)]
        # the table prints 2 decimals of ms and 3 of f
        assert f_max == pytest.approx(max(ratios), rel=0.03)
        assert f_avg == pytest.approx(sum(ratios) / len(ratios), rel=0.03)
    # multi_max is in the space, so it has a prediction; mobilenet_v2 is not ("-")
    assert next(line for line in lines if line.startswith("mobilenet_v2 ")).split()[3] == "-"


if __name__ == "__main__":
    subprocess_main(*sys.argv[1:5])


def test_checkpoints_without_their_state_files_are_refused_with_true_advice(tmp_path):
    """Deleting history.json or search_config.json of a run with checkpoints would resume the
    old weights under new flags or a renumbered history: refused, naming what to delete."""
    run = tmp_path / "run"
    run_tiny(run, max_steps=4)
    for name in ("history.json", "search_config.json"):
        saved = (run / name).read_bytes()
        (run / name).unlink()
        with pytest.raises(ValueError) as err:
            run_tiny(run, seed=8 if name == "search_config.json" else 7)
        message = str(err.value)
        assert f"no {name}" in message and str(run / "checkpoints") in message
        (run / name).write_bytes(saved)
    # The advice works: deleting what it names starts from step 0 with the new flags.
    import shutil
    shutil.rmtree(run / "checkpoints")
    for name in ("history.json", "search_config.json"):
        (run / name).unlink()
    fresh = run_tiny(run, seed=8)
    assert fresh.steps_done == 8 and len(fresh.history["reward"]) == 8
    assert json.loads((run / "search_config.json").read_text())["seed"] == 8


def test_entry_records_predicted_f_and_lands_on_target(tmp_path, monkeypatch):
    """The entry's provenance holds f_i = L_i / C_i per hardware and how the architecture was
    read off the policy; the published one is within the tolerance of T, the argmax is not."""
    monkeypatch.setenv("MHMODELS_HOME", str(tmp_path / "home"))
    space = tiny_space()
    cms = [StandInCostModel(space, "hw_a", 1), StandInCostModel(space, "hw_b", 2, 0.5)]
    uniform = np.stack([space.sample(np.random.default_rng(i)) for i in range(200)])
    def f_max(archs):
        return np.maximum(cms[0].predict(archs) / 10.0, cms[1].predict(archs) / 10.0)
    # A controller that never learns (rl_learning_rate=0) keeps the uniform policy on every
    # host, so its argmax is choice 0 of every decision; T is put where that argmax is not.
    argmax_f = float(f_max(np.zeros((1, len(space.num_choices)), np.int64))[0])
    reachable = f_max(uniform)
    target = float(reachable[np.argmax(np.abs(reachable / argmax_f - 1.0))])
    assert abs(argmax_f / target - 1) > 0.1
    result = run_tiny(tmp_path / "run", write_entry=True, entry_name="tiny_on_target",
                      zoo_dir=str(tmp_path / "zoo"), target=target, rl_learning_rate=0.0)
    prov = json.loads(Path(result.entry_path).read_text())["provenance"]
    lat = prov["predicted_latency_ms"]
    assert prov["predicted_f"] == pytest.approx({hw: lat[hw] / 10.0 for hw in lat})
    assert prov["predicted_f_max"] == pytest.approx(max(prov["predicted_f"].values()))
    final = prov["final_architecture"]
    assert final["rule"] == "on_target" and final["decisions_moved"] >= 1
    assert abs(final["argmax_predicted_f"] / target - 1) > 0.02
    assert abs(prov["predicted_f_max"] / target - 1) <= 0.02
    assert final["predicted_f"] == pytest.approx(prov["predicted_f_max"])
    assert final["argmax_predicted_f"] == pytest.approx(argmax_f)
    argmax = run_tiny(tmp_path / "argmax", target=target, final="argmax", rl_learning_rate=0.0)
    assert argmax.choices.tolist() == final["argmax_choices"] == [0] * len(space.num_choices)


@pytest.mark.parametrize("target,seed", [(0.7, 3), (0.85, 0)])
def test_the_published_architecture_lands_on_t_by_vela_not_only_by_the_cost_model(target, seed):
    """Deterministic hardware (vela) price the decoded architecture exactly and the decode's
    moves are replayed with that hardware's predictions scaled by exact / predicted, every
    architecture on the way priced exactly: the published architecture is within the
    tolerance of T in vela's own numbers (the Ethos-U85 model errs by 7-25% on searched
    architectures, docs/search_target.md). The second case misses by 17% at first."""
    from types import SimpleNamespace
    from search.config import SearchConfig
    from search.controller import most_probable_on_target
    from search.cost_model import load_cost_model
    from search.hardware import get_hardware
    from search.loop import _on_exact_target, predicted_f
    from search.space import get_space
    space = get_space("multi_hw")
    cm = load_cost_model("ethos_u85", space=space)
    config = SearchConfig(model_dir="/tmp/unused", hardware=("ethos_u85",), metric="single",
                          target=target, target_tolerance=0.02)
    run = SimpleNamespace(config=config, cost_models=[cm], normalizers=[cm.normalizer_ms],
                          space=space)
    sizes = np.asarray(space.num_choices)
    log_probs = np.where(np.arange(sizes.max())[None] < sizes[:, None], 0.0, -1e9)
    rng = np.random.default_rng(seed)
    log_probs = log_probs + np.where(log_probs == 0.0, rng.normal(0, 0.3, log_probs.shape), 0)
    argmax = np.argmax(log_probs, axis=1)
    first = most_probable_on_target(
        log_probs, argmax, lambda b: predicted_f(run.cost_models, run.normalizers, "single", b),
        target, 0.02)
    hw = get_hardware("ethos_u85")
    first_ms = hw.measure_choices(space, first)
    choices, rounds = _on_exact_target(run, log_probs, argmax, first)
    assert rounds and rounds[0]["ethos_u85"] == pytest.approx(
        first_ms / float(cm.predict(first[None])[0]), rel=1e-3)
    assert rounds[0]["f"] == pytest.approx(first_ms / cm.normalizer_ms, rel=1e-3)
    assert rounds[0]["moved"] == 0 and (len(rounds) == 1) == (abs(rounds[0]["f"] / target - 1)
                                                              <= 0.02)
    exact_f = hw.measure_choices(space, choices) / cm.normalizer_ms
    published = [r for r in rounds if r.get("published")]  # priced, recorded, marked
    assert len(published) == 1 and published[0]["f"] == pytest.approx(exact_f, rel=1e-3)
    assert abs(exact_f / target - 1) <= 0.02, (rounds, exact_f)
    # stand-in hardware (no exact source) leave the decode alone
    stand_in = SimpleNamespace(config=SearchConfig(model_dir="/tmp/unused", hardware=("hw_a",)))
    assert _on_exact_target(stand_in, log_probs, argmax, first)[1] == []
