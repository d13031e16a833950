"""The TuNAS-style multi-hardware search loop: step, checkpoints, summaries, the zoo entry.

One search step, on every replica of a ``tf.distribute`` strategy:

1. sample this replica's child alpha from the controller (stateless seed
   ``(seed, step * replicas + replica_id)``: reproducible, distinct per replica, replayed exactly
   after a resume);
2. warm-up: with probability ``max(0, 1 - step / warmup_steps)`` train the largest child
   instead (largest filters, expansion, blocks and kernel), TuNAS's filter warm-up, and,
   drawn independently with the same probability, run every block's regular and fused ops
   together (TuNAS's op warm-up, ``Supernet(..., all_ops=True)``);
3. train the shared supernet weights on this replica's ``search_train`` batch (gradients
   all-reduced, momentum SGD or RMSProp, cosine learning rate);
4. accuracy A of alpha on this replica's held-out ``search_valid`` batch (batch-norm statistics of
   the batch), predicted latency of alpha on every hardware from the linear cost models, the
   reward ``A + beta |f / T - 1|`` (``search.reward``);
5. REINFORCE update of the controller with the cross-replica mean reward in the EMA baseline.

Everything that the run's future depends on is checkpointed (shared weights and their optimizer
slots, controller logits and Adam state, EMA baseline, step); randomness is stateless in
``(seed, step)`` and the input pipelines are seeded and skipped to the restored step, so a run
resumed from a checkpoint reproduces the uninterrupted run.

At the end the argmax architecture is decoded with ``space.decode`` and written atomically as a
zoo entry ``<zoo_dir>/<entry_name>.json`` (spec + provenance). The entry name is checked before
any work starts: an existing file or model name is an error, never an overwrite.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import tensorflow as tf

from mhmodels.locking import run_lock

from . import distribute
from . import reward as reward_lib
from . import space as space_lib
from .controller import Controller, replicated_variable
from .supernet import Supernet

log = logging.getLogger("search")

from .config import (RESULT_JSON, RESUME_KEYS, SearchConfig, check_entry_name,  # noqa: F401
                           default_zoo_dir, validate_config)

@dataclass
class SearchResult:
    choices: np.ndarray  # argmax architecture
    spec: Any  # ModelSpec of the argmax architecture
    entry_path: str | None
    steps_done: int
    total_steps: int
    logits: list[list[float]]
    predicted_latency_ms: dict[str, float]
    f_avg: float
    f_max: float
    history: dict[str, list[float]]
    wall_s: float
    finished: bool
    already_finished: bool = False  # the model_dir held a finished search: nothing was run
    objects: dict = field(default_factory=dict, repr=False)  # supernet, controller, strategy


# --------------------------------------------------------------------------------------------
# Zoo entry name
# --------------------------------------------------------------------------------------------

def default_entry_name(metric: str) -> str:
    return f"searched_{metric}_{time.strftime('%Y%m%d_%H%M%S', time.gmtime())}"


def write_entry_atomic(path: Path, text: str) -> None:
    """Write the entry via a temporary file in the same directory + rename; never over a file."""
    from mhmodels.files import atomic_write
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        raise FileExistsError(f"zoo entry {path} appeared during the search; not overwriting")
    atomic_write(path, text)


# --------------------------------------------------------------------------------------------
# Pieces
# --------------------------------------------------------------------------------------------

def load_cost_models(hardware: Sequence[str], space=None, directory=None) -> list:
    from .cost_model import load_cost_model
    return [load_cost_model(hw, directory, space=space) for hw in hardware]


def total_steps(config: SearchConfig, global_batch: int) -> int:
    validate_config(config, check_files=False, check_hardware=False)
    if config.steps is not None:
        return int(config.steps)
    if config.epochs is None:
        raise ValueError("pass --steps or --epochs")
    from mhmodels.data import dataset_info
    n = dataset_info(config.dataset, config.data_dir).num_examples["search_train"]
    return max(1, int(math.ceil(config.epochs * n / global_batch)))


def default_datasets(config: SearchConfig, global_batch: int, start_step: int):
    """Seeded search_train / search_valid pipelines, skipped to ``start_step`` (exact resume)."""
    from mhmodels.data import make_dataset
    common = dict(image_size=config.image_size, batch_size=global_batch,
                  data_dir=config.data_dir, seed=config.seed)
    train = make_dataset(config.dataset, "search_train", training=True, **common)
    valid = make_dataset(config.dataset, "search_valid", training=False, repeat=True,
                         drop_remainder=True, **common)
    return train.skip(start_step), valid.skip(start_step)


def _json_config(config: SearchConfig) -> dict:
    out = dataclasses.asdict(config)
    out["hardware"] = list(config.hardware)
    return out


def _read_state(path: str, what: str):
    """A state file of the model_dir, or None; a damaged one is an error naming it."""
    if not tf.io.gfile.exists(path):
        return None
    from mhmodels.files import read_json
    return read_json(path, what, hint="delete it to start this search afresh, or use a new "
                     "--model_dir")


def _write(path: str, text: str) -> None:
    from mhmodels.files import atomic_write
    atomic_write(path, text)


def _check_resume_config(saved: dict | None, path: str, config: SearchConfig) -> None:
    if saved is None:
        return
    current = _json_config(config)
    bad = [k for k in RESUME_KEYS if k in saved and saved[k] != current[k]]
    if bad:
        diffs = ", ".join(f"{k}: {saved[k]!r} -> {current[k]!r}" for k in bad)
        raise ValueError(f"{os.path.dirname(path)} holds a search with different settings ({diffs}); "
                         "use a new --model_dir or the same flags to resume")


def _finished_result(config: SearchConfig, record: dict, start_time: float):
    """The SearchResult of a finished search whose entry is still in place, else None."""
    path = record.get("entry_path")
    if not record.get("finished") or not path or not tf.io.gfile.exists(path):
        return None
    if config.entry_name not in (None, record.get("entry_name")):
        return None  # a new name: publish the finished search under it too
    from mhmodels.registry import read_entry
    entry = read_entry(Path(path))
    prov = dict(entry.provenance)
    return SearchResult(
        choices=np.asarray(prov.get("choices", []), np.int64), spec=entry.spec,
        entry_path=str(path), steps_done=int(record["steps"]), total_steps=int(record["steps"]),
        logits=[], predicted_latency_ms=dict(prov.get("predicted_latency_ms", {})),
        f_avg=float(prov.get("predicted_f_avg", float("nan"))),
        f_max=float(prov.get("predicted_f_max", float("nan"))), history={},
        wall_s=time.time() - start_time, finished=True, already_finished=True)


# --------------------------------------------------------------------------------------------
# The search
# --------------------------------------------------------------------------------------------

def run_search(config: SearchConfig, *, strategy: tf.distribute.Strategy | None = None,
               cost_models: Sequence | None = None, space: space_lib.SearchSpace | None = None,
               num_classes: int | None = None,
               datasets: Callable[[int, int], tuple] | None = None,
               write_entry: bool = True,
               on_step: Callable[[int, dict], None] | None = None) -> SearchResult:
    """Run (or resume) a search; see the module docstring.

    Args:
      strategy: a tf.distribute strategy (default: the default strategy).
      cost_models: one object per hardware with ``predict_tf``, ``predict``, ``normalizer_ms``
        (default: ``search.cost_model.load_cost_model`` of every ``config.hardware``).
      space: the search space (default ``get_space(config.space)``).
      num_classes: of the dataset (default from ``mhmodels.data.dataset_info``).
      datasets: ``(global_batch, start_step) -> (train_ds, valid_ds)`` of (images, labels)
        batches (default: ``mhmodels.data.make_dataset`` splits search_train / search_valid).
      write_entry: write the zoo entry at the end.
      on_step: called as ``on_step(step, values)`` after every step with numpy per-replica
        values (choices, reward, accuracy, latencies, baseline, mean_reward, ...).

    Holds ``config.model_dir``'s single-writer lock (the chief only; mhmodels.locking).
    """
    strategy = strategy or tf.distribute.get_strategy()
    validate_config(config, check_files=datasets is None,  # before anything is written
                    check_hardware=cost_models is None)
    with run_lock(config.model_dir, "search", chief=distribute.is_chief(strategy),
                  flag="--model_dir"):
        return _run_search(config, strategy=strategy, cost_models=cost_models, space=space,
                           num_classes=num_classes, datasets=datasets,
                           write_entry=write_entry, on_step=on_step)


def _run_search(config: SearchConfig, *, strategy, cost_models, space, num_classes, datasets,
                write_entry, on_step) -> SearchResult:
    start_time = time.time()
    space = space or space_lib.get_space(config.space)
    config.space = space.name
    config.hardware = tuple(config.hardware)
    model_dir = config.model_dir  # tf.io.gfile paths: local or gs://
    config_path = os.path.join(model_dir, "search_config.json")
    saved_config = _read_state(config_path, "search config")
    record = _read_state(os.path.join(model_dir, RESULT_JSON), "search result")
    if config.entry_name is None and saved_config and saved_config.get("entry_name"):
        config.entry_name = saved_config["entry_name"]  # a resumed search keeps its name
    if num_classes is None:
        from mhmodels.data import dataset_info
        num_classes = dataset_info(config.dataset, config.data_dir).num_classes
    if num_classes < 2:
        raise ValueError(f"--dataset={config.dataset} has {num_classes} class(es); a search "
                         "needs at least 2")

    replicas = strategy.num_replicas_in_sync
    config.num_replicas = replicas
    global_batch = config.batch_size * replicas
    steps = total_steps(config, global_batch)
    config.steps, config.epochs = steps, None
    warmup_steps = int(round(config.warmup_fraction * steps))
    rl_delay_steps = int(round(config.rl_delay_fraction * steps))
    _check_resume_config(saved_config, config_path, config)
    if write_entry and record:
        done = _finished_result(config, record, start_time)
        if done is not None:
            log.debug("%s holds a finished search; its zoo entry is %s", model_dir,
                     done.entry_path)
            return done

    entry_path = None
    if write_entry:
        config.entry_name = config.entry_name or default_entry_name(config.metric)
        entry_path = check_entry_name(config.entry_name, config.zoo_dir)  # before any work
    cost_models = list(cost_models) if cost_models is not None else \
        load_cost_models(config.hardware, space, config.cost_model_dir)
    if len(cost_models) != len(config.hardware):
        raise ValueError(f"{len(cost_models)} cost models for {len(config.hardware)} hardware")
    for hw, cm in zip(config.hardware, cost_models):
        if not cm.normalizer_ms or not float(cm.normalizer_ms) > 0:
            raise ValueError(f"the cost model of {hw} has no normalizer_ms (its data had no "
                             "mobilenet_v1 row): refit it with a mobilenet_v1 measurement")
    normalizers = [float(cm.normalizer_ms) for cm in cost_models]
    tf.io.gfile.makedirs(model_dir)

    with strategy.scope():
        supernet = Supernet(space, num_classes, width=config.supernet_width, seed=config.seed)
        controller = Controller(space.num_choices, learning_rate=config.rl_learning_rate,
                                rl_delay_steps=rl_delay_steps)
        variables = supernet.trainable_weights
        optimizer = distribute.WeightOptimizer(variables, kind=config.optimizer,
                                               momentum=config.momentum,
                                               weight_decay=config.weight_decay)
        step_var = replicated_variable(tf.constant(0, tf.int64), "step", trainable=False)
    checkpoint = tf.train.Checkpoint(supernet=supernet, controller=controller,
                                     optimizer=optimizer, step=step_var)
    chief = distribute.is_chief(strategy)
    # Multi-worker: every worker saves (collective ops), non-chiefs into a scratch directory.
    ckpt_dir = os.path.join(model_dir, "checkpoints") if chief else os.path.join(
        model_dir, "worker_tmp", str(strategy.cluster_resolver.task_id), "checkpoints")
    manager = tf.train.CheckpointManager(checkpoint, ckpt_dir,
                                         max_to_keep=max(1, config.keep_checkpoints))
    history_path = os.path.join(model_dir, "history.json")
    history: dict[str, list[float]] = {"reward": [], "accuracy": [], "f": [], "entropy": []}
    latest = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))  # the chief's
    if latest:
        checkpoint.restore(latest).assert_existing_objects_matched()
        start = int(step_var.numpy())
        saved = _read_state(history_path, "search history")
        if saved is not None:
            history = {k: v[:start] for k, v in saved.items()}
        log.info("resumed from %s at step %d", latest, start)
    else:
        start = 0
    if chief:
        _write(config_path, json.dumps(_json_config(config), indent=2))

    if datasets is None:
        train_ds, valid_ds = default_datasets(config, global_batch, start)
    else:
        train_ds, valid_ds = datasets(global_batch, start)
    train_iter = iter(strategy.experimental_distribute_dataset(train_ds))
    valid_iter = iter(strategy.experimental_distribute_dataset(valid_ds))

    seed = int(config.seed)
    metric, beta, target = config.metric, float(config.beta), float(config.target)

    def replica_step(train_batch, valid_batch):
        ctx = tf.distribute.get_replica_context()
        rid = tf.cast(ctx.replica_id_in_sync_group, tf.int64)
        step = tf.convert_to_tensor(step_var)
        stream = step * replicas + rid
        choices = controller.sample(tf.stack([tf.constant(seed, tf.int64), 2 * stream]))
        if warmup_steps > 0:
            p = tf.maximum(0.0, 1.0 - tf.cast(step, tf.float32) / float(warmup_steps))
        else:
            p = tf.constant(0.0)
        train_choices, all_ops = supernet.warmup(
            choices, p, tf.stack([tf.constant(seed, tf.int64), 2 * stream + 1]))
        images, labels = train_batch
        with tf.GradientTape() as tape:
            logits = supernet(images, train_choices, all_ops)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=tf.cast(labels, tf.int32), logits=logits))
        grads = tape.gradient(loss, variables)
        v_images, v_labels = valid_batch
        v_logits = supernet(v_images, choices)
        accuracy = tf.reduce_mean(tf.cast(tf.equal(
            tf.argmax(v_logits, -1, output_type=tf.int32), tf.cast(v_labels, tf.int32)),
            tf.float32))
        latencies = tf.stack([tf.reshape(tf.cast(cm.predict_tf(choices), tf.float32), [])
                              for cm in cost_models])
        f = reward_lib.latency_metric(latencies, normalizers, metric)
        r = reward_lib.reward(accuracy, latencies, normalizers, metric, beta, target)
        stats = controller.update(choices, r, step)
        optimizer.apply(grads, variables,
                        distribute.cosine_learning_rate(config.learning_rate, step, steps))
        out = {"choices": choices, "reward": r, "accuracy": accuracy, "latencies": latencies,
               "f": tf.cast(f, tf.float32), "loss": loss, "warmup": tf.cast(tf.logical_or(
                   all_ops, tf.reduce_any(tf.not_equal(train_choices, choices))), tf.float32),
               "baseline": stats["baseline"], "mean_reward": stats["mean_reward"],
               "rl_learning_rate": stats["rl_learning_rate"]}
        return {k: tf.expand_dims(v, 0) for k, v in out.items()}  # [1, ...]: gathered below

    # XLA: what a TPU does to every replica step; `--jit_compile` checks it off the TPU.
    replica_fn = tf.function(replica_step, jit_compile=True) if config.jit_compile \
        else replica_step

    def one_step(train_iterator, valid_iterator):
        per_replica = strategy.run(replica_fn, args=(next(train_iterator),
                                                     next(valid_iterator)))
        step_var.assign_add(1)
        # [replicas, ...] of every replica of every worker (multi_worker: an all-gather), so
        # that every worker's history and summaries hold the whole step, the same everywhere.
        out = {k: strategy.gather(v, axis=0) for k, v in per_replica.items()}
        out["entropy"] = controller.entropy()
        return out

    @tf.function
    def train_loop(train_iterator, valid_iterator, n: int):
        """`n` search steps in one call (TPU jobs: one host round trip per loop); every
        step's values stacked to [n, ...]."""
        first = one_step(train_iterator, valid_iterator)
        arrays = {k: tf.TensorArray(v.dtype, size=n, element_shape=v.shape).write(0, v)
                  for k, v in first.items()}
        if n > 1:  # n == 1: no loop in the graph at all
            for i in tf.range(1, n):
                values = one_step(train_iterator, valid_iterator)
                arrays = {k: arrays[k].write(i, values[k]) for k in arrays}
        out = {k: a.stack() for k, a in arrays.items()}
        out["probabilities"] = controller.probabilities()  # after the loop's last step
        return out

    writer = tf.summary.create_file_writer(os.path.join(model_dir, "summaries")) if chief \
        else tf.summary.create_noop_writer()
    stop = steps if config.max_steps is None else min(steps, int(config.max_steps))
    bar = None
    if config.progress and start < stop:
        from tqdm import tqdm
        bar = tqdm(total=stop, initial=start, desc="search", unit="step", dynamic_ncols=True)
    names = [d.name for d in space.decisions]
    t_log = time.time()
    step = start
    last = None

    def crossed(every: int, before: int, after: int) -> bool:
        return after // every > before // every

    while step < stop:
        n = min(int(config.steps_per_loop), stop - step)
        out = train_loop(train_iter, valid_iter, n)
        values = {k: v.numpy() for k, v in out.items()}
        before, step = step, step + n
        for i in range(n):
            last = {k: (v if k == "probabilities" else v[i]) for k, v in values.items()}
            history["reward"].append(float(np.mean(last["reward"])))
            history["accuracy"].append(float(np.mean(last["accuracy"])))
            history["f"].append(float(np.mean(last["f"])))
            history["entropy"].append(float(last["entropy"]))
            if on_step is not None:
                on_step(before + i + 1, last)
        # Summaries, logs and checkpoints at loop boundaries (the last step of the loop).
        if crossed(config.summary_every, before, step) or step == stop:
            _write_summaries(writer, step, last, config.hardware, normalizers, names)
        if bar is not None:
            bar.update(n)
            bar.set_postfix(reward=f"{history['reward'][-1]:.3f}",
                            acc=f"{history['accuracy'][-1]:.2f}",
                            f=f"{history['f'][-1]:.2f}")
        if crossed(config.log_every, before, step) or step == stop:
            k = min(config.log_every, len(history["reward"]))
            rate = (step - max(start, step - config.log_every)) / max(1e-9, time.time() - t_log)
            t_log = time.time()
            log.info("step %d/%d reward %.4f acc %.3f f_%s %.3f entropy %.2f baseline %.4f "
                     "rl_lr %.3g (%.1f steps/s)", step, steps,
                     np.mean(history["reward"][-k:]), np.mean(history["accuracy"][-k:]),
                     metric, np.mean(history["f"][-k:]), history["entropy"][-1],
                     float(np.mean(last["baseline"])), float(np.mean(last["rl_learning_rate"])),
                     rate)
        if crossed(config.checkpoint_every, before, step) or step == steps:
            # History first: a run killed between the two resumes with a history at least as
            # long as its checkpoint (cut to the checkpoint's step), never a shorter one.
            if chief:
                _write(history_path, json.dumps(history))
            manager.save(checkpoint_number=step)
    if bar is not None:
        bar.close()
    writer.flush()

    finished = int(step_var.numpy()) >= steps
    choices = controller.argmax()
    spec = space.decode(choices, name=config.entry_name or "searched",
                        description=_description(config))
    predicted = {hw: float(np.asarray(cm.predict(choices[None, :])).reshape(-1)[0])
                 for hw, cm in zip(config.hardware, cost_models)}
    lat = np.array([predicted[hw] for hw in config.hardware])
    from mhmodels.metrics import f_avg, f_max
    fa, fm = float(f_avg(lat, normalizers)), float(f_max(lat, normalizers))
    result = SearchResult(
        choices=choices, spec=spec, entry_path=None, steps_done=int(step_var.numpy()),
        total_steps=steps, logits=controller.logits_numpy(), predicted_latency_ms=predicted,
        f_avg=fa, f_max=fm, history=history, wall_s=time.time() - start_time,
        finished=finished,
        objects={"supernet": supernet, "controller": controller, "strategy": strategy})
    if write_entry and finished and chief and entry_path is not None:
        provenance = _provenance(config, space, cost_models, normalizers, result, strategy)
        write_entry_atomic(entry_path, spec.to_json(extra={"provenance": provenance}))
        result.entry_path = str(entry_path)
        _write(os.path.join(model_dir, RESULT_JSON), json.dumps(
            {"finished": True, "steps": steps, "entry_name": config.entry_name,
             "entry_path": str(entry_path)}, indent=2))
        if config.keep_checkpoints == 0:  # the entry is out: the run's state is not needed
            tf.io.gfile.rmtree(os.path.join(model_dir, "checkpoints"))
        log.info("wrote zoo entry %s", entry_path)
    return result


def _description(config: SearchConfig) -> str:
    return (f"Searched by `python -m search` (TuNAS-style, metric {config.metric}, beta "
            f"{config.beta}, target {config.target}) for {', '.join(config.hardware)} on "
            f"{config.dataset}.")


def _metadata(plugin: str):
    from tensorflow.core.framework import summary_pb2
    md = summary_pb2.SummaryMetadata()
    md.plugin_data.plugin_name = plugin
    return md


def summary_scalar(name: str, value: float) -> None:
    """tf.summary.scalar without needing the tensorboard package (same on-disk format)."""
    tf.summary.write(name, tf.constant(float(value), tf.float32), metadata=_metadata("scalars"))


def summary_histogram(name: str, values, bins: int = 20) -> None:
    """A TensorBoard histogram ([bins, 3] = left edge, right edge, count), no tensorboard."""
    values = np.asarray(values, np.float64).reshape(-1)
    counts, edges = np.histogram(values, bins=bins)
    data = np.stack([edges[:-1], edges[1:], counts.astype(np.float64)], axis=1)
    tf.summary.write(name, tf.constant(data), metadata=_metadata("histograms"))


def _write_summaries(writer, step, out, hardware, normalizers, names) -> None:
    with writer.as_default(step=step):
        summary_scalar("reward/mean", float(np.mean(out["reward"])))
        summary_scalar("reward/baseline", float(np.mean(out["baseline"])))
        summary_scalar("accuracy/valid_batch", float(np.mean(out["accuracy"])))
        summary_scalar("train/loss", float(np.mean(out["loss"])))
        summary_scalar("train/warmup_fraction_of_replicas", float(np.mean(out["warmup"])))
        summary_scalar("controller/entropy", float(out["entropy"]))
        summary_scalar("controller/rl_learning_rate", float(np.mean(out["rl_learning_rate"])))
        lat = np.asarray(out["latencies"], np.float64)  # [replicas, H]
        for i, hw in enumerate(hardware):
            summary_scalar(f"latency_ms/{hw}", float(lat[:, i].mean()))
        norm = lat / np.asarray(normalizers)
        summary_scalar("metric/f_avg", float(norm.mean(axis=-1).mean()))
        summary_scalar("metric/f_max", float(norm.max(axis=-1).mean()))
        probs = np.asarray(out["probabilities"])
        for i, name in enumerate(names):
            summary_scalar(f"top_probability/{name}", float(probs[i].max()))
        summary_histogram("controller/top_probabilities", probs.max(axis=-1))


def _reward_summary(history: dict[str, list[float]], points: int = 50) -> dict:
    r = np.asarray(history["reward"], np.float64)
    if r.size == 0:
        return {}
    window = max(1, min(100, r.size // 10 or 1))
    idx = np.unique(np.linspace(0, r.size - 1, min(points, r.size)).astype(int))
    return {"steps": int(r.size), "first_mean": float(r[:window].mean()),
            "last_mean": float(r[-window:].mean()), "max": float(r.max()),
            "window": int(window),
            "curve": [[int(i) + 1, round(float(r[i]), 5)] for i in idx],
            "last_accuracy_mean": float(np.mean(history["accuracy"][-window:])),
            "last_f_mean": float(np.mean(history["f"][-window:]))}


def _provenance(config, space, cost_models, normalizers, result, strategy) -> dict:
    flags = _json_config(config)
    for k in ("max_steps", "progress"):
        flags.pop(k, None)
    return {
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tool": "python -m search",
        "flags": flags,
        "strategy": type(strategy).__name__,
        "replicas": strategy.num_replicas_in_sync,
        "space": space.name,
        "choices": [int(c) for c in result.choices],
        "architecture_key": space.encode(space.canonical(result.choices)),
        "hardware": list(config.hardware),
        "cost_models": {hw: {"version": str(getattr(cm, "version", "unknown")),
                             "normalizer_ms": float(c),
                             "source": str(getattr(cm, "source", "<given>"))}
                        for hw, cm, c in zip(config.hardware, cost_models, normalizers)},
        "predicted_latency_ms": result.predicted_latency_ms,
        "predicted_f_avg": result.f_avg,
        "predicted_f_max": result.f_max,
        "final_logits": {d.name: [round(float(x), 6) for x in lg]
                         for d, lg in zip(space.decisions, result.logits)},
        "reward_history": _reward_summary(result.history),
        "final_entropy": result.history["entropy"][-1] if result.history["entropy"] else None,
    }
