"""`python -m mhmodels benchmark`: LiteRT latency of zoo models on this CPU, in Table 1's shape.

    python -m mhmodels benchmark --models=mobilenet_v1,mobilenet_v2,multi_avg,multi_max \
        --widths=1.0 --quantization=float,int8 --xnnpack=both --output_dir=bench

Each model is built at a fixed input size, exported once per quantization with
`mhmodels.export.export_tflite` (int8: full-integer, calibrated on a few random batches; fine
for latency, not for accuracy), and timed with `mhmodels.latency.measure_tflite` (warm-up +
repeated runs; with 1 thread each run is timed by the thread's CPU time, so other jobs
on a shared machine do not inflate it) in `--rounds` interleaved passes over all models,
so that what load remains hits every model alike. Each (quantization, XNNPACK on/off) pair is a "hardware"
column: cpu_float, cpu_int8, cpu_ref_float, cpu_ref_int8; each `--npu` preset (Arm Ethos-U55 /
U65 / U85, `mhmodels.vela`) is another, priced by vela on the int8 export. MobileNetV1 1.0 is
always measured in the same run and is the normaliser of the MN-Norm avg / max columns (paper
eq. 4-5), which therefore span the CPU and the NPUs.

Writes to --output_dir: benchmark.csv, benchmark.json (config, normalisers, rows with median
and p10 / p90 per hardware) and benchmark.png (accuracy when known for every model, else MAdds,
vs latency per hardware; Multi-AVG / Multi-MAX highlighted).
"""
from __future__ import annotations

import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from absl import flags

DEFAULT_MODELS = ["mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large_min", "multi_avg",
                  "multi_max"]
NORMALIZER = ("mobilenet_v1", 1.0)
HIGHLIGHT = ("multi_avg", "multi_max")

FLAGS = flags.FLAGS


def _define(definer, name, *args, **kwargs):
    """Define a flag unless a module imported in the same process already did (e.g. the
    `summary` command's --image_size / --num_classes, same meaning and default)."""
    if name not in FLAGS:
        definer(name, *args, **kwargs)


_define(flags.DEFINE_list, "models", DEFAULT_MODELS, "Zoo models to measure (registry names).")
_define(flags.DEFINE_list, "widths", ["1.0"],
        "Width multipliers; every model is measured at each.")
_define(flags.DEFINE_list, "quantization", ["float", "int8"],
        "Export formats: float, int8, uint8, dynamic.")
_define(flags.DEFINE_integer, "threads", 1, "LiteRT interpreter threads.")
_define(flags.DEFINE_integer, "image_size", 224, "Square input resolution.")
_define(flags.DEFINE_enum, "xnnpack", "both", ["both", "on", "off"],
        "XNNPACK delegate (off = LiteRT's builtin kernels without default delegates).")
_define(flags.DEFINE_integer, "runs", 30, "Timed runs per model per round.")
_define(flags.DEFINE_integer, "warmup", 5, "Untimed runs before each timing round.")
_define(flags.DEFINE_integer, "rounds", 2,
        "Interleaved passes over all models (samples are pooled).")
_define(flags.DEFINE_integer, "num_classes", 1001,
        "Classifier size (1001 = Table 1's ImageNet head).")
_define(flags.DEFINE_string, "output_dir", "benchmark_results",
        "Where CSV / JSON / PNG are written.")
_define(flags.DEFINE_bool, "keep_tflite", False,
        "Keep the exported .tflite files in output_dir/tflite.")
_define(flags.DEFINE_bool, "plot", True, "Write benchmark.png.")
_define(flags.DEFINE_list, "npu", ["ethos_u55", "ethos_u65", "ethos_u85"],
        "Arm Ethos-U presets priced by vela on the int8 export (empty: none).")


def hardware_name(quantization: str, xnnpack: bool) -> str:
    return f"cpu_{'' if xnnpack else 'ref_'}{quantization}"


def _representative(image_size: int):
    import numpy as np
    rng = np.random.default_rng(0)
    return rng.uniform(-1.0, 1.0, size=(4, image_size, image_size, 3)).astype(np.float32)


def run_benchmark(models, widths, quantizations=("float", "int8"), *, threads=1,
                  image_size=224, xnnpack="both", runs=30, warmup=5, rounds=2,
                  num_classes=1001, output_dir="benchmark_results", keep_tflite=False,
                  plot=True, progress=True, npu=()) -> dict:
    """Measure every (model, width) on every hardware; write CSV / JSON / PNG. Returns the JSON.

    `npu`: Ethos-U presets (`mhmodels.vela.PRESETS`) priced by vela on the int8 export (one
    deterministic estimate each; ops vela leaves on the host CPU are reported as `cpu_ops`)."""
    import mhmodels
    from mhmodels import vela

    widths = [float(w) for w in widths]
    for q in quantizations:
        if q not in ("float", "int8", "uint8", "dynamic"):
            raise ValueError(f"unknown quantization {q!r}")
    xnn_modes = {"both": [True, False], "on": [True], "off": [False]}[xnnpack]
    hardware = [(hardware_name(q, x), q, x) for x in xnn_modes for q in quantizations]
    npus = {name: vela.preset(name) for name in npu}  # bad names / no vela: fail up front
    exports = list(quantizations) + (["int8"] if npus and "int8" not in quantizations else [])
    entries = [(m, w) for m in models for w in widths]
    for name in models:
        mhmodels.get_spec(name)  # unknown names fail before any work
    if NORMALIZER not in entries:
        entries.append(NORMALIZER)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.TemporaryDirectory(prefix="mhmodels_bench_")
    tflite_dir = out / "tflite" if keep_tflite else Path(tmp.name)
    tflite_dir.mkdir(parents=True, exist_ok=True)
    bar = _Progress(len(entries) * (1 + rounds * len(hardware) + len(npus)), progress)
    try:
        rows, files, export_seconds = _profile_and_export(entries, exports, image_size,
                                                          num_classes, tflite_dir, bar)
        samples = _measure(entries, hardware, files, rounds, threads, warmup, runs, bar)
        estimates = {}
        for name, width in entries:
            for hw, config in npus.items():
                estimates[(name, width, hw)] = vela.estimate_tflite(
                    files[(name, width, "int8")], config)
                bar.step(model=f"{name}@{width:g}", hw=hw)
    finally:
        bar.close()
        tmp.cleanup()
    names = [h for h, _, _ in hardware] + list(npus)
    normalizers = _summarise(rows, samples, estimates, names)
    result = {
        "config": {"models": list(models), "widths": widths, "quantization": list(quantizations),
                   "threads": threads, "image_size": image_size, "xnnpack": xnnpack,
                   "runs": runs, "warmup": warmup, "rounds": rounds,
                   "num_classes": num_classes, "statistic": "median_ms",
                   "clock": "thread CPU time" if threads == 1 else "wall",
                   "npu": {hw: c.to_dict() for hw, c in npus.items()}},
        "hardware": names,
        "normalizer": {"model": NORMALIZER[0], "width": NORMALIZER[1], "latency_ms": normalizers},
        "export_seconds": export_seconds,
        "rows": list(rows.values()),
    }
    _write(out, result, names, plot)
    return result


class _Progress:
    """A tqdm bar on stderr, or nothing (progress=False)."""

    def __init__(self, total: int, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc="benchmark", unit="step", dynamic_ncols=True,
                            file=sys.stderr)

    def step(self, **postfix) -> None:
        if self.bar is not None:
            self.bar.set_postfix(**postfix)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _profile_and_export(entries, exports, image_size: int, num_classes: int, tflite_dir: Path,
                        bar: _Progress) -> tuple[dict, dict, dict]:
    """Build each (model, width) once: its row (params, MAdds, published top-1) and its TFLite
    files, one per quantization. Returns (rows, files, export seconds)."""
    import mhmodels
    from mhmodels.export import export_tflite
    from mhmodels.profile import count_layers

    rows: dict = {}
    files: dict = {}
    export_seconds: dict = {}
    for name, width in entries:
        model = mhmodels.build(name, width, input_shape=(image_size, image_size, 3),
                               num_classes=num_classes)
        counts = count_layers(model)
        reference = getattr(mhmodels.get_entry(name).spec, "reference", None) or {}
        if not isinstance(reference, dict):
            reference = dict(reference) if reference else {}
        top1 = reference.get("imagenet_top1") if reference.get("width") == width else None
        rows[(name, width)] = {"model": name, "width": width,
                               "params_m": round(counts.params / 1e6, 4),
                               "madds_m": round(counts.madds / 1e6, 2),
                               "imagenet_top1": top1, "latency": {}}
        for q in exports:
            path = tflite_dir / f"{name}_{width:g}_{q}.tflite"
            kwargs = {"representative_data": _representative(image_size)} \
                if q in ("int8", "uint8") else {}
            t0 = time.perf_counter()
            export_tflite(model, path, quantization=q, **kwargs)
            export_seconds[f"{name}_{width:g}_{q}"] = round(time.perf_counter() - t0, 2)
            files[(name, width, q)] = str(path)
        del model
        bar.step(model=f"{name}@{width:g}")
    return rows, files, export_seconds


def _measure(entries, hardware, files: dict, rounds: int, threads: int, warmup: int, runs: int,
             bar: _Progress) -> dict:
    """LiteRT latency samples per (model, width, hardware), rounds interleaved across models
    (run-to-run noise then spreads over all of them alike)."""
    from mhmodels.latency import measure_tflite

    samples: dict = {}
    for r in range(rounds):
        for name, width in entries:
            for hw, q, x in hardware:
                res = measure_tflite(files[(name, width, q)], threads=threads, use_xnnpack=x,
                                     warmup=warmup, runs=runs, seed=r)
                samples.setdefault((name, width, hw), []).extend(res.samples_ms)
                bar.step(model=f"{name}@{width:g}", hw=hw)
    return samples


def _summarise(rows: dict, samples: dict, estimates: dict, names) -> dict:
    """Fill each row's latency statistics and MN-Norm avg / max; returns the normalizers."""
    import numpy as np

    from mhmodels.metrics import mn_norm

    for (name, width, hw), s in samples.items():
        a = np.asarray(s)
        rows[(name, width)]["latency"][hw] = {
            "median_ms": round(float(np.median(a)), 4),
            "p10_ms": round(float(np.percentile(a, 10)), 4),
            "p90_ms": round(float(np.percentile(a, 90)), 4),
            "runs": int(a.size)}
    for (name, width, hw), est in estimates.items():
        ms = round(est.latency_ms, 4)
        rows[(name, width)]["latency"][hw] = {"median_ms": ms, "p10_ms": ms, "p90_ms": ms,
                                              "runs": 1, "cpu_ops": est.cpu_ops}
    normalizers = {h: rows[NORMALIZER]["latency"][h]["median_ms"] for h in names}
    for row in rows.values():
        lat = [row["latency"][h]["median_ms"] for h in names]
        avg, mx = mn_norm(lat, [normalizers[h] for h in names])
        row["mn_norm_avg"], row["mn_norm_max"] = round(avg, 4), round(mx, 4)
        row["normalizer"] = (row["model"], row["width"]) == NORMALIZER
    return normalizers


def _write(out: Path, result: dict, names, plot: bool) -> None:
    columns = ["model", "width", "params_m", "madds_m", "imagenet_top1"]
    for h in names:
        columns += [f"{h}_ms", f"{h}_p10_ms", f"{h}_p90_ms"]
    columns += ["mn_norm_avg", "mn_norm_max"]
    tmp = out / ".benchmark.csv.tmp"
    with tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for row in result["rows"]:
            values = [row["model"], row["width"], row["params_m"], row["madds_m"],
                      "" if row["imagenet_top1"] is None else row["imagenet_top1"]]
            for h in names:
                lat = row["latency"][h]
                values += [lat["median_ms"], lat["p10_ms"], lat["p90_ms"]]
            values += [row["mn_norm_avg"], row["mn_norm_max"]]
            w.writerow(values)
    os.replace(tmp, out / "benchmark.csv")
    tmp = out / ".benchmark.json.tmp"
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, out / "benchmark.json")
    if plot:
        plot_results(result, out / "benchmark.png")


def plot_results(result: dict, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows, names = result["rows"], result["hardware"]
    use_acc = all(r["imagenet_top1"] is not None for r in rows)
    ylabel = "ImageNet top-1 (%)" if use_acc else "MAdds (M)"
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.8), dpi=100,
                             squeeze=False)
    for ax, hw in zip(axes[0], names):
        by_model: dict = {}
        for r in rows:
            by_model.setdefault(r["model"], []).append(r)
        palette = iter(["tab:blue", "tab:green", "tab:purple", "tab:brown", "tab:pink",
                        "tab:gray", "tab:olive", "tab:cyan"] * 4)
        for model, rs in sorted(by_model.items()):
            rs = sorted(rs, key=lambda r: r["width"])
            xs = [r["latency"][hw]["median_ms"] for r in rs]
            ys = [r["imagenet_top1"] if use_acc else r["madds_m"] for r in rs]
            hi = model in HIGHLIGHT
            ax.plot(xs, ys, marker="*" if hi else "o", ms=11 if hi else 5,
                    lw=2 if hi else 1, color=next(palette) if not hi else
                    ("tab:red" if model == "multi_max" else "tab:orange"),
                    label=model, zorder=3 if hi else 2)
            for r, x, y in zip(rs, xs, ys):
                ax.annotate(f"{r['width']:g}", (x, y), fontsize=6, xytext=(2, 2),
                            textcoords="offset points")
        ax.set_title(hw)
        ax.set_xlabel("latency (ms, median)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.suptitle(f"LiteRT (CPU) and vela (NPU), {result['config']['image_size']}px, "
                 f"{result['config']['threads']} thread(s)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def format_table(result: dict) -> str:
    names = result["hardware"]
    head = f"{'model':24s} {'wm':>5s} {'Params':>7s} {'MAdds':>8s} " + " ".join(
        f"{h:>14s}" for h in names) + f" {'avg':>6s} {'max':>6s}"
    lines = [head]
    left_on_cpu = []
    for r in result["rows"]:
        left_on_cpu += [f"{r['model']}@{r['width']:g} on {h}: {r['latency'][h]['cpu_ops']}"
                        for h in names if r["latency"][h].get("cpu_ops")]
        lines.append(f"{r['model']:24s} {r['width']:5.2f} {r['params_m']:7.2f} "
                     f"{r['madds_m']:8.1f} " + " ".join(
                         f"{r['latency'][h]['median_ms']:14.2f}" for h in names) +
                     f" {r['mn_norm_avg']:6.3f} {r['mn_norm_max']:6.3f}")
    if left_on_cpu:
        lines.append("ops vela leaves on the host CPU (not in the NPU estimates): "
                     + ", ".join(left_on_cpu))
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise SystemExit(f"unexpected arguments: {argv[1:]}")
    result = run_benchmark(
        FLAGS.models, FLAGS.widths, FLAGS.quantization, threads=FLAGS.threads,
        image_size=FLAGS.image_size, xnnpack=FLAGS.xnnpack, runs=FLAGS.runs,
        warmup=FLAGS.warmup, rounds=FLAGS.rounds, num_classes=FLAGS.num_classes,
        output_dir=FLAGS.output_dir, keep_tflite=FLAGS.keep_tflite, plot=FLAGS.plot,
        npu=FLAGS.npu)
    print(format_table(result))
    print(f"wrote {Path(FLAGS.output_dir) / 'benchmark.csv'}, benchmark.json"
          + (", benchmark.png" if FLAGS.plot else ""))
