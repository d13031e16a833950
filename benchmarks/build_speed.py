"""Time of `mhmodels.build('mobilenet_v2')` vs `keras.applications.MobileNetV2`, same network.

Interleaved runs in one process; prints medians and the ratio (goal <= 1.2).
    python benchmarks/build_speed.py --repeats=7
"""
from __future__ import annotations

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("repeats", 7, "Interleaved builds of each model.")
flags.DEFINE_float("width", 1.0, "Width multiplier of both models.")


def main(argv):
    del argv
    import keras

    import mhmodels

    def ours():
        return mhmodels.build("mobilenet_v2", FLAGS.width, num_classes=1000)

    def theirs():
        return keras.applications.MobileNetV2(alpha=FLAGS.width, weights=None, classes=1000)

    ours(), theirs()  # warm-up: imports, op registration
    times = {"mhmodels": [], "keras.applications": []}
    for _ in range(FLAGS.repeats):
        for label, fn in (("mhmodels", ours), ("keras.applications", theirs)):
            keras.backend.clear_session()
            start = time.perf_counter()
            model = fn()
            times[label].append(time.perf_counter() - start)
    params = (mhmodels.profile(ours()).params, model.count_params())
    for label, values in times.items():
        print(f"{label:20s} median {statistics.median(values) * 1e3:8.1f} ms  "
              f"(min {min(values) * 1e3:.1f}, max {max(values) * 1e3:.1f})")
    ratio = statistics.median(times["mhmodels"]) / statistics.median(times["keras.applications"])
    print(f"params (BN excluded, ours) {params[0]:,}; keras.applications incl. BN {params[1]:,}")
    print(f"build time ratio mhmodels / keras.applications = {ratio:.3f}  (goal <= 1.2)")


if __name__ == "__main__":
    app.run(main)
