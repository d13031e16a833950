"""Input pipeline vs training step throughput, and Multi-MAX vs Keras MobileNetV2 training speed.

    python benchmarks/input_pipeline.py --width=1.0 --image_size=224 --batch_size=32
    bazel run //benchmarks:input_pipeline -- --width=0.35 --image_size=96

Measures, in images / second (after `--warmup` batches, over `--steps` batches):

Measurements are interleaved in `--repeats` rounds and the best round is reported, so that
other load on the machine disturbs the comparison as little as possible.

1. pipeline: `mhmodels.data.make_dataset(..., training=True)` alone, seeded (deterministic,
   what `mhmodels.train` uses: its exact resume needs a seed) and unseeded (free order);
2. training step of Multi-MAX at `--width`, fed from an in-memory batch (what the step can
   consume when input is free), using `mhmodels.train`'s own step (RMSProp, label smoothing,
   L2, `strategy.run`);
3. the same step fed by the real pipeline (end to end, as `mhmodels.train` runs);
4. the same step for keras.applications MobileNetV2 (alpha = `--width`, same input size and
   classes), in-memory and end to end.

The pipeline is not the bottleneck when (1) is well above (2) and (3) is about (2). All of it
shares the machine's cores: on a small CPU the pipeline's threads take time from the step, so
compare (3) with (2), not only (1) with (2).
"""
from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

flags.DEFINE_string("dataset", "digits", "Dataset for the pipeline (see mhmodels.data).")
flags.DEFINE_string("data_dir", None, "TFDS data dir / image folder.")
flags.DEFINE_float("width", 1.0, "Width multiplier of Multi-MAX and alpha of MobileNetV2.")
flags.DEFINE_integer("image_size", 224, "Input side in pixels.")
flags.DEFINE_integer("batch_size", 32, "Batch size.")
flags.DEFINE_integer("steps", 10, "Timed batches per measurement.")
flags.DEFINE_integer("warmup", 3, "Untimed batches before each measurement (tracing, "
                     "buffers).")
flags.DEFINE_integer("pipeline_steps", None, "Timed batches for the pipeline alone "
                     "(default 5 x --steps: it is fast).")
flags.DEFINE_integer("repeats", 3, "Interleaved rounds of every measurement; the best "
                     "counts (robust to other processes on the machine).")
flags.DEFINE_bool("mobilenet_v2", True, "Also time keras.applications MobileNetV2.")
flags.DEFINE_string("output_json", None, "Write the numbers here as JSON.")
FLAGS = flags.FLAGS


def _time(fn, batches: int, batch_size: int) -> float:
    start = time.perf_counter()
    for _ in range(batches):
        fn()
    return batches * batch_size / (time.perf_counter() - start)


def batch_closure(consume, dataset):
    """A closure that applies `consume` to an iterator over `dataset` (one batch per call)
    and waits for the first of its two results."""
    iterator = iter(dataset)

    def run():
        first, _ = consume(iterator)
        first.numpy()

    return run


def pipeline_puller(dataset):
    """Pulls one batch of `dataset` (images materialised) per call."""
    return batch_closure(next, dataset)


def step_runner(tf, model, num_classes: int, batch_size: int, total_steps: int):
    """mhmodels.train's training step for `model`; returns run(iterator) -> None."""
    import keras
    from mhmodels import train as T

    strategy = tf.distribute.get_strategy()
    cfg = T.TrainConfig(batch_size=batch_size)
    optimizer = T._make_optimizer(keras, cfg, T.peak_learning_rate(batch_size), total_steps)
    optimizer.build(model.trainable_variables)
    step = T._make_train_step(tf, strategy, model, optimizer, cfg, num_classes, batch_size,
                              host_iterator=True)

    def make(dataset):
        return batch_closure(step, dataset)  # the step returns (loss, ...)

    return make


def main(argv):
    del argv
    import keras
    import tensorflow as tf

    import mhmodels
    from mhmodels import data

    size, batch = FLAGS.image_size, FLAGS.batch_size
    info = data.dataset_info(FLAGS.dataset, FLAGS.data_dir)
    classes = info.num_classes
    steps, warmup, repeats = FLAGS.steps, FLAGS.warmup, FLAGS.repeats
    pipe_steps = FLAGS.pipeline_steps or 5 * steps

    def real(seed):
        return data.make_dataset(FLAGS.dataset, "train", image_size=size, batch_size=batch,
                                 training=True, data_dir=FLAGS.data_dir, seed=seed)

    sample = next(iter(real(0)))
    in_memory = tf.data.Dataset.from_tensors(sample).repeat()
    # Every measurement is a closure that processes one batch; they run interleaved, in
    # `repeats` rounds, and the best round counts (the least disturbed by other processes).
    jobs = {"pipeline_seeded": (pipeline_puller(real(0)), pipe_steps),
            "pipeline_unseeded": (pipeline_puller(real(None)), pipe_steps)}
    models = {"multi_max": lambda: mhmodels.build(
        "multi_max", FLAGS.width, input_shape=(size, size, 3), num_classes=classes)}
    if FLAGS.mobilenet_v2:
        models["keras_mobilenet_v2"] = lambda: keras.applications.MobileNetV2(
            input_shape=(size, size, 3), alpha=FLAGS.width, weights=None, classes=classes,
            classifier_activation=None)
    total = (warmup + steps * repeats) * 2 + 1
    for name, make in models.items():
        keras.utils.set_random_seed(0)
        runner = step_runner(tf, make(), classes, batch, total)
        jobs[f"{name}_step_in_memory"] = (runner(in_memory), steps)
        jobs[f"{name}_step_with_pipeline"] = (runner(real(0)), steps)
    for fn, _ in jobs.values():  # tracing, buffers, autotuning
        for _ in range(warmup):
            fn()
    rates = {name: [] for name in jobs}
    for _ in range(repeats):
        for name, (fn, n) in jobs.items():
            rates[name].append(_time(fn, n, batch))

    results = {"dataset": FLAGS.dataset, "width": FLAGS.width, "image_size": size,
               "batch_size": batch, "steps": steps, "repeats": repeats,
               "cpus": os.cpu_count(), "load_average": os.getloadavg()[0],
               "devices": [d.name for d in tf.config.list_logical_devices()],
               "all_rounds": rates}
    rate = {name: max(values) for name, values in rates.items()}
    results.update(rate)
    consume = rate["multi_max_step_in_memory"]
    ratios = {"pipeline_over_step": rate["pipeline_seeded"] / consume,
              "end_to_end_over_in_memory": rate["multi_max_step_with_pipeline"] / consume}
    if FLAGS.mobilenet_v2:
        ratios["multi_max_over_mobilenet_v2"] = consume / rate["keras_mobilenet_v2_step_in_memory"]
        ratios["multi_max_over_mobilenet_v2_end_to_end"] = (
            rate["multi_max_step_with_pipeline"] / rate["keras_mobilenet_v2_step_with_pipeline"])
    results.update(ratios)

    print(f"{FLAGS.dataset} {size}x{size}, batch {batch}, width {FLAGS.width:g}, "
          f"{os.cpu_count()} CPUs, load {results['load_average']:.1f} (best of {repeats} "
          f"rounds of {steps} steps):")
    for key, value in rate.items():
        print(f"  {key:40s} {value:10.1f} images/s")
    for key, value in ratios.items():
        print(f"  {key:40s} {value:10.2f}")
    verdict = ("not the bottleneck" if ratios["pipeline_over_step"] > 1.5
               and ratios["end_to_end_over_in_memory"] > 0.85 else "POSSIBLY THE BOTTLENECK")
    print(f"  input pipeline: {verdict}")
    if FLAGS.output_json:
        with open(FLAGS.output_json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    app.run(main)
