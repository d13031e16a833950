"""Train / evaluate a zoo model with the paper's recipe: `python -m mhmodels.train` (absl flags).

    python -m mhmodels.train --model=multi_max --width=0.35 --dataset=digits --epochs=10 \
        --batch_size=64 --model_dir=runs/mm035
    python -m mhmodels train --model=multi_max --width=0.35 --mode=eval --model_dir=runs/mm035
    python -m mhmodels.train --model=multi_max --width=0.35 --qat \
        --init_weights=runs/mm035/final.weights.h5 --epochs=2 --model_dir=runs/mm035_qat

From Python the same thing is `train(TrainConfig(...))` / `evaluate(TrainConfig(...))`.

The recipe (paper section 7, the MobileNetV3 / TuNAS ImageNet recipe), as defaults:

* RMSProp, decay (rho) 0.9, momentum 0.9, epsilon 1.0. Keras' RMSprop puts epsilon inside the
  square root like TF1's RMSPropOptimizer; unlike TF1 its mean-square accumulator starts at 0
  (TF1: 1), which only matters for the first few steps.
* learning rate 0.165 x global_batch / 256, linear warm-up over the first 2.5% of the steps,
  then cosine decay to 0 at the last step.
* label smoothing 0.1.
* weight decay 4e-5 as an L2 penalty in the loss: `weight_decay * sum(tf.nn.l2_loss(k))` over
  the conv / depthwise / dense kernels (not biases, not batch norm), as the TF reference
  implementations (MnasNet / TuNAS / slim MobileNets) do. Keras 3's optimizer `weight_decay`
  is *decoupled* (AdamW-style, scaled by the learning rate, outside RMSProp's normalisation);
  the paper's 4e-5 is an L2 coefficient, so the coupled form is what reproduces it.
* dropout 0.2 before the classifier (the zoo's default; `--dropout`).

The loop is a custom one (`tf.function` + `strategy.run`), the same for every strategy
(default | mirrored | multi_worker | tpu) and for both front-ends (Keras 3 float models and
the tf_keras fake-quant twin that `--qat` trains). Exact resume: a `tf.train.Checkpoint` of the
model, the optimizer (slots and iteration count), the global step, dropout's RNG state and
the *input iterator* (its shuffle / prefetch buffers and position; with multi_worker / tpu,
whose distributed iterators cannot be checkpointed, the seeded pipeline is rebuilt and the
consumed batches skipped) is written every `--checkpoint_every` steps and when the run stops,
is interrupted (SIGINT / SIGTERM: the current step finishes first) or `--stop_at_step` is
reached; starting again with the same `--model_dir` continues
from it and produces the same weights and losses as an uninterrupted run. The input seed is
recorded in `<model_dir>/run.json` so a resumed run reuses it.

Files in `--model_dir`: `checkpoints/` (resume), `train/` and `eval/` (TensorBoard),
`run.json` (the configuration), `final.weights.h5` (Keras 3 weights: load them with
`mhmodels.build(name, width, input_shape=..., num_classes=..., weights=path)`) beside
`final.json` (name, width, num_classes, image_size, dataset, accuracies), for `--qat` also
`final_qat.h5` (the tf_keras fake-quant twin with its learned ranges), and
`eval_<split>.json` from evaluations.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import logging as _logging

from absl import app, flags

# The command's own progress lines: shown at INFO while TensorFlow's INFO pages are not
# (mhmodels.cli keeps the `mhmodels` and `search` loggers at INFO).
logging = _logging.getLogger("mhmodels.train")

from mhmodels.distribute import STRATEGIES, configure_cpu_devices, is_chief, make_strategy
from mhmodels.locking import check_unlocked, is_chief_task, run_lock

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__all__ = [
    "TrainConfig", "TrainResult", "train", "evaluate", "main", "define_flags", "make_strategy",
    "configure_cpu_devices", "warmup_cosine", "peak_learning_rate", "STRATEGIES", "MODES",
]

MODES = ("train", "eval", "train_and_eval")
BASE_LEARNING_RATE = 0.165  # per 256 images
BASE_BATCH = 256
FINAL_WEIGHTS = "final.weights.h5"
FINAL_QAT_WEIGHTS = "final_qat.h5"
FINAL_JSON = "final.json"
RUN_JSON = "run.json"
# Fields of run.json that must agree when a run is resumed (the checkpoint depends on them).
RESUME_KEYS = ("model", "width", "dataset", "image_size", "batch_size", "total_steps", "qat",
               "num_classes", "dropout", "sync_batch_norm")
# What runs recorded before a key existed used.
RESUME_DEFAULTS = {"sync_batch_norm": False}


@dataclasses.dataclass
class TrainConfig:
    """Everything a training / evaluation run needs (the flags, as a Python object)."""

    model: str = "multi_max"
    width: float = 1.0
    dataset: str = "digits"
    data_dir: str | None = None
    image_size: int | None = None  # None: 32 for digits, else 224
    batch_size: int = 256  # global batch
    epochs: float = 30.0
    steps: int | None = None  # overrides epochs
    learning_rate: float | None = None  # peak; None: 0.165 * batch_size / 256
    warmup_fraction: float = 0.025
    label_smoothing: float = 0.1
    weight_decay: float = 4e-5
    rmsprop_decay: float = 0.9
    momentum: float = 0.9
    epsilon: float = 1.0
    dropout: float = 0.2
    model_dir: str | None = None
    strategy: str = "default"
    tpu: str | None = None
    num_cpu_devices: int | None = None
    qat: bool = False
    init_weights: str | None = None
    mode: str = "train_and_eval"
    seed: int | None = None
    checkpoint_every: int | None = None  # None: once per epoch
    stop_at_step: int | None = None  # stop (checkpointed) after this global step
    eval_split: str | None = None  # None: validation (test if the dataset has none)
    eval_every_epoch: bool = True
    log_every: int = 10
    progress: bool | None = None  # None: a bar when stderr is a terminal
    keep_checkpoints: int = 3
    jit_compile: bool = False  # compile the replica step with XLA (a TPU always does)
    sync_batch_norm: bool = False  # batch-norm statistics over the global batch (all replicas)

    def resolved_image_size(self) -> int:
        if self.image_size is not None:
            return int(self.image_size)
        return 32 if self.dataset == "digits" else 224


@dataclasses.dataclass
class TrainResult:
    """What `train` / `evaluate` return."""

    model: Any  # the trained Keras model (the tf_keras QAT twin with qat=True)
    step: int  # global step reached
    total_steps: int
    steps_per_epoch: int
    losses: list  # (step, cross-entropy loss) of every step run in this call
    learning_rates: list  # (step, learning rate) of every step run in this call
    metrics: dict  # last evaluation: top1, top5 (more than 5 classes only), loss, count, split
    seconds: float
    resumed_from: int  # 0 for a fresh start
    weights_path: str | None = None


# --------------------------------------------------------------------------------------------
# Recipe pieces


def peak_learning_rate(batch_size: int, base: float = BASE_LEARNING_RATE) -> float:
    """The paper's 0.165 per 256 images, scaled linearly with the global batch."""
    return base * batch_size / BASE_BATCH


def warmup_steps_for(total_steps: int, warmup_fraction: float) -> int:
    return int(round(warmup_fraction * total_steps))


def warmup_cosine(step, peak: float, total_steps: int, warmup_steps: int):
    """Linear warm-up from 0 to `peak` over `warmup_steps`, then cosine to 0 at `total_steps`.

    `step` may be a Python number (returns a float) or a tensor (returns a float32 tensor).
    The learning rate used for the update of step s (0-based) is warmup_cosine(s): the first
    step of a warm-up already moves (peak / warmup_steps), the last one is tiny, never 0.
    """
    if not hasattr(step, "dtype"):
        s = float(step) + 1.0
        if warmup_steps > 0 and s <= warmup_steps:
            return peak * s / warmup_steps
        decay = max(total_steps - warmup_steps, 1)
        progress = min(max((s - warmup_steps) / decay, 0.0), 1.0)
        return 0.5 * peak * (1.0 + math.cos(math.pi * progress))
    import tensorflow as tf

    s = tf.cast(step, tf.float32) + 1.0
    warm = peak * s / max(warmup_steps, 1)
    decay = float(max(total_steps - warmup_steps, 1))
    progress = tf.clip_by_value((s - warmup_steps) / decay, 0.0, 1.0)
    cosine = 0.5 * peak * (1.0 + tf.cos(math.pi * progress))
    if warmup_steps <= 0:
        return cosine
    return tf.where(s <= warmup_steps, warm, cosine)


def _schedule(k, peak: float, total_steps: int, warmup_steps: int):
    """`warmup_cosine` as a LearningRateSchedule of the Keras module `k` (keras or tf_keras)."""

    class WarmupCosine(k.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            return warmup_cosine(step, peak, total_steps, warmup_steps)

        def get_config(self):
            return {"peak": peak, "total_steps": total_steps, "warmup_steps": warmup_steps}

    return WarmupCosine()


_KERNEL_RE = re.compile(r"(^|/)(depthwise_)?kernel(:\d+)?$")


def decayed_variables(model) -> list:
    """The conv / depthwise / dense kernels (what weight decay applies to)."""
    out = []
    for v in model.trainable_variables:
        name = getattr(v, "path", None) or v.name
        if _KERNEL_RE.search(name):
            out.append(v)
    return out


# --------------------------------------------------------------------------------------------
# Devices and strategies


# The strategies are mhmodels.distribute's (shared with the search).


# --------------------------------------------------------------------------------------------
# Model, data, optimizer


def _spec_of(model: str):
    """A zoo name, or a path to a zoo entry JSON file."""
    from mhmodels import registry

    if model.endswith(".json") or os.sep in model:
        path = Path(model).expanduser()
        if not path.is_file():
            raise ValueError(f"--model={model!r}: no such zoo entry file")
        return registry.read_entry(path).spec
    return registry.get_spec(model)


def _check_config(cfg: TrainConfig) -> None:
    if cfg.mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {cfg.mode!r}")
    if cfg.strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {cfg.strategy!r}")
    if cfg.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {cfg.batch_size}")
    if cfg.steps is not None and cfg.steps < 1:
        raise ValueError(f"steps must be >= 1, got {cfg.steps}")
    if cfg.steps is None and not cfg.epochs > 0:
        raise ValueError(f"epochs must be > 0, got {cfg.epochs}")
    if not 0 <= cfg.warmup_fraction < 1:
        raise ValueError(f"warmup_fraction must be in [0, 1), got {cfg.warmup_fraction}")
    if not 0 <= cfg.label_smoothing < 1:
        raise ValueError(f"label_smoothing must be in [0, 1), got {cfg.label_smoothing}")
    if cfg.weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {cfg.weight_decay}")
    if cfg.model_dir and "://" in cfg.model_dir:
        raise ValueError(f"--model_dir={cfg.model_dir}: training writes a local directory "
                         "(checkpoints, TensorBoard logs, final weights); give a local or "
                         "mounted path (gs:// is for the search's --model_dir)")
    if cfg.mode != "eval" and not cfg.model_dir:
        raise ValueError("training needs --model_dir (checkpoints, logs and weights go there)")
    if cfg.mode == "eval" and not cfg.model_dir and not cfg.init_weights:
        raise ValueError("--mode=eval needs the weights to evaluate: --model_dir of a training "
                         "run or --init_weights (a .weights.h5 path, a URL, 'imagenet' or a "
                         "Model Garden <prefix>.index); "
                         "evaluating random initial weights says nothing")
    if cfg.keep_checkpoints < 1:
        raise ValueError(f"keep_checkpoints must be >= 1, got {cfg.keep_checkpoints}")
    if cfg.sync_batch_norm and cfg.qat:
        raise ValueError("--sync_batch_norm is for float training; the QAT twin's batch norms "
                         "(inside tfmot's wrappers) keep per-replica statistics")


PUBLISHED_DATASETS = ("imagenet",)


def _publisher_network(weights: str | None) -> bool:
    """Whether `weights` needs its publisher's exact network (`pretrained.build_pretrained`):
    a published dataset name, or the `.index` of a TF (Model Garden) checkpoint, which no
    manifest lists (none is published as a download) and which Keras cannot load as is."""
    return weights in PUBLISHED_DATASETS or str(weights or "").endswith(".index")


def _build(cfg: TrainConfig, spec, num_classes: int, image_size: int,
           network_of: str | None = None):
    """The Keras 3 float model (init weights loaded) and, with qat, its fake-quant twin.

    network_of: a published checkpoint (`_publisher_network`) whose exact network
    (input normalisation included) a run was fine-tuned as; `cfg.init_weights` then replaces
    its weights.
    """
    import mhmodels

    shape = (image_size, image_size, 3)
    if _publisher_network(network_of) and not _publisher_network(cfg.init_weights):
        from mhmodels import pretrained
        from mhmodels.loading import load_weights

        model = pretrained.build_pretrained(spec, cfg.width, network_of, input_shape=shape,
                                            num_classes=num_classes, dropout=cfg.dropout,
                                            skip_mismatched_head=True)
        if cfg.init_weights:
            load_weights(model, cfg.init_weights)
    elif _publisher_network(cfg.init_weights):
        # A published checkpoint (keras.applications, Model Garden): the publisher's exact
        # network (input normalisation included) with its weights converted onto our layers;
        # its classifier is replaced when fine-tuning on another class count.
        from mhmodels import pretrained
        model = pretrained.build_pretrained(spec, cfg.width, cfg.init_weights, input_shape=shape,
                                            num_classes=num_classes, dropout=cfg.dropout,
                                            skip_mismatched_head=cfg.mode != "eval")
    else:
        model = mhmodels.build(spec, cfg.width, input_shape=shape, num_classes=num_classes,
                               dropout=cfg.dropout)
    if cfg.init_weights and network_of is None and not _publisher_network(cfg.init_weights):
        from mhmodels import weights as weights_lib

        from mhmodels.loading import WeightsMismatchError, load_weights

        path = weights_lib.resolve_weights(spec.name, cfg.width, cfg.init_weights)
        try:
            load_weights(model, path)
        except WeightsMismatchError as err:
            # Another head (an ImageNet 1001-class checkpoint fine-tuned here) keeps the body;
            # another width or architecture would load nothing: that is an error.
            if cfg.mode == "eval" or not err.head_only:
                raise
            logging.warning("%s; training a new classifier on the checkpoint's body", err)
            model.load_weights(str(path), skip_mismatch=True)
    if not cfg.qat:
        return model, model
    from mhmodels.qat import quantize

    return model, quantize(model)


def _rng_states(model) -> list:
    """Random-generator state variables of the model (Keras 3 dropout's SeedGenerator).

    `tf.train.Checkpoint(model=...)` does not reach them, yet an exact resume needs them: the
    dropout masks after a restart must be the ones an uninterrupted run would have drawn.
    """
    return [v for v in getattr(model, "variables", [])
            if (getattr(v, "path", None) or v.name).rsplit("/", 1)[-1].startswith(
                "seed_generator_state")]


def synchronize_batch_norm(model) -> int:
    """Make every Keras 3 batch norm of `model` (nested models too) compute its statistics
    over all replicas in sync; returns how many. Keras reads the flag at each call."""
    import keras
    count = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True
            count += 1
    if not count:
        raise ValueError(f"{model.name} has no Keras 3 BatchNormalization to synchronize")
    return count


def _make_optimizer(k, cfg: TrainConfig, peak: float, total_steps: int):
    schedule = _schedule(k, peak, total_steps, warmup_steps_for(total_steps,
                                                                cfg.warmup_fraction))
    return k.optimizers.RMSprop(learning_rate=schedule, rho=cfg.rmsprop_decay,
                                momentum=cfg.momentum, epsilon=cfg.epsilon)


def _keras_module_of(model):
    from mhmodels.builder import frontend_of, keras_module

    return keras_module(frontend_of(model))


def _eval_split(cfg: TrainConfig, info) -> str:
    if cfg.eval_split:
        return cfg.eval_split
    for split in ("validation", "test"):
        if split in info.num_examples:
            return split
    raise ValueError(f"dataset {cfg.dataset!r} has no validation or test split; pass "
                     "--eval_split")


# --------------------------------------------------------------------------------------------
# Steps


def _cross_entropy(tf, labels, logits, num_classes: int, label_smoothing: float):
    onehot = tf.one_hot(labels, num_classes, dtype=tf.float32)
    if label_smoothing:
        onehot = onehot * (1.0 - label_smoothing) + label_smoothing / num_classes
    return tf.nn.softmax_cross_entropy_with_logits(onehot, tf.cast(logits, tf.float32))


def _make_train_step(tf, strategy, model, optimizer, cfg: TrainConfig, num_classes: int,
                     global_batch: int, host_iterator: bool = True):
    """A `tf.function` running one training step on the next batch of `iterator`.

    host_iterator=True: `iterator` is a plain (checkpointable) `iter(dataset)` of global
    batches and each replica takes its slice of the batch (single-worker strategies);
    False: `iterator` comes from `strategy.experimental_distribute_dataset` (multi-worker,
    TPU).
    """
    decayed = decayed_variables(model)
    replicas = strategy.num_replicas_in_sync
    trainable = model.trainable_variables
    if host_iterator and global_batch % replicas:
        raise ValueError(f"batch_size {global_batch} is not divisible by the {replicas} "
                         "replicas")
    per_replica = global_batch // replicas

    def replica_step(images, labels):
        if host_iterator and replicas > 1:
            index = tf.distribute.get_replica_context().replica_id_in_sync_group
            images = images[index * per_replica:(index + 1) * per_replica]
            labels = labels[index * per_replica:(index + 1) * per_replica]
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            per_example = _cross_entropy(tf, labels, logits, num_classes, cfg.label_smoothing)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
            total = loss
            if cfg.weight_decay and decayed:
                l2 = tf.add_n([tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in decayed])
                total = loss + cfg.weight_decay * l2 / replicas
        grads = tape.gradient(total, trainable)
        optimizer.apply_gradients(zip(grads, trainable))
        correct = tf.reduce_sum(tf.cast(tf.equal(
            tf.argmax(logits, axis=-1, output_type=tf.int32), labels), tf.float32))
        return loss, correct

    # XLA: what a TPU does to the replica step; `--jit_compile` checks it (or speeds up a GPU).
    replica_fn = tf.function(replica_step, jit_compile=True) if cfg.jit_compile \
        else replica_step

    @tf.function
    def train_step(iterator):
        images, labels = next(iterator)
        loss, correct = strategy.run(replica_fn, args=(images, labels))
        return (strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None),
                strategy.reduce(tf.distribute.ReduceOp.SUM, correct, axis=None))

    return train_step


def _make_eval_step(tf, strategy, model, num_classes: int):
    k = min(5, num_classes)

    def replica_step(images, labels):
        logits = tf.cast(model(images, training=False), tf.float32)
        per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
        top1 = tf.reduce_sum(tf.cast(tf.math.in_top_k(labels, logits, 1), tf.float32))
        top5 = tf.reduce_sum(tf.cast(tf.math.in_top_k(labels, logits, k), tf.float32))
        count = tf.cast(tf.shape(labels)[0], tf.float32)
        return tf.stack([tf.reduce_sum(per_example), top1, top5, count])

    @tf.function(reduce_retracing=True)
    def eval_step(batch):
        images, labels = batch
        sums = strategy.run(replica_step, args=(images, labels))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, sums, axis=None)

    return eval_step


TOP_K = 5  # top-k is reported only where it says something: more than k classes


def format_metrics(metrics: dict) -> str:
    """'top-1 0.9120  top-5 0.9910  loss 0.3012' (top-5 only when it was measured)."""
    top_k = f"  top-{TOP_K} {metrics['top5']:.4f}" if "top5" in metrics else ""
    return f"top-1 {metrics['top1']:.4f}{top_k}  loss {metrics['loss']:.4f}"


def _run_eval(strategy, eval_step, dataset, split: str, num_classes: int) -> dict:
    """Sums the eval step over `dataset`; top-5 is left out with TOP_K classes or fewer (it
    would be 1.0 by construction)."""
    totals = None
    for batch in strategy.experimental_distribute_dataset(dataset):
        sums = eval_step(batch).numpy()
        totals = sums if totals is None else totals + sums
    if totals is None or totals[3] == 0:
        raise ValueError(f"evaluation split {split!r} is empty")
    loss, top1, top5, count = (float(x) for x in totals)
    metrics = {"split": split, "top1": top1 / count, "top5": top5 / count, "loss": loss / count,
               "count": int(count)}
    if num_classes <= TOP_K:
        del metrics["top5"]
    return metrics


# --------------------------------------------------------------------------------------------
# Files


def _scalar(tf, name: str, value: float) -> None:
    """A TensorBoard scalar (inside `writer.as_default(step=...)`), without needing the
    tensorboard package: the same event TensorBoard's `tf.summary.scalar` writes."""
    from tensorflow.core.framework import summary_pb2

    metadata = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
        data_class=summary_pb2.DATA_CLASS_SCALAR)
    tf.summary.write(name, tf.constant(float(value), tf.float32),
                     metadata=metadata.SerializeToString())


def _write_json(path: Path, data: dict) -> None:
    from mhmodels.files import atomic_write

    atomic_write(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def _run_record(cfg: TrainConfig, **extra) -> dict:
    record = dataclasses.asdict(cfg)
    record.update(extra)
    return record


def _task_id(strategy) -> int:
    resolver = getattr(strategy, "cluster_resolver", None)
    return int(getattr(resolver, "task_id", 0) or 0)


def _prepare_run_dir(cfg: TrainConfig, model_dir: Path, record: dict,
                     write: bool = True) -> dict:
    """Write run.json, or check a resumed run against it; returns the record in force."""
    path = model_dir / RUN_JSON
    if path.exists() and (model_dir / "checkpoints").is_dir() and any(
            (model_dir / "checkpoints").iterdir()):
        old = json.loads(path.read_text())
        diff = {k: (old.get(k, RESUME_DEFAULTS.get(k)), record.get(k)) for k in RESUME_KEYS
                if old.get(k, RESUME_DEFAULTS.get(k)) != record.get(k)}
        if diff:
            changes = ", ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in diff.items())
            raise ValueError(f"{model_dir} holds a run with different settings ({changes})"
                             "; use another --model_dir or the same flags to resume it")
        if cfg.seed is None:
            record["seed"] = old["seed"]
        elif old.get("seed") != cfg.seed:
            raise ValueError(f"{model_dir} was started with --seed={old.get('seed')}; resuming "
                             f"with --seed={cfg.seed} would not be exact")
    if write:
        model_dir.mkdir(parents=True, exist_ok=True)
        _write_json(path, record)
    return record


def _float_weights_from(qat, float_model) -> None:
    """Copy the float weights inside a tf_keras QAT twin back into the Keras 3 model.

    A QuantizeWrapper holds its layer's variables under the layer's own name (`stem/kernel:0`,
    in the layer's order) beside the quantizer state (`quant_stem/kernel_min:0`, ...).
    """
    owned: dict[str, list] = {}
    for layer in qat.layers:
        for w in layer.weights:
            owned.setdefault(w.name.split("/", 1)[0], []).append(w)
    for layer in float_model.layers:
        if not layer.weights:
            continue
        source = owned.get(layer.name, [])
        shapes = [tuple(w.shape) for w in layer.weights]
        if [tuple(w.shape) for w in source] != shapes:
            raise ValueError(f"QAT twin's variables of layer {layer.name!r} "
                             f"({[w.name for w in source]}) do not match {shapes}")
        layer.set_weights([w.numpy() for w in source])


def save_final(cfg: TrainConfig, model_dir: Path, float_model, trained, spec, num_classes: int,
               image_size: int, metrics: dict, step: int) -> Path:
    """final.weights.h5 (Keras 3, loadable by mhmodels.build) + final.json (+ final_qat.h5)."""
    if cfg.qat:
        _float_weights_from(trained, float_model)
        trained.save_weights(str(model_dir / FINAL_QAT_WEIGHTS))
    path = model_dir / FINAL_WEIGHTS
    float_model.save_weights(str(path))
    info = {"name": spec.name, "model": cfg.model, "width": cfg.width, "num_classes": num_classes,
            "image_size": image_size, "input_shape": [image_size, image_size, 3],
            "dataset": cfg.dataset, "dropout": cfg.dropout, "qat": cfg.qat, "step": step,
            "weights": FINAL_WEIGHTS}
    if cfg.qat:
        info["qat_weights"] = FINAL_QAT_WEIGHTS
    if metrics:
        info.update({"eval_split": metrics["split"], "top1": metrics["top1"],
                     "eval_loss": metrics["loss"]})
        if "top5" in metrics:
            info["top5"] = metrics["top5"]
    _write_json(model_dir / FINAL_JSON, info)
    return path


# --------------------------------------------------------------------------------------------
# Entry points


def _setup(cfg: TrainConfig):
    _check_config(cfg)
    configure_cpu_devices(cfg.num_cpu_devices)
    import tensorflow as tf
    from mhmodels import data

    strategy = make_strategy(cfg.strategy, cfg.tpu)
    info = data.dataset_info(cfg.dataset, cfg.data_dir)
    if info.num_classes < 2:
        raise ValueError(f"--dataset={cfg.dataset} has {info.num_classes} class(es): a "
                         "classifier needs at least 2 (one subfolder of images per class)")
    spec = _spec_of(cfg.model)
    return tf, data, strategy, info, spec


def _show_progress(cfg: TrainConfig) -> bool:
    if cfg.progress is not None:
        return cfg.progress
    return sys.stderr.isatty()


@dataclasses.dataclass(frozen=True)
class _Plan:
    """The numbers of a run, fixed (and recorded in run.json) before any model exists."""

    image_size: int
    num_classes: int
    global_batch: int
    steps_per_epoch: int
    total_steps: int
    peak_learning_rate: float
    warmup_steps: int
    seed: int
    checkpoint_every: int
    stop_at: int
    eval_split: str | None  # None: no evaluation during training


@dataclasses.dataclass
class _Session:
    """What the training loop works on: models, optimizer, checkpointing, the input."""

    float_model: Any
    model: Any
    step_var: Any
    manager: Any
    iterator: Any
    train_step: Any
    resumed_from: int


def _plan_run(cfg: TrainConfig, info, strategy, spec, model_dir: Path, chief: bool) -> _Plan:
    """Steps, schedule and seed of the run; a resumed run must agree with its run.json."""
    global_batch = cfg.batch_size
    num_train = info.num_examples["train"]
    steps_per_epoch = num_train // global_batch
    if steps_per_epoch < 1:
        raise ValueError(f"batch_size {global_batch} is larger than the train split "
                         f"({num_train} examples)")
    total_steps = cfg.steps or max(1, int(round(cfg.epochs * steps_per_epoch)))
    peak = cfg.learning_rate if cfg.learning_rate is not None else peak_learning_rate(
        global_batch)
    if cfg.seed is None and cfg.strategy == "multi_worker" and not (model_dir / RUN_JSON).exists():
        raise ValueError("--strategy=multi_worker needs --seed (every worker must shuffle and "
                         "augment alike)")
    seed = cfg.seed if cfg.seed is not None else random.SystemRandom().randrange(2**31)
    image_size = cfg.resolved_image_size()
    record = _prepare_run_dir(cfg, model_dir, write=chief, record=_run_record(
        cfg, seed=seed, total_steps=total_steps, steps_per_epoch=steps_per_epoch,
        num_classes=info.num_classes, image_size=image_size, peak_learning_rate=peak,
        warmup_steps=warmup_steps_for(total_steps, cfg.warmup_fraction),
        num_replicas=strategy.num_replicas_in_sync, spec_name=spec.name))
    return _Plan(image_size=image_size, num_classes=info.num_classes, global_batch=global_batch,
                 steps_per_epoch=steps_per_epoch, total_steps=total_steps,
                 peak_learning_rate=peak, warmup_steps=record["warmup_steps"],
                 seed=int(record["seed"]),
                 checkpoint_every=cfg.checkpoint_every or steps_per_epoch,
                 stop_at=min(cfg.stop_at_step or total_steps, total_steps),
                 eval_split=_eval_split(cfg, info) if cfg.mode == "train_and_eval" else None)


def _datasets(cfg: TrainConfig, data, plan: _Plan):
    """(train dataset, eval dataset or None), batched by the global batch."""
    train_ds = data.make_dataset(cfg.dataset, "train", image_size=plan.image_size,
                                 batch_size=plan.global_batch, training=True,
                                 data_dir=cfg.data_dir, seed=plan.seed)
    eval_ds = None
    if plan.eval_split is not None:
        eval_ds = data.make_dataset(cfg.dataset, plan.eval_split, image_size=plan.image_size,
                                    batch_size=plan.global_batch, training=False,
                                    data_dir=cfg.data_dir)
    return train_ds, eval_ds


def _start_session(tf, cfg: TrainConfig, strategy, spec, plan: _Plan, train_ds,
                   model_dir: Path, chief: bool) -> _Session:
    """Build the model and optimizer under the strategy, restore the latest checkpoint (a
    resumed run), and position the input where the run stopped."""
    with strategy.scope():
        float_model, model = _build(cfg, spec, plan.num_classes, plan.image_size)
        if cfg.sync_batch_norm:
            synchronize_batch_norm(model)
        k = _keras_module_of(model)
        optimizer = _make_optimizer(k, cfg, plan.peak_learning_rate, plan.total_steps)
        optimizer.build(model.trainable_variables)
        step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
    # Single-worker strategies read a plain iterator, which the checkpoint saves (position,
    # shuffle and prefetch buffers): exact and free. Distributed iterators (multi-worker, TPU)
    # cannot be checkpointed: there the seeded, deterministic pipeline is rebuilt and the
    # consumed batches are skipped (exact too, but the skipped batches are read again).
    host_iterator = cfg.strategy in ("default", "mirrored")
    iterator = iter(train_ds) if host_iterator else None
    state = dict(model=model, optimizer=optimizer, step=step_var, rng=_rng_states(model))
    if host_iterator:
        state["iterator"] = iterator
    checkpoint = tf.train.Checkpoint(**state)
    # Multi-worker: every worker saves (the save is collective), only the chief into
    # checkpoints/; every worker restores from the chief's.
    checkpoint_dir = model_dir / "checkpoints"
    save_dir = checkpoint_dir if chief else model_dir / f"tmp_worker_{_task_id(strategy)}"
    manager = tf.train.CheckpointManager(checkpoint, str(save_dir),
                                         max_to_keep=cfg.keep_checkpoints)
    resumed_from = 0
    latest = tf.train.latest_checkpoint(str(checkpoint_dir))
    if latest:
        checkpoint.restore(latest).assert_existing_objects_matched()
        resumed_from = int(step_var.numpy())
        logging.info("resumed from %s at step %d", latest, resumed_from)
    if not host_iterator:
        if resumed_from:
            logging.info("skipping the %d batches consumed before the restart", resumed_from)
        iterator = iter(strategy.experimental_distribute_dataset(train_ds.skip(resumed_from)))
    if not resumed_from and cfg.init_weights:
        logging.info("starting from %s%s", cfg.init_weights, " (QAT)" if cfg.qat else "")
    train_step = _make_train_step(tf, strategy, model, optimizer, cfg, plan.num_classes,
                                  plan.global_batch, host_iterator)
    return _Session(float_model, model, step_var, manager, iterator, train_step, resumed_from)


class _TrainLog:
    """Training scalars over a window of `log_every` steps: TensorBoard, and a log line
    when no progress bar shows them."""

    def __init__(self, tf, writer, plan: _Plan, bar):
        self.tf, self.writer, self.plan, self.bar = tf, writer, plan, bar
        self._reset()

    def _reset(self) -> None:
        self.loss, self.correct, self.steps, self.start = 0.0, 0.0, 0, time.time()

    def add(self, loss: float, correct: float, lr: float) -> None:
        self.loss += loss
        self.correct += correct
        self.steps += 1
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.4f}", refresh=False)

    def write(self, step: int, lr: float) -> None:
        images = self.steps * self.plan.global_batch
        rate = images / max(time.time() - self.start, 1e-9)
        loss, top1 = self.loss / self.steps, self.correct / images
        with self.writer.as_default(step=step):
            _scalar(self.tf, "loss", loss)
            _scalar(self.tf, "top1", top1)
            _scalar(self.tf, "learning_rate", lr)
            _scalar(self.tf, "images_per_second", rate)
        if self.bar is None:
            logging.info("step %d/%d epoch %.2f loss %.4f train top-1 %.3f lr %.5f %.1f img/s",
                         step, self.plan.total_steps, step / self.plan.steps_per_epoch, loss,
                         top1, lr, rate)
        self._reset()


@contextlib.contextmanager
def _stop_on_signal():
    """SIGINT / SIGTERM (Ctrl-C, preemption) only set a flag (the yielded list gets the signal
    number): the loop finishes its step, checkpoints and stops, so that the checkpoint is
    consistent. A second signal stops at once. Handlers are restored on exit."""
    requested: list[int] = []
    previous = {}

    def on_signal(signum, frame):
        if requested:
            raise KeyboardInterrupt
        requested.append(signum)

    for signum in (signal.SIGINT, getattr(signal, "SIGTERM", None)):
        if signum is None:
            continue
        try:
            previous[signum] = signal.signal(signum, on_signal)
        except ValueError:  # not the main thread: leave signals alone
            break
    try:
        yield requested
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _run_steps(cfg: TrainConfig, plan: _Plan, session: _Session, log: _TrainLog,
               evaluate_now) -> tuple[int, list, list, dict, bool]:
    """The training loop from the resumed step: (step reached, losses, learning rates, last
    metrics, whether a signal stopped it)."""
    losses: list = []
    lrs: list = []
    metrics: dict = {}
    step = session.resumed_from
    with _stop_on_signal() as stop_requested:
        while step < plan.stop_at:
            if stop_requested:
                logging.warning("stopping at step %d (signal %d): checkpointing so that the "
                                "run can resume", step, stop_requested[0])
                return step, losses, lrs, metrics, True
            lr = warmup_cosine(step, plan.peak_learning_rate, plan.total_steps,
                               plan.warmup_steps)
            loss, correct = session.train_step(session.iterator)
            session.step_var.assign_add(1)
            loss = float(loss.numpy())
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss is {loss} at step {step}; lower "
                                         "--learning_rate")
            losses.append((step, loss))
            lrs.append((step, lr))
            step += 1
            log.add(loss, float(correct.numpy()), lr)
            if step % cfg.log_every == 0 or step == plan.stop_at:
                log.write(step, lr)
            if step % plan.checkpoint_every == 0 and step < plan.stop_at:
                session.manager.save(checkpoint_number=step)
            if (plan.eval_split is not None and cfg.eval_every_epoch
                    and step % plan.steps_per_epoch == 0 and step < plan.total_steps):
                metrics = evaluate_now(step)
    return step, losses, lrs, metrics, False


def train(cfg: TrainConfig) -> TrainResult:
    """Train (and, with mode='train_and_eval', evaluate each epoch); resumes from model_dir.

    Holds model_dir's single-writer lock (the chief only): a second training there refuses.
    """
    _check_config(cfg)  # bad settings: refused before the lock (and anything) is written
    with run_lock(cfg.model_dir, "training", chief=is_chief_task(cfg.strategy),
                  flag="--model_dir"):
        return _train(cfg)


def _train(cfg: TrainConfig) -> TrainResult:
    start_time = time.time()
    tf, data, strategy, info, spec = _setup(cfg)
    import keras

    model_dir = Path(cfg.model_dir)
    chief = is_chief(strategy)
    plan = _plan_run(cfg, info, strategy, spec, model_dir, chief)
    keras.utils.set_random_seed(plan.seed)
    train_ds, eval_ds = _datasets(cfg, data, plan)
    session = _start_session(tf, cfg, strategy, spec, plan, train_ds, model_dir, chief)
    if chief:
        train_writer = tf.summary.create_file_writer(str(model_dir / "train"))
        eval_writer = tf.summary.create_file_writer(str(model_dir / "eval"))
    else:
        train_writer = eval_writer = tf.summary.create_noop_writer()
    eval_step = (_make_eval_step(tf, strategy, session.model, plan.num_classes)
                 if plan.eval_split is not None else None)

    def evaluate_now(step: int) -> dict:
        result = _run_eval(strategy, eval_step, eval_ds, plan.eval_split, plan.num_classes)
        with eval_writer.as_default(step=step):
            for key in ("top1", "top5", "loss"):
                if key in result:
                    _scalar(tf, key, result[key])
        logging.info("step %d (epoch %.2f): %s %s", step, step / plan.steps_per_epoch,
                     plan.eval_split, format_metrics(result))
        return result

    bar = None
    if _show_progress(cfg):
        from tqdm import tqdm

        bar = tqdm(total=plan.total_steps, initial=session.resumed_from, unit="step",
                   dynamic_ncols=True, desc=f"{spec.name} {cfg.width:g}{' qat' if cfg.qat else ''}")
    try:
        step, losses, lrs, metrics, interrupted = _run_steps(
            cfg, plan, session, _TrainLog(tf, train_writer, plan, bar), evaluate_now)
    finally:
        if bar is not None:
            bar.close()
    manager = session.manager
    if manager.latest_checkpoint is None or int(
            manager.latest_checkpoint.rsplit("-", 1)[-1]) != step:
        manager.save(checkpoint_number=step)
    train_writer.flush()
    result = TrainResult(model=session.model, step=step, total_steps=plan.total_steps,
                         steps_per_epoch=plan.steps_per_epoch, losses=losses,
                         learning_rates=lrs, metrics=metrics, seconds=0.0,
                         resumed_from=session.resumed_from)
    if step >= plan.total_steps and not interrupted:
        result = _finish(cfg, plan, session, spec, model_dir, chief, result, evaluate_now)
    eval_writer.flush()
    return dataclasses.replace(result, seconds=time.time() - start_time)


def _finish(cfg: TrainConfig, plan: _Plan, session: _Session, spec, model_dir: Path,
            chief: bool, result: TrainResult, evaluate_now) -> TrainResult:
    """The end of a completed run: the last evaluation, then (chief) the final weights and
    eval_<split>.json."""
    metrics = evaluate_now(result.step) if plan.eval_split is not None else result.metrics
    if not chief:
        return dataclasses.replace(result, metrics=metrics)
    weights_path = str(save_final(cfg, model_dir, session.float_model, session.model, spec,
                                  plan.num_classes, plan.image_size, metrics, result.step))
    if metrics:
        _write_json(model_dir / f"eval_{metrics['split']}.json",
                    _eval_record(cfg, spec, metrics, result.step))
    logging.info("done: %d steps; weights in %s", result.step, weights_path)
    return dataclasses.replace(result, metrics=metrics, weights_path=weights_path)


def _eval_record(cfg: TrainConfig, spec, metrics: dict, step: int | None) -> dict:
    return {"model": cfg.model, "name": spec.name, "width": cfg.width, "dataset": cfg.dataset,
            "qat": cfg.qat, "step": step, **metrics}


def evaluate(cfg: TrainConfig) -> TrainResult:
    """Top-1 / top-5 of a model on `eval_split`.

    The weights come from `init_weights` if given, else from `model_dir`: the latest
    checkpoint, else final.weights.h5. Writes `<model_dir>/eval_<split>.json` when there is
    a model_dir.
    """
    start_time = time.time()
    tf, data, strategy, info, spec = _setup(cfg)
    image_size = cfg.resolved_image_size()
    split = _eval_split(cfg, info)
    model_dir = Path(cfg.model_dir) if cfg.model_dir else None
    step = None
    latest = None
    if model_dir is not None and not cfg.init_weights:
        latest = tf.train.latest_checkpoint(str(model_dir / "checkpoints"))
        if latest is None and not (model_dir / FINAL_WEIGHTS).exists():
            raise FileNotFoundError(f"nothing to evaluate in {model_dir}: no checkpoint and no "
                                    f"{FINAL_WEIGHTS}; pass --init_weights")
    network_of = None
    if model_dir is not None and (model_dir / RUN_JSON).exists() and not cfg.init_weights:
        record = json.loads((model_dir / RUN_JSON).read_text())
        # A run fine-tuned from a published checkpoint has that checkpoint's exact network
        # (e.g. the Model Garden's input normalisation layer, which holds no weights).
        network_of = record.get("init_weights")
        for key in ("model", "width", "qat", "image_size"):
            mine = cfg.qat if key == "qat" else (
                image_size if key == "image_size" else getattr(cfg, key))
            if key in record and record[key] != mine:
                raise ValueError(f"{model_dir} was trained with --{key}={record[key]!r}; "
                                 f"evaluating it with --{key}={mine!r} is not possible")
    load_final = (model_dir is not None and not cfg.init_weights and latest is None)
    build_cfg = dataclasses.replace(cfg, init_weights=(
        str(model_dir / FINAL_WEIGHTS) if load_final else cfg.init_weights))
    with strategy.scope():
        _, model = _build(build_cfg, spec, info.num_classes, image_size, network_of)
        if latest is not None:
            step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
            tf.train.Checkpoint(model=model, step=step_var).restore(latest).expect_partial()
            step = int(step_var.numpy())
    ds = data.make_dataset(cfg.dataset, split, image_size=image_size,
                           batch_size=cfg.batch_size, training=False, data_dir=cfg.data_dir)
    metrics = _run_eval(strategy, _make_eval_step(tf, strategy, model, info.num_classes), ds,
                        split, info.num_classes)
    if model_dir is not None:
        model_dir.mkdir(parents=True, exist_ok=True)
        _write_json(model_dir / f"eval_{split}.json", _eval_record(cfg, spec, metrics, step))
    return TrainResult(model=model, step=step or 0, total_steps=0, steps_per_epoch=0, losses=[],
                       learning_rates=[], metrics=metrics, seconds=time.time() - start_time,
                       resumed_from=step or 0)


# --------------------------------------------------------------------------------------------
# Command line

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues | None = None) -> flags.FlagValues:
    """Define the command-line flags on `flag_values` (default: absl's global FLAGS).

    Done at import only when this module is the program (`python -m mhmodels.train` or
    `python -m mhmodels train`), so that importing it as a library (the search, benchmarks)
    never clashes with the importer's own --width, --dataset, ... flags.
    """
    fv = FLAGS if flag_values is None else flag_values
    if "warmup_fraction" in fv:  # defined already
        return fv
    d = TrainConfig()

    def define(fn, *args, **kwargs):
        fn(*args, flag_values=fv, **kwargs)

    _define_model_and_data_flags(define, d)
    _define_recipe_flags(define, d)
    _define_run_flags(define, d)
    return fv


_STR, _FLOAT, _INT, _BOOL, _ENUM = (flags.DEFINE_string, flags.DEFINE_float,
                                    flags.DEFINE_integer, flags.DEFINE_bool, flags.DEFINE_enum)


def _define_model_and_data_flags(define, d: TrainConfig) -> None:
    """What is trained, on what, for how long."""
    define(_STR, "model", d.model, "Zoo model name (see `python -m mhmodels summary`) "
           "or the path of a zoo entry JSON file (e.g. one the search wrote).")
    define(_FLOAT, "width", d.width, "Width multiplier (0.35 ... 2.0).")
    define(_STR, "dataset", d.dataset, "'digits' (embedded, no download), "
           "'folder:<path>' (one subfolder per class) or a prepared TFDS dataset "
           "name such as imagenet2012 (with --data_dir).")
    define(_STR, "data_dir", None, "TFDS data dir, or the image folder for "
           "--dataset=folder.")
    define(_INT, "image_size", None, "Input side in pixels; default 32 for digits, "
           "224 otherwise.")
    define(_INT, "batch_size", d.batch_size, "Global batch size (split across "
           "replicas).")
    define(_FLOAT, "epochs", d.epochs, "Training epochs (fractions allowed); ignored when "
           "--steps is set.")
    define(_INT, "steps", None, "Total training steps (overrides --epochs).")


def _define_recipe_flags(define, d: TrainConfig) -> None:
    """The paper's training recipe: learning-rate schedule, regularisation, RMSProp."""
    define(_FLOAT, "learning_rate", None, "Peak learning rate; default the paper's "
           "0.165 * batch_size / 256.")
    define(_FLOAT, "warmup_fraction", d.warmup_fraction, "Fraction of the steps with a "
           "linear learning-rate warm-up before the cosine decay.")
    define(_FLOAT, "label_smoothing", d.label_smoothing, "Label smoothing of the "
           "cross-entropy.")
    define(_FLOAT, "weight_decay", d.weight_decay, "L2 coefficient on conv / dense kernels "
           "(added to the loss as weight_decay * sum(l2_loss), coupled as in the "
           "paper's TF recipe).")
    define(_FLOAT, "rmsprop_decay", d.rmsprop_decay, "RMSProp decay (rho).")
    define(_FLOAT, "momentum", d.momentum, "RMSProp momentum.")
    define(_FLOAT, "epsilon", d.epsilon, "RMSProp epsilon.")
    define(_FLOAT, "dropout", d.dropout, "Dropout rate before the classifier.")


def _define_run_flags(define, d: TrainConfig) -> None:
    """Where the run lives and how it runs: strategy, QAT, checkpoints, logging."""
    define(_STR, "model_dir", None, "Directory for checkpoints, TensorBoard logs, "
           "run.json and final weights; an existing run there is resumed.")
    define(_ENUM, "strategy", d.strategy, list(STRATEGIES), "tf.distribute strategy, as "
           "in the search.")
    define(_STR, "tpu", None, "TPU name or grpc:// address for --strategy=tpu "
           "('local' for a TPU VM).")
    define(_INT, "num_cpu_devices", None, "Split the CPU into this many logical "
           "devices before TensorFlow initialises (for --strategy=mirrored on a "
           "CPU-only machine).")
    define(_BOOL, "qat", False, "Fine-tune the fake-quant (QAT) twin of the model "
           "(mhmodels.quantize) instead of the float model; usually with "
           "--init_weights of a trained float model.")
    define(_STR, "init_weights", None, "Initial weights: a .weights.h5 path, a URL, "
           "'imagenet' or a Model Garden <prefix>.index (a mismatched head is skipped). "
           "In eval mode: the weights to evaluate.")
    define(_ENUM, "mode", d.mode, list(MODES), "train, eval (top-1 / top-5 of "
           "--init_weights or --model_dir), or train_and_eval (evaluate every "
           "epoch and at the end).")
    define(_INT, "seed", None, "Seed of the initialisation, shuffling and "
           "augmentation; default a random one, recorded in run.json.")
    define(_INT, "checkpoint_every", None, "Checkpoint every this many steps "
           "(default once per epoch; always at the end or on interruption).")
    define(_INT, "stop_at_step", None, "Stop (with a checkpoint) after this global "
           "step without finishing the schedule; run again to resume.")
    define(_STR, "eval_split", None, "Split to evaluate (default validation, or test "
           "where there is no validation split).")
    define(_INT, "log_every", d.log_every, "Log / write TensorBoard summaries every "
           "this many steps.")
    define(_BOOL, "progress", None, "Show a progress bar (default: when stderr is a "
           "terminal; otherwise log lines every --log_every steps).")
    define(_INT, "keep_checkpoints", d.keep_checkpoints, "Checkpoints kept in "
           "--model_dir/checkpoints (the newest; 1 is enough to resume).")
    define(_BOOL, "jit_compile", d.jit_compile, "Compile the replica step with XLA (a "
           "TPU compiles it anyway; this checks that a step compiles, or speeds up a GPU).")
    define(_BOOL, "sync_batch_norm", d.sync_batch_norm, "Batch-norm statistics over the "
           "global batch (an all-reduce per layer), so every replica keeps the same moving "
           "statistics; default: each replica's own slice, as the paper's TPU recipe.")


def _running_as_cli() -> bool:
    """True under `python -m mhmodels train` (the dispatcher imports this module first)."""
    main_module = sys.modules.get("__main__")
    spec = getattr(main_module, "__spec__", None)
    return (getattr(spec, "name", None) == "mhmodels.__main__" and len(sys.argv) > 1
            and sys.argv[1] == "train")


if __name__ == "__main__" or _running_as_cli():
    define_flags()


def config_from_flags(flag_values: flags.FlagValues | None = None) -> TrainConfig:
    fv = FLAGS if flag_values is None else flag_values
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {name: fv[name].value for name in fields if name in fv}
    return TrainConfig(**values)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if "warmup_fraction" not in FLAGS:
        raise app.UsageError("mhmodels.train's flags are not defined: call "
                             "mhmodels.train.define_flags() before app.run(main)")
    cfg = config_from_flags()
    # Flags are validated before TensorFlow loads; errors read as errors, not tracebacks.
    try:
        _check_config(cfg)
        if cfg.mode != "eval":  # a second training on one model_dir: refused before TF loads
            check_unlocked(cfg.model_dir, "training", chief=is_chief_task(cfg.strategy),
                           flag="--model_dir")
        if cfg.mode == "eval":
            result = evaluate(cfg)
        else:
            result = train(cfg)
    except RuntimeError as err:  # the rest of the user errors: one line, from mhmodels.cli
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    m = result.metrics
    if m:
        print(f"{m['split']}: {format_metrics(m)}  ({m['count']} images)")
    if cfg.mode != "eval":
        print(f"step {result.step}/{result.total_steps} in {result.seconds:.1f}s"
              + (f"; weights: {result.weights_path}" if result.weights_path else
                 "; stopped early, run again to resume"))


if __name__ == "__main__":
    from mhmodels import cli

    cli.run(main)
