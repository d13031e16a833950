"""Collect (architecture, latency) pairs for the cost models by measuring real models.

    python -m search.collect_latency --hardware=cpu_float,cpu_int8,cpu_ref_float \
        --num_archs=300 --space=multi_hw --image_size=224 --output=zoo/cost_models/data/cpu.csv

Architectures are sampled uniformly from the space (independent uniform choice per decision),
built with `mhmodels.build`, exported once per format the hardware need (float, int8) with
`mhmodels.export.export_tflite`, and measured with `mhmodels.latency.measure_tflite` (the
one measurement path). Every row is appended and fsync'ed as soon as it is measured, so an
interrupted run loses at most the architecture in flight; a rerun reads the rows already
there, never measures an architecture twice (keys are `space.encode(space.canonical(c))`),
drops a half-written last line and continues until the file holds `--num_archs`
architectures. The first row is MobileNetV1 1.0 (`arch=mobilenet_v1`), the normaliser C of
every hardware, measured the same way.

Uniform sampling makes half the blocks fused, and their MAdds dominate most sampled networks;
`--fused_prob=0.1 --anchors=multi_max,multi_avg` (another seed, another file) adds the
depthwise-heavy corner where the zoo's models live. The shipped data
(zoo/cost_models/data/cpu_latency.csv) merges such streams; see its README.

Columns: arch, image_size, madds_m, params_m, seconds, then per hardware `<hw>_ms` (the
statistic the cost models fit, `search.hardware.STATISTIC`: the minimum thread CPU time),
`<hw>_median_ms`, `<hw>_min_ms`.
"""
from __future__ import annotations

import csv
import io
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
from absl import app, flags

from search.hardware import NORMALIZER_MODEL, Hardware, export_bytes, parse_hardware_list

BASE_COLUMNS = ("arch", "image_size", "madds_m", "params_m", "seconds")


def columns_for(hardware: Sequence[Hardware]) -> list[str]:
    cols = list(BASE_COLUMNS)
    for hw in hardware:
        cols += [f"{hw.name}_ms", f"{hw.name}_median_ms", f"{hw.name}_min_ms"]
    return cols


def repair_and_read(path: Path, columns: Sequence[str]) -> list[dict]:
    """Rows already in `path` (created with a header if missing); a partial last line is cut.

    The header must equal `columns` (same hardware in the same order), else ValueError.
    """
    if not path.exists() or path.stat().st_size == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        _append(path, ",".join(columns) + "\n")
        return []
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        print(f"[collect] {path}: dropping a half-written last line ({len(data) - cut} bytes)",
              file=sys.stderr)
        with path.open("r+b") as f:
            f.truncate(cut)
            f.flush()
            os.fsync(f.fileno())
        data = data[:cut]
        if not data:
            _append(path, ",".join(columns) + "\n")
            return []
    reader = csv.reader(io.StringIO(data.decode("utf-8")))
    header = next(reader, None)
    if header != list(columns):
        raise ValueError(f"{path} has columns {header}, expected {list(columns)}: use another "
                         "--output for a different hardware set")
    rows = []
    for lineno, values in enumerate(reader, start=2):
        if len(values) != len(columns):
            print(f"[collect] {path}:{lineno}: skipping a malformed row", file=sys.stderr)
            continue
        rows.append(dict(zip(columns, values)))
    return rows


def _append(path: Path, text: str) -> None:
    with path.open("a", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _format_row(columns: Sequence[str], row: dict) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(
        [f"{row[c]:.4f}" if isinstance(row[c], float) else row[c] for c in columns])
    return out.getvalue()


def measure_model(model, hardware: Sequence[Hardware], image_size: int,
                  overrides: dict) -> dict:
    """Export `model` once per format and time it on every hardware: one CSV row's values."""
    from mhmodels.profile import count_layers
    counts = count_layers(model)
    row = {"madds_m": counts.madds / 1e6, "params_m": counts.params / 1e6}
    exported: dict[str, bytes] = {}
    for hw in hardware:
        if hw.quantization not in exported:
            exported[hw.quantization] = export_bytes(model, hw.quantization, image_size)
    for hw in hardware:
        result = hw.measure_tflite(exported[hw.quantization], **overrides)
        row[f"{hw.name}_ms"] = hw.latency_ms(result)
        row[f"{hw.name}_median_ms"] = result.median_ms
        row[f"{hw.name}_min_ms"] = result.min_ms
    return row


def sample(space, rng: np.random.Generator, fused_prob: float | None = None) -> np.ndarray:
    """Uniform sample; with `fused_prob`, each block's type is fused with that probability.

    Uniform sampling makes half the blocks fused, whose MAdds then dominate most sampled
    networks; a second stream with few fused blocks covers the depthwise-heavy corner of the
    space where Multi-AVG / Multi-MAX (and most search results) live.
    """
    c = space.sample(rng)
    if fused_prob is not None:
        from search.space import BLOCK_TYPES
        for d, name in enumerate(space.decisions):
            if name.name.endswith("/type"):
                c[d] = BLOCK_TYPES.index("fused_ibn") if rng.random() < fused_prob else \
                    BLOCK_TYPES.index("ibn")
    return c


def collect(hardware: Sequence[Hardware], num_archs: int, output: str | os.PathLike,
            space_name: str = "multi_hw", image_size: int = 224, seed: int = 0,
            overrides: dict | None = None, max_seconds: float | None = None,
            progress: bool = True, fused_prob: float | None = None,
            anchors: Sequence[str] = ()) -> int:
    """Append measurements until `output` holds `num_archs` architectures; returns the count.

    `anchors`: zoo model names inside the space (e.g. multi_max) measured first, as rows keyed
    by their choices like any sampled architecture."""
    import mhmodels
    from search.space import get_space

    for hw in hardware:
        if not hw.measurable:
            raise ValueError(f"hardware {hw.name!r} cannot be measured here")
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    space = get_space(space_name)
    path = Path(output)
    columns = columns_for(hardware)
    rows = repair_and_read(path, columns)
    sizes = {int(r["image_size"]) for r in rows}
    if sizes and sizes != {image_size}:
        raise ValueError(f"{path} holds image sizes {sorted(sizes)}, not {image_size}")
    done = {r["arch"] for r in rows}
    start = time.time()

    def write(key, model, t0):
        row = measure_model(model, hardware, image_size, overrides)
        row.update(arch=key, image_size=image_size, seconds=time.time() - t0)
        _append(path, _format_row(columns, row))
        done.add(key)

    if NORMALIZER_MODEL not in done:
        t0 = time.time()
        write(NORMALIZER_MODEL, mhmodels.build(NORMALIZER_MODEL, 1.0,
                                               input_shape=(image_size, image_size, 3)), t0)
    for name in anchors:
        key = space.encode(space.canonical(space.choices_for(mhmodels.get_spec(name))))
        if key not in done:
            t0 = time.time()
            write(key, mhmodels.build(space.decode(space.parse(key)),
                                      input_shape=(image_size, image_size, 3)), t0)
    have = len(done - {NORMALIZER_MODEL})
    rng = np.random.default_rng(seed)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=num_archs, initial=min(have, num_archs), desc="archs", unit="arch",
                   dynamic_ncols=True, file=sys.stderr)
    attempts = 0
    try:
        while have < num_archs:
            if max_seconds is not None and time.time() - start > max_seconds:
                print("[collect] time limit reached", file=sys.stderr)
                break
            attempts += 1
            if attempts > 100 * num_archs + 1000:
                raise RuntimeError("could not sample enough distinct architectures")
            key = space.encode(space.canonical(sample(space, rng, fused_prob)))
            if key in done:
                continue
            t0 = time.time()
            model = mhmodels.build(space.decode(space.parse(key)),
                                   input_shape=(image_size, image_size, 3))
            write(key, model, t0)
            del model
            have += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(s_per_arch=f"{time.time() - t0:.1f}")
            if have % 20 == 0:
                import keras
                keras.backend.clear_session()
    finally:
        if bar is not None:
            bar.close()
    return have


def define_flags():
    """Flags of the command line (defined only when run as a program: no clashes on import)."""
    flags.DEFINE_list("hardware", ["cpu_float", "cpu_int8", "cpu_ref_float"],
                      "Hardware to measure (LiteRT hardware of search.hardware).")
    flags.DEFINE_integer("num_archs", 200, "Collect until the file holds this many architectures "
                         "(the normaliser row not counted).")
    flags.DEFINE_string("space", "multi_hw", "Search space name (search.space.get_space).")
    flags.DEFINE_string("output", "zoo/cost_models/data/cpu_latency.csv", "CSV to append to.")
    flags.DEFINE_integer("image_size", 224, "Input resolution of the measured models.")
    flags.DEFINE_integer("seed", 0, "Sampling seed (a rerun with the same seed continues the "
                         "same sequence, skipping architectures already measured).")
    flags.DEFINE_integer("runs", None, "Timed runs per model (default: each hardware's own).")
    flags.DEFINE_integer("warmup", None, "Warm-up runs per model (default: each hardware's own).")
    flags.DEFINE_float("max_hours", None, "Stop after this much wall time.")
    flags.DEFINE_float("fused_prob", None, "Probability of a fused block (default: uniform "
                       "over the type decision, i.e. 0.5).")
    flags.DEFINE_list("anchors", [], "Zoo models inside the space measured first "
                      "(e.g. multi_avg,multi_max).")


def main(argv):
    del argv
    FLAGS = flags.FLAGS
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    hardware = parse_hardware_list(FLAGS.hardware)
    overrides = {"runs": FLAGS.runs, "warmup": FLAGS.warmup}
    n = collect(hardware, FLAGS.num_archs, FLAGS.output, FLAGS.space, FLAGS.image_size,
                FLAGS.seed, overrides,
                None if FLAGS.max_hours is None else FLAGS.max_hours * 3600.0,
                fused_prob=FLAGS.fused_prob, anchors=FLAGS.anchors)
    print(f"{FLAGS.output}: {n} architectures")


if __name__ == "__main__":
    define_flags()
    app.run(main)
