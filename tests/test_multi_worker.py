"""A real two-worker cluster on this machine: `--strategy=multi_worker` of the search and of
training, each worker its own process, TF_CONFIG with 127.0.0.1 ports only.

What is checked, with numbers:
  * each replica samples its own architecture, every worker sees every replica's values (the
    search gathers them), and the baseline is fed the cross-replica mean reward;
  * both workers end with identical controller logits and shared weights (each worker's own
    checkpoint: the chief's in checkpoints/, the other's in its scratch directory);
  * only the chief writes the zoo entry, the summaries, the history and the final weights;
  * killing one worker mid-run, then restarting both, resumes from the last checkpoint to the
    same result as an uninterrupted run.

Every process has a timeout and is killed in `finally`; ports are picked free. This file is
also the script of the replica check (``python tests/test_multi_worker.py replicas ...``).
"""
import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKERS = 2
TIMEOUT_S = 900 if os.environ.get("MHMODELS_TEST_FULL") == "1" else 240  # one cluster run


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def cluster_env(ports, index):
    tf_config = {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                 "task": {"type": "worker", "index": index}}
    return dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2",
                TF_CONFIG=json.dumps(tf_config), CUDA_VISIBLE_DEVICES="")


class Cluster:
    """WORKERS processes of one command (worker i gets TF_CONFIG task index i)."""

    def __init__(self, command, log_dir, tag):
        ports = free_ports(WORKERS)
        self.logs = [Path(log_dir) / f"{tag}_worker{i}.log" for i in range(WORKERS)]
        self.procs = []
        for i in range(WORKERS):
            with open(self.logs[i], "w") as log:
                self.procs.append(subprocess.Popen(
                    command, cwd=ROOT, env=cluster_env(ports, i), stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True))

    def output(self, i):
        return self.logs[i].read_text()[-4000:]

    def wait(self, timeout=TIMEOUT_S):
        deadline = time.time() + timeout
        for i, p in enumerate(self.procs):
            try:
                p.wait(timeout=max(1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                self.kill()
                pytest.fail(f"worker {i} ran past {timeout} s:\n{self.output(i)}")
        for i, p in enumerate(self.procs):
            assert p.returncode == 0, f"worker {i} rc {p.returncode}:\n{self.output(i)}"

    def kill(self, i=None):
        for j, p in enumerate(self.procs):
            if (i is None or i == j) and p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=30)


def run_cluster(command, log_dir, tag):
    cluster = Cluster(command, log_dir, tag)
    try:
        cluster.wait()
    finally:
        cluster.kill()
    return cluster


def kill_after_checkpoint(command, log_dir, tag, checkpoint_glob, timeout=TIMEOUT_S):
    """Start the cluster, SIGKILL worker 1 once the chief's first checkpoint is there (while
    both still run), then the chief (which would wait for worker 1 in its collectives)."""
    cluster = Cluster(command, log_dir, tag)
    try:
        deadline = time.time() + timeout
        while not glob.glob(checkpoint_glob):
            if time.time() > deadline or any(p.poll() is not None for p in cluster.procs):
                pytest.fail(f"no checkpoint {checkpoint_glob} while both workers ran:\n"
                            f"{cluster.output(0)}\n{cluster.output(1)}")
            time.sleep(0.02)
        assert cluster.procs[1].poll() is None, "worker 1 finished before it could be killed"
        cluster.kill(1)
        time.sleep(1.0)
    finally:
        cluster.kill()
    return cluster


def checkpoint_values(path):
    """{variable name: value} of a checkpoint (the step, weights, slots, controller)."""
    import tensorflow as tf
    reader = tf.train.load_checkpoint(path)
    names = [n for n, _ in tf.train.list_variables(path)
             if "OBJECT_GRAPH" not in n and "save_counter" not in n and "iterator" not in n]
    return {n: reader.get_tensor(n) for n in names}


def assert_same_values(a, b, what):
    assert sorted(a) == sorted(b), what
    differ = [n for n in a if not np.array_equal(a[n], b[n])]
    assert not differ, f"{what}: {len(differ)} of {len(a)} variables differ, e.g. {differ[:3]}"


# -- the search ------------------------------------------------------------------------------

def search_command(model_dir, zoo_dir, **extra):
    flags = dict(strategy="multi_worker", model_dir=model_dir, zoo_dir=zoo_dir,
                 entry_name="cluster_entry", hardware="cpu_float,cpu_int8", metric="max",
                 steps=10, batch_size=4, image_size=16, supernet_width=0.1,
                 warmup_fraction=0.2, rl_delay_fraction=0.0, rl_learning_rate=0.2,
                 checkpoint_every=2, summary_every=2, log_every=2, steps_per_loop=2, seed=5)
    flags.update(extra)
    return ([sys.executable, "-m", "search"] + [f"--{k}={v}" for k, v in flags.items()]
            + ["--nomeasure", "--noprogress"])


@pytest.mark.slow
def test_search_cluster_cli(tmp_path, full_size):
    """The real CLI on the real space: three cluster runs of about 3 minutes each on a
    loaded 2-core host, so only with MHMODELS_TEST_FULL=1 (the replica test below covers
    the loop under multi_worker in the small mode)."""
    if not full_size:
        pytest.skip("full size only (MHMODELS_TEST_FULL=1): the multi_hw supernet traces "
                    "for minutes")
    from search.cost_model import DEFAULT_DIR
    if not all((Path(DEFAULT_DIR) / f"{h}.json").exists() for h in ("cpu_float", "cpu_int8")):
        pytest.skip("shipped cost models not fitted yet")
    full, zoo = tmp_path / "full", tmp_path / "zoo_full"
    cluster = run_cluster(search_command(full, zoo), tmp_path, "full")
    assert "search finished: 10 steps" in cluster.output(0)
    assert "2 replica(s)" in cluster.output(1)

    # Only the chief writes: one zoo entry, one events file, the history, result.json.
    assert sorted(os.listdir(zoo)) == ["cluster_entry.json"]
    assert len(os.listdir(full / "summaries")) == 1
    assert os.listdir(full / "worker_tmp") == ["1"]
    assert os.listdir(full / "worker_tmp" / "1") == ["checkpoints"]
    history = json.loads((full / "history.json").read_text())
    assert len(history["reward"]) == 10

    # Both workers end with the same controller and shared weights (bit for bit).
    chief = checkpoint_values(str(full / "checkpoints" / "ckpt-10"))
    other = checkpoint_values(str(full / "worker_tmp" / "1" / "checkpoints" / "ckpt-10"))
    assert_same_values(chief, other, "chief vs worker 1 after 10 steps")
    logits = {n: v for n, v in chief.items() if "logits" in n}
    assert logits and any(np.any(v != 0) for v in logits.values())  # the controller moved

    # Kill worker 1 after the first checkpoint, restart both: the uninterrupted result.
    resumed, zoo_r = tmp_path / "resumed", tmp_path / "zoo_resumed"
    kill_after_checkpoint(search_command(resumed, zoo_r), tmp_path, "killed",
                          str(resumed / "checkpoints" / "ckpt-*.index"))
    assert not zoo_r.exists() or not os.listdir(zoo_r)
    cluster = run_cluster(search_command(resumed, zoo_r), tmp_path, "restart")
    assert "resumed from" in cluster.output(0) + cluster.output(1), cluster.output(0)
    again = checkpoint_values(str(resumed / "checkpoints" / "ckpt-10"))
    assert_same_values(chief, again, "uninterrupted vs killed and resumed")
    resumed_history = json.loads((resumed / "history.json").read_text())
    np.testing.assert_array_equal(history["reward"], resumed_history["reward"])
    a = json.loads((zoo / "cluster_entry.json").read_text())["provenance"]
    b = json.loads((zoo_r / "cluster_entry.json").read_text())["provenance"]
    assert a["choices"] == b["choices"] and a["final_logits"] == b["final_logits"]
    # MultiWorkerMirroredStrategy is an alias of this class
    assert a["replicas"] == 2 and a["strategy"] == "CollectiveAllReduceStrategy"


def replicas_main(model_dir, out_path):
    """One worker of the replica check: the tiny search of test_search_loop, on_step values."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_search_loop import run_tiny
    from search.distribute import make_strategy, is_chief
    strategy = make_strategy("multi_worker")
    steps = []
    result = run_tiny(model_dir, strategy=strategy, steps=6, steps_per_loop=3,
                      on_step=lambda s, v: steps.append(
                          {k: np.asarray(v[k]).tolist() for k in
                           ("choices", "reward", "mean_reward", "baseline")}))
    ctrl = result.objects["controller"]
    Path(out_path).write_text(json.dumps({
        "chief": is_chief(strategy), "replicas": strategy.num_replicas_in_sync, "steps": steps,
        "logits": result.logits, "baseline": float(ctrl.baseline.numpy())}))


@pytest.mark.slow
def test_search_cluster_replicas(tmp_path):
    """Each replica its own child; the baseline gets the mean reward of both workers."""
    out = [tmp_path / f"worker{i}.json" for i in range(WORKERS)]
    # One command for both workers: each writes the file of its own task index.
    command = [sys.executable, __file__, "replicas", str(tmp_path / "run"), str(tmp_path)]
    run_cluster(command, tmp_path, "replicas")
    w0, w1 = (json.loads(p.read_text()) for p in out)
    assert (w0["chief"], w1["chief"]) == (True, False)
    assert w0["replicas"] == w1["replicas"] == 2
    assert len(w0["steps"]) == 6
    # Every worker holds the whole step (all replicas), identical on both workers.
    assert w0["steps"] == w1["steps"]
    assert any(s["choices"][0] != s["choices"][1] for s in w0["steps"])
    baseline = None
    for s in w0["steps"]:
        mean = float(np.mean(s["reward"]))
        assert s["mean_reward"] == pytest.approx([mean, mean], abs=1e-6)
        used = mean if baseline is None else baseline
        assert s["baseline"] == pytest.approx([used, used], abs=1e-6)
        baseline = 0.95 * used + 0.05 * mean
    assert w0["baseline"] == pytest.approx(baseline, abs=1e-6)
    assert w0["logits"] == w1["logits"]
    assert any(any(x != 0 for x in row) for row in w0["logits"])
    # Only the chief writes summaries and the history; worker 1 only its scratch checkpoints.
    run = tmp_path / "run"
    assert len(os.listdir(run / "summaries")) == 1
    assert len(json.loads((run / "history.json").read_text())["reward"]) == 6
    assert os.listdir(run / "worker_tmp") == ["1"]
    assert os.listdir(run / "worker_tmp" / "1") == ["checkpoints"]


# -- training --------------------------------------------------------------------------------

def train_command(model_dir, **extra):
    flags = dict(strategy="multi_worker", model="multi_max", width=0.35, dataset="digits", image_size=32,
                 batch_size=16, steps=4, checkpoint_every=2, mode="train", seed=3,
                 model_dir=model_dir, log_every=2)
    flags.update(extra)
    return ([sys.executable, "-m", "mhmodels.train"] + [f"--{k}={v}" for k, v in flags.items()]
            + ["--noprogress", "--sync_batch_norm"])


@pytest.mark.slow
def test_train_cluster_cli(tmp_path):
    full = tmp_path / "full"
    cluster = run_cluster(train_command(full), tmp_path, "train_full")
    assert "step 4/4" in cluster.output(0), cluster.output(0)
    # Only the chief writes the final weights, run.json and the summaries.
    assert (full / "final.weights.h5").exists() and (full / "run.json").exists()
    assert json.loads((full / "run.json").read_text())["sync_batch_norm"] is True
    assert sorted(p.name for p in full.iterdir()) == sorted(
        ["checkpoints", "train", "eval", "run.json", "final.weights.h5", "final.json",
         "tmp_worker_1"]), sorted(p.name for p in full.iterdir())
    assert len(os.listdir(full / "train")) == 1
    chief = checkpoint_values(str(full / "checkpoints" / "ckpt-4"))
    other = checkpoint_values(str(full / "tmp_worker_1" / "ckpt-4"))
    # Weights, optimizer slots, step and, with --sync_batch_norm (statistics of the global
    # batch), the batch-norm moving statistics agree bit for bit. Without it each worker's
    # moving statistics follow its own half of the batch (0.9452 vs 0.9447 measured).
    moving = {n for n in chief if "moving_" in n}
    assert len(moving) == 2 * 45 and any(np.any(chief[n] != 0) for n in moving)
    assert_same_values(chief, other, "chief vs worker 1 after 4 steps")

    resumed = tmp_path / "resumed"
    kill_after_checkpoint(train_command(resumed), tmp_path, "train_killed",
                          str(resumed / "checkpoints" / "ckpt-*.index"))
    assert not (resumed / "final.weights.h5").exists()
    cluster = run_cluster(train_command(resumed), tmp_path, "train_restart")
    assert "resumed from" in cluster.output(0) or "skipping the" in cluster.output(0), \
        cluster.output(0)
    again = checkpoint_values(str(resumed / "checkpoints" / "ckpt-4"))
    assert_same_values(chief, again, "uninterrupted vs killed and resumed")


if __name__ == "__main__":
    if sys.argv[1] == "replicas":
        index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
        replicas_main(sys.argv[2], str(Path(sys.argv[3]) / f"worker{index}.json"))
