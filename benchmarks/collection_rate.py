"""Latency collection throughput: architectures per hour with 1 and with N worker processes.

    python benchmarks/collection_rate.py                     # NPUs, 224x224, direct writer
    python benchmarks/collection_rate.py --export=converter --archs=6    # the old path
    python benchmarks/collection_rate.py --hardware=ethos_u55 --archs=40 --image_size=96

With `--export=converter`, export (Keras -> SavedModel -> int8 TFLite) is the bottleneck of
collecting cost-model data; with `--export=direct` (collect_latency's default) the .tflite is
written from the spec (`mhmodels.tflite_writer`) and the measuring tool (vela, LiteRT) is what
is left: the breakdown gives the CPU seconds of writing and of each hardware per architecture,
and the rate the writer alone would allow. One int8 file serves every int8 hardware. Both
runs collect the same seed's architectures (disjoint seeds would compare different networks)
into fresh files, so the ratio is the speed-up of `search.collect_latency --workers=N` on
this machine, measured in one run.
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
flags.DEFINE_enum("export", "direct", ["direct", "converter"], "How each .tflite is made "
                  "(search.collect_latency --export).")


def breakdown(hardware, archs: int, image_size: int, seed: int) -> dict:
    """Mean CPU seconds per architecture of writing its files and of each hardware's tool."""
    import numpy as np
    from search.collect_latency import sample
    from search.hardware import write_formats
    from search.space import get_space
    space = get_space()
    rng = np.random.default_rng(seed)
    write_s, tool_s = [], {hw.name: [] for hw in hardware}
    for _ in range(archs):
        spec = space.decode(space.canonical(sample(space, rng)))
        t0 = time.process_time()
        files, _ = write_formats(spec, [hw.quantization for hw in hardware], image_size)
        write_s.append(time.process_time() - t0)
        for hw in hardware:
            t0 = time.process_time()
            hw.measure_tflite(files[hw.quantization])
            tool_s[hw.name].append(time.process_time() - t0)
    out = {"write_s": float(np.mean(write_s)),
           "writer_archs_per_hour": 3600.0 / float(np.mean(write_s)),
           **{f"{k}_s": float(np.mean(v)) for k, v in tool_s.items()}}
    print(f"per architecture (CPU s, {archs} archs): write {out['write_s']:.3f} "
          f"(the writer alone: {out['writer_archs_per_hour']:.0f} architectures/hour/core), "
          + ", ".join(f"{k} {np.mean(v):.3f}" for k, v in tool_s.items()), flush=True)
    return out


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
                    progress=False, workers=workers, export=FLAGS.export)
            seconds = time.perf_counter() - t0
            rows = FLAGS.archs + 1  # + the MobileNetV1 normaliser row
            results[workers] = {"seconds": round(seconds, 1),
                                "archs_per_hour": round(3600.0 * rows / seconds, 1)}
            print(f"workers={workers}: {rows} networks in {seconds:.0f} s = "
                  f"{results[workers]['archs_per_hour']:.0f} architectures/hour", flush=True)
    speedup = results[FLAGS.workers]["archs_per_hour"] / results[1]["archs_per_hour"]
    print(f"speed-up with {FLAGS.workers} workers: {speedup:.2f}x "
          f"({', '.join(FLAGS.hardware)}, {FLAGS.image_size}x{FLAGS.image_size}, "
          f"export {FLAGS.export}, {os.cpu_count()} cores)")
    parts = breakdown(hardware, min(FLAGS.archs, 10), FLAGS.image_size, FLAGS.seed) \
        if FLAGS.export == "direct" else None
    _report.write_json({"hardware": FLAGS.hardware, "image_size": FLAGS.image_size,
                        "export": FLAGS.export,
                        "runs": {str(k): v for k, v in results.items()},
                        "speedup": round(speedup, 3), "breakdown": parts})


if __name__ == "__main__":
    app.run(main)
