"""Search-step cost: supernet vs standalone child, and the controller + cost-model overhead.

    python benchmarks/search_step.py [--steps=30] [--batch_size=32] [--image_size=32]
        [--supernet_width=0.25] [--json=out.json]

Reports (median seconds per step over --steps timed steps after a warm-up):
  * supernet_train_s: forward + backward + update of the supernet on its largest child
    (every block, expansion 6, kernel 5, widest filters);
  * standalone_train_s: the same child built by `mhmodels.build` (same width, batch, image
    size), same update (momentum SGD), in a tf.function;
  * ratio = supernet_train_s / standalone_train_s (goal <= 1.5);
  * search_step_s: a whole search step on a sampled child (train + held-out forward +
    controller + cost models);
  * controller_overhead: (sampling + cost models + reward + REINFORCE update) / search_step_s
    (goal <= 5%);
  * loop_speedup = per-step time of one step per call / per-step time of --steps_per_loop steps
    in one call (a tf.function loop, as `python -m search --steps_per_loop` runs them): the
    host round trip saved per step;
  * jit_speedup = search_step_s / the same step compiled with XLA (`--jit_compile`), one step
    per call. Both ratios come from the same run, so a loaded host cancels out of them.
Cost models: the shipped ones when present, else stand-in linear models of the same shape.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np
from absl import app, flags

from _report import quiet_logs, write_json  # benchmarks/_report.py; defines --json

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

flags.DEFINE_integer("steps", 30, "Timed steps per measurement (after 3 warm-up steps).")
flags.DEFINE_integer("batch_size", 32, "Batch size.")
flags.DEFINE_integer("image_size", 32, "Image size.")
flags.DEFINE_float("supernet_width", 0.25, "Supernet (and standalone child) width.")
flags.DEFINE_integer("steps_per_loop", 10, "Steps per call of the looped measurement.")
flags.DEFINE_list("hardware", ["cpu_float", "cpu_int8", "cpu_ref_float"], "Cost models.")
FLAGS = flags.FLAGS


class _StandIn:
    def __init__(self, space, seed):
        rng = np.random.default_rng(seed)
        self.normalizer_ms = 10.0
        self.table = np.zeros((len(space.decisions), max(space.num_choices)), np.float32)
        for i, n in enumerate(space.num_choices):
            self.table[i, :n] = rng.uniform(0, 0.5, n)

    def predict_tf(self, choices):
        import tensorflow as tf
        c = tf.cast(choices, tf.int32)
        return tf.reduce_sum(tf.gather(tf.constant(self.table), c[:, None], axis=1,
                                       batch_dims=1))


def _time(fn, steps):
    for _ in range(3):
        fn()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv):
    quiet_logs()
    import tensorflow as tf

    import mhmodels
    from search import reward as reward_lib
    from search.controller import Controller
    from search.distribute import WeightOptimizer
    from search.space import get_space
    from search.supernet import Supernet

    space = get_space("multi_hw")
    try:
        from search.loop import load_cost_models
        cms = load_cost_models(FLAGS.hardware, space)
        source = "shipped"
    except Exception:  # noqa: BLE001 - any missing/invalid cost model: use stand-ins
        cms = [_StandIn(space, i) for i in range(len(FLAGS.hardware))]
        source = "stand-in"
    normalizers = [float(c.normalizer_ms) for c in cms]
    bs, size, width = FLAGS.batch_size, FLAGS.image_size, FLAGS.supernet_width
    images = tf.random.stateless_uniform([bs, size, size, 3], [0, 1], -1.0, 1.0)
    labels = tf.random.stateless_uniform([bs], [0, 2], 0, 10, dtype=tf.int32)

    net = Supernet(space, 10, width=width)
    variables = net.trainable_weights
    opt = WeightOptimizer(variables)
    ctrl = Controller(space.num_choices, learning_rate=0.05)
    largest = net.largest(np.zeros(len(space.decisions), np.int32))

    def ce(logits):
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))

    @tf.function
    def supernet_train(choices):
        with tf.GradientTape() as tape:
            loss = ce(net(images, choices))
        opt.apply(tape.gradient(loss, variables), variables, 0.01)
        return loss

    def rl_part(choices, accuracy, step):
        lat = tf.stack([tf.reshape(tf.cast(c.predict_tf(choices), tf.float32), []) for c in cms])
        r = reward_lib.reward(accuracy, lat, normalizers, "max", -0.07, 1.0)
        return ctrl.update(choices, r, step)["advantage"]

    def search_step_body(step):
        choices = ctrl.sample(tf.stack([tf.constant(0, tf.int64), step]))
        with tf.GradientTape() as tape:
            loss = ce(net(images, choices))
        grads = tape.gradient(loss, variables)
        acc = tf.reduce_mean(tf.cast(tf.equal(
            tf.argmax(net(images, choices), -1, output_type=tf.int32), labels), tf.float32))
        adv = rl_part(choices, acc, step)
        opt.apply(grads, variables, 0.01)
        return adv

    search_step = tf.function(search_step_body)
    search_step_jit = tf.function(search_step_body, jit_compile=True)
    n_loop = FLAGS.steps_per_loop

    @tf.function
    def search_loop(first):
        total = tf.constant(0.0)
        for i in tf.range(n_loop):
            total += search_step_body(first + tf.cast(i, tf.int64))
        return total

    @tf.function
    def controller_only(step):
        choices = ctrl.sample(tf.stack([tf.constant(0, tf.int64), step]))
        return rl_part(choices, tf.constant(0.5), step)

    child = mhmodels.build(space.decode(largest.numpy(), "largest_child"), width,
                           input_shape=(size, size, 3), num_classes=10, dropout=0.0)
    child_vars = child.trainable_variables
    child_slots = [tf.Variable(tf.zeros(v.shape)) for v in child_vars]

    @tf.function
    def standalone_train():
        with tf.GradientTape() as tape:
            loss = ce(child(images, training=True))
        for v, s, g in zip(child_vars, child_slots, tape.gradient(loss, child_vars)):
            s.assign(0.9 * s + g)
            v.assign_sub(0.01 * s)
        return loss

    counter = iter(range(10**9))
    results = {}
    results["supernet_train_s"] = _time(lambda: supernet_train(largest), FLAGS.steps)
    results["standalone_train_s"] = _time(standalone_train, FLAGS.steps)
    results["ratio"] = results["supernet_train_s"] / results["standalone_train_s"]
    results["search_step_s"] = _time(
        lambda: search_step(tf.constant(next(counter), tf.int64)), FLAGS.steps)
    results["controller_s"] = _time(
        lambda: controller_only(tf.constant(next(counter), tf.int64)), FLAGS.steps)
    results["controller_overhead"] = results["controller_s"] / results["search_step_s"]
    # One step per call vs --steps_per_loop steps per call, and XLA: measured back to back.
    results["search_step_loop_s"] = _time(
        lambda: search_loop(tf.constant(next(counter), tf.int64)),
        max(1, FLAGS.steps // n_loop)) / n_loop
    results["search_step_jit_s"] = _time(
        lambda: search_step_jit(tf.constant(next(counter), tf.int64)), FLAGS.steps)
    results["loop_speedup"] = results["search_step_s"] / results["search_step_loop_s"]
    results["jit_speedup"] = results["search_step_s"] / results["search_step_jit_s"]
    results["steps_per_loop"] = n_loop
    results.update(batch_size=bs, image_size=size, supernet_width=width,
                   supernet_weights_m=net.num_weights() / 1e6,
                   standalone_params_m=child.count_params() / 1e6, cost_models=source)
    print(f"supernet train step (largest child) {results['supernet_train_s'] * 1e3:.1f} ms, "
          f"standalone {results['standalone_train_s'] * 1e3:.1f} ms: ratio "
          f"{results['ratio']:.2f} (goal <= 1.5)")
    print(f"search step {results['search_step_s'] * 1e3:.1f} ms; controller + cost models "
          f"{results['controller_s'] * 1e3:.2f} ms = {100 * results['controller_overhead']:.1f}% "
          f"(goal <= 5%; {source} cost models)")
    print(f"per step: {results['search_step_s'] * 1e3:.1f} ms one per call, "
          f"{results['search_step_loop_s'] * 1e3:.1f} ms in loops of {n_loop} (x"
          f"{results['loop_speedup']:.2f}); XLA {results['search_step_jit_s'] * 1e3:.1f} ms "
          f"(x{results['jit_speedup']:.2f})")
    write_json(results)
    return 0


if __name__ == "__main__":
    app.run(main)
