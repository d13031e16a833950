"""LiteRT latency of our exported models vs keras.applications' same architectures.

One process, everything exported the same way (`mhmodels.export.export_tflite`, float) and
measured with the one measurement path (`mhmodels.latency`), interleaved over `--rounds`:
  * ratio ours / keras.applications for MobileNetV2 1.0, MobileNetV3-Large-minimalistic 1.0,
    MobileNetV1 1.0 (goal <= 1.02: the builder adds no overhead);
  * Multi-MAX 1.0 / MobileNetV2 1.0 (report);
  * int8 export time of a 224x224 model (Multi-MAX, a few random calibration batches;
    goal < 30 s).
    python benchmarks/tflite_latency.py --rounds=5 --runs=20 [--json=out.json]
Latency statistic: min and median over all pooled runs (the machine may be shared).
"""
from __future__ import annotations

import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from _report import quiet_logs, write_json  # noqa: E402  (benchmarks/_report.py; defines --json)

FLAGS = flags.FLAGS
flags.DEFINE_integer("rounds", 5, "Interleaved measurement passes.")
flags.DEFINE_integer("runs", 20, "Timed runs per model per pass.")
flags.DEFINE_integer("image_size", 224, "Input resolution.")


def main(argv):
    quiet_logs()
    del argv
    import keras
    import numpy as np

    import mhmodels
    from mhmodels.export import export_tflite
    from mhmodels.latency import measure_interleaved

    s = FLAGS.image_size
    shape = (s, s, 3)
    builders = {
        "ours/mobilenet_v2": lambda: mhmodels.build("mobilenet_v2", 1.0, input_shape=shape,
                                                    num_classes=1000),
        "keras/mobilenet_v2": lambda: keras.applications.MobileNetV2(
            input_shape=shape, alpha=1.0, weights=None, classes=1000),
        "ours/mobilenet_v3_large_min": lambda: mhmodels.build(
            "mobilenet_v3_large_min", 1.0, input_shape=shape, num_classes=1000),
        "keras/mobilenet_v3_large_min": lambda: keras.applications.MobileNetV3Large(
            input_shape=shape, alpha=1.0, minimalistic=True, weights=None, classes=1000,
            include_preprocessing=False),
        "ours/mobilenet_v1": lambda: mhmodels.build("mobilenet_v1", 1.0, input_shape=shape,
                                                    num_classes=1000),
        "keras/mobilenet_v1": lambda: keras.applications.MobileNet(
            input_shape=shape, alpha=1.0, weights=None, classes=1000),
        "ours/multi_max": lambda: mhmodels.build("multi_max", 1.0, input_shape=shape,
                                                 num_classes=1000),
    }
    tmp = tempfile.mkdtemp(prefix="tflite_latency_")
    files, export_s = {}, {}
    for name, build in builders.items():
        model = build()
        path = os.path.join(tmp, name.replace("/", "_") + ".tflite")
        t0 = time.perf_counter()
        export_tflite(model, path)
        export_s[name] = time.perf_counter() - t0
        files[name] = path
        if name == "ours/multi_max":
            rep = np.random.default_rng(0).uniform(-1, 1, (4, s, s, 3)).astype(np.float32)
            t0, c0 = time.perf_counter(), time.process_time()
            export_tflite(model, os.path.join(tmp, "multi_max_int8.tflite"),
                          quantization="int8", representative_data=rep)
            export_s["ours/multi_max int8"] = time.perf_counter() - t0
            export_s["ours/multi_max int8 (process CPU s)"] = time.process_time() - c0
        keras.backend.clear_session()
    res = measure_interleaved(files, rounds=FLAGS.rounds, runs=FLAGS.runs, warmup=3)
    print(f"{'model':32s} {'min ms':>8s} {'median ms':>10s} {'p90 ms':>8s}")
    for name, r in res.items():
        print(f"{name:32s} {r.min_ms:8.2f} {r.median_ms:10.2f} {r.p90_ms:8.2f}")
    out = {"latency": {k: v.to_dict() for k, v in res.items()}, "export_seconds": export_s,
           "ratios": {}}
    for arch in ("mobilenet_v2", "mobilenet_v3_large_min", "mobilenet_v1"):
        a, b = res[f"ours/{arch}"], res[f"keras/{arch}"]
        ratio = {"min": a.min_ms / b.min_ms, "median": a.median_ms / b.median_ms}
        out["ratios"][f"{arch} ours/keras"] = ratio
        print(f"{arch:24s} ours / keras.applications: min {ratio['min']:.3f}, median "
              f"{ratio['median']:.3f}  (goal <= 1.02)")
    a, b = res["ours/multi_max"], res["ours/mobilenet_v2"]
    ratio = {"min": a.min_ms / b.min_ms, "median": a.median_ms / b.median_ms}
    out["ratios"]["multi_max / mobilenet_v2"] = ratio
    print(f"multi_max / mobilenet_v2 1.0: min {ratio['min']:.3f}, median {ratio['median']:.3f}")
    print(f"int8 export of multi_max at {s}x{s}: {export_s['ours/multi_max int8']:.1f} s wall, "
          f"{export_s['ours/multi_max int8 (process CPU s)']:.1f} s process CPU (goal < 30 s); "
          "float exports: " + ", ".join(
              f"{k} {v:.1f} s" for k, v in export_s.items() if "int8" not in k))
    # Wall time of an export on a shared machine mostly measures the other jobs' load.
    write_json(out)


if __name__ == "__main__":
    app.run(main)
