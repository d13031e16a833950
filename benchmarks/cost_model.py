"""Speed of the cost models: predictions per second and the time to measure one architecture.

    python benchmarks/cost_model.py [--hardware=cpu_float] [--measure]
  * numpy batch `predict` over N archs (goal >= 10k predictions/s on one core);
  * numpy per-arch `predict` calls;
  * `predict_tf` inside a tf.function, batch and per-arch;
  * with --measure: wall time of building + exporting + measuring one 224x224 architecture on
    cpu_float, cpu_int8 and cpu_ref_float (what collecting one cost-model row costs).
"""
from __future__ import annotations

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

import _report  # noqa: E402,F401  (the checkout on sys.path; defines --json)

FLAGS = flags.FLAGS
flags.DEFINE_string("hardware", "cpu_float", "Shipped cost model to time.")
flags.DEFINE_integer("batch", 10000, "Architectures in the batch timings.")
flags.DEFINE_integer("single", 2000, "Per-arch calls timed.")
flags.DEFINE_bool("measure", False, "Also time measuring one architecture for real.")


def _rate(fn, n, repeats=3):
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return n / best


def main(argv):
    del argv
    import numpy as np

    from search.cost_model import host_mismatch, load_cost_model
    from search.space import get_space

    space = get_space("multi_hw")
    model = load_cost_model(FLAGS.hardware)
    mismatch = host_mismatch(model)
    if mismatch:
        print(f"warning: {mismatch}")
    rng = np.random.default_rng(0)
    batch = np.stack([space.sample(rng) for _ in range(FLAGS.batch)])
    single = batch[:FLAGS.single]
    r_batch = _rate(lambda: model.predict(batch), len(batch))
    r_single = _rate(lambda: [model.predict(c) for c in single], len(single))
    print(f"numpy predict, batch of {len(batch)}: {r_batch:,.0f} archs/s (goal >= 10,000)")
    print(f"numpy predict, one arch per call:   {r_single:,.0f} archs/s")

    import tensorflow as tf
    fn = tf.function(model.predict_tf)
    tb = tf.constant(batch, tf.int32)
    fn(tb)
    r_tf = _rate(lambda: fn(tb).numpy(), len(batch))
    one = [tf.constant(c, tf.int32) for c in single[:500]]
    fn(one[0])
    r_tf1 = _rate(lambda: [fn(c).numpy() for c in one], len(one))
    print(f"predict_tf (tf.function), batch:    {r_tf:,.0f} archs/s")
    print(f"predict_tf (tf.function), per arch: {r_tf1:,.0f} archs/s")

    if FLAGS.measure:
        import mhmodels
        from search.collect_latency import measure_model
        from search.hardware import parse_hardware_list
        hws = parse_hardware_list("cpu_float,cpu_int8,cpu_ref_float")
        c = space.sample(rng)
        t0 = time.perf_counter()
        net = mhmodels.build(space.decode(c), input_shape=(224, 224, 3))
        t1 = time.perf_counter()
        row = measure_model(net, hws, 224, {})
        t2 = time.perf_counter()
        print(f"one architecture: build {t1 - t0:.1f} s, export float+int8 and measure 3 "
              f"hardware {t2 - t1:.1f} s; " + ", ".join(
                  f"{h.name} {row[h.name + '_ms']:.1f} ms (predicted "
                  f"{load_cost_model(h.name).predict(c):.1f})" for h in hws))


if __name__ == "__main__":
    app.run(main)
