"""Latency collection throughput: architectures per hour with 1 and with N worker processes.

    python benchmarks/collection_rate.py                     # NPUs, 224x224, 6 archs each
    python benchmarks/collection_rate.py --hardware=cpu_int8,ethos_u55 --archs=4 --workers=2

Export (Keras -> SavedModel -> int8 TFLite) is the bottleneck of collecting cost-model data;
one int8 export serves every int8 hardware. Both runs collect the same seed's architectures
(disjoint seeds would compare different networks) into fresh files, so the ratio is the
speed-up of `search.collect_latency --workers=N` on this machine, measured in one run.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

import _report  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("hardware", ["ethos_u55", "ethos_u65", "ethos_u85"], "Hardware measured.")
flags.DEFINE_integer("archs", 6, "Architectures per run (the normaliser row not counted).")
flags.DEFINE_integer("workers", 2, "Worker processes of the parallel run.")
flags.DEFINE_integer("image_size", 224, "Input resolution.")
flags.DEFINE_integer("seed", 11, "Sampling seed (the same for both runs).")


def main(argv):
    del argv
    _report.quiet_logs()
    from search.collect_latency import collect
    from search.hardware import parse_hardware_list
    hardware = parse_hardware_list(FLAGS.hardware)
    results = {}
    with tempfile.TemporaryDirectory(prefix="mh_rate_") as tmp:
        for workers in (1, FLAGS.workers):
            out = Path(tmp) / f"w{workers}.csv"
            t0 = time.perf_counter()
            collect(hardware, FLAGS.archs, out, image_size=FLAGS.image_size, seed=FLAGS.seed,
                    progress=False, workers=workers)
            seconds = time.perf_counter() - t0
            rows = FLAGS.archs + 1  # + the MobileNetV1 normaliser row
            results[workers] = {"seconds": round(seconds, 1),
                                "archs_per_hour": round(3600.0 * rows / seconds, 1)}
            print(f"workers={workers}: {rows} networks in {seconds:.0f} s = "
                  f"{results[workers]['archs_per_hour']:.0f} architectures/hour", flush=True)
    speedup = results[FLAGS.workers]["archs_per_hour"] / results[1]["archs_per_hour"]
    print(f"speed-up with {FLAGS.workers} workers: {speedup:.2f}x "
          f"({', '.join(FLAGS.hardware)}, {FLAGS.image_size}x{FLAGS.image_size}, "
          f"{os.cpu_count()} cores)")
    _report.write_json({"hardware": FLAGS.hardware, "image_size": FLAGS.image_size,
                        "runs": {str(k): v for k, v in results.items()},
                        "speedup": round(speedup, 3)})


if __name__ == "__main__":
    app.run(main)
