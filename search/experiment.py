"""`python -m search.experiment`: the paper's experiment (section 7.3, Tables 2 and 3).

    python -m search.experiment --output_dir=runs/experiment --seeds=3
    python -m search.experiment --output_dir=/tmp/exp --mode=small     # a few minutes (CI)

For every seed it runs, with one recipe for all:

1. one single-hardware search per hardware (``--metric=single``, paper eq. 6) and one
   multi-hardware search with f_avg and one with f_max (eq. 7, 8), every one with the same
   MobileNet-normalised target T (``--target``), so their results are comparable;
2. the random-architecture control: ``--random_k`` architectures drawn uniformly from the space
   whose predicted f_max is within ``--random_tolerance`` of the f_max search's result;
3. trains every searched model, the random ones and the zoo baselines (``--baselines``) at the
   proxy width with one identical recipe (``mhmodels.train``) and evaluates them on the
   held-out validation split;
4. measures every distinct architecture at width 1.0 on every hardware: LiteRT on this CPU
   (the minimum of ``--measure_rounds`` rounds over all architectures), vela's estimate for
   the Ethos-U NPUs (never the cost models), with MobileNetV1 measured in the same rounds as
   the normaliser C of MN-Norm.

Then it writes, into --output_dir: ``results.csv`` (one row per model and seed),
``table2.md`` / ``table2.csv`` (models: accuracy mean and spread over seeds, latency per
hardware, MN-Norm avg and max), ``table3.md`` / ``table3.csv`` (search cost: N single-hardware searches vs
one multi-hardware search, and which single-hardware search won per seed), ``structure.md``
(section 7.2's view of every searched model: kernels, expansions, fused blocks, where the
MAdds sit by stride), ``fmax_vs_accuracy.png`` and ``latency_bars.png``.

Every unit of work (a search, a training, a measurement) writes its result file atomically
when it is done; a rerun with the same --output_dir skips finished units, and an interrupted
search or training resumes from its own checkpoint. More --seeds later reuse the earlier ones.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from absl import flags

from mhmodels import cli

FLAGS = flags.FLAGS
log = logging.getLogger("search.experiment")

# The CPU and the two NPUs that disagree most (cpu_int8 ranks architectures like cpu_float:
# correlation 0.91 at matched MAdds, README "Hardware diversity"); one search each.
DEFAULT_HARDWARE = ("cpu_float", "ethos_u55", "ethos_u85")
DEFAULT_BASELINES = ("multi_avg", "multi_max", "mobilenet_v2", "mobilenet_v3_large_min",
                     "mobilenet_edgetpu")
MULTI_METRICS = ("avg", "max")
NORMALIZER = "mobilenet_v1"
SETTINGS_JSON = "experiment.json"


@dataclass
class ExperimentConfig:
    """Everything the experiment's results depend on (the flags, as one object)."""

    output_dir: str
    hardware: tuple[str, ...] = DEFAULT_HARDWARE
    seeds: int = 3
    search_steps: int = 600
    train_steps: int = 500
    width: float = 0.25  # proxy width: supernet during search, every model in training
    image_size: int = 32
    batch_size: int = 32
    target: float = 1.0
    beta: float = -0.07
    baselines: tuple[str, ...] = DEFAULT_BASELINES
    random_k: int = 3
    random_tolerance: float = 0.1
    measure_image_size: int = 224
    measure_rounds: int = 5  # timed hardware: rounds over all architectures, min kept
    dataset: str = "digits"
    data_dir: str | None = None

    # Fields that may change between runs on one --output_dir (the rest must not).
    FREE = ("output_dir", "seeds", "measure_rounds")

    def identity(self) -> dict:
        data = dataclasses.asdict(self)
        data["hardware"], data["baselines"] = list(self.hardware), list(self.baselines)
        return {k: v for k, v in data.items() if k not in self.FREE}


# --mode=small: every kind of unit once, each as small as it gets (CI).
SMALL = dict(seeds=1, search_steps=8, train_steps=8, batch_size=16, random_k=1,
             measure_image_size=32, measure_rounds=2, baselines=("multi_max",))


def validate(config: ExperimentConfig) -> None:
    """One line naming the flag for any setting the experiment cannot run with."""
    from .hardware import get_hardware
    hardware = list(config.hardware)
    if len(hardware) < 2:
        raise ValueError("--hardware: name at least two hardware (the experiment compares "
                         "single- with multi-hardware searches)")
    if len(set(hardware)) != len(hardware):
        raise ValueError(f"--hardware={','.join(hardware)}: a hardware is listed twice")
    for name in hardware:
        try:
            hw = get_hardware(name)
        except (ValueError, TypeError) as err:
            raise ValueError(f"--hardware: {err}") from None
        if not hw.measurable:
            raise ValueError(f"--hardware={name}: cannot measure new architectures (every "
                             "model of the experiment is measured on every hardware)")
    for flag, value, low in (("seeds", config.seeds, 1), ("search_steps", config.search_steps, 1),
                             ("train_steps", config.train_steps, 1),
                             ("batch_size", config.batch_size, 1),
                             ("random_k", config.random_k, 0),
                             ("image_size", config.image_size, 32),
                             ("measure_image_size", config.measure_image_size, 32),
                             ("measure_rounds", config.measure_rounds, 1)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"--{flag}={value}: must be an integer >= {low}")
    if not config.width > 0:
        raise ValueError(f"--width={config.width}: must be > 0")
    if not config.target > 0:
        raise ValueError(f"--target={config.target}: must be > 0")
    if config.beta > 0:
        raise ValueError(f"--beta={config.beta}: must be <= 0 (a latency penalty)")
    if not 0 < config.random_tolerance < 1:
        raise ValueError(f"--random_tolerance={config.random_tolerance}: must be in (0, 1)")
    import mhmodels
    for name in list(config.baselines) + [NORMALIZER]:
        try:
            mhmodels.get_spec(name)
        except ValueError as err:
            raise ValueError(f"--baselines: {err}") from None


# --------------------------------------------------------------------------------------------
# Units of work: each is a function of plain data that writes one result file when done.

def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9_]+", "_", text.lower()).strip("_")


def entry_name(seed: int, label: str) -> str:
    return f"exp_s{seed}_{label}"


def _search_labels(config: ExperimentConfig) -> list[tuple[str, str, tuple[str, ...]]]:
    """(label, metric, hardware) of every search of one seed."""
    out = [(f"single_{_slug(hw)}", "single", (hw,)) for hw in config.hardware]
    return out + [(f"searched_{m}", m, tuple(config.hardware)) for m in MULTI_METRICS]


def _write_json(path: str | os.PathLike, data: Any) -> None:
    from mhmodels.files import atomic_write
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def _read_json(path: str | os.PathLike, what: str) -> Any:
    from mhmodels.files import read_json
    return read_json(path, what, hint="delete it to redo that unit")


def run_search_unit(config: ExperimentConfig, seed: int, label: str, metric: str,
                    hardware: Sequence[str], done_path: str) -> dict:
    """One search (resuming from its checkpoint); its zoo entry goes to <output_dir>/zoo."""
    from .config import SearchConfig
    from .loop import run_search
    out = Path(config.output_dir)
    model_dir = out / f"seed{seed}" / "search" / label
    resumed = (model_dir / "checkpoints").is_dir()
    steps = config.search_steps
    search = SearchConfig(
        model_dir=str(model_dir), hardware=tuple(hardware), metric=metric, beta=config.beta,
        target=config.target, dataset=config.dataset, data_dir=config.data_dir,
        image_size=config.image_size, batch_size=config.batch_size, steps=steps,
        supernet_width=config.width, seed=seed, checkpoint_every=max(10, steps // 4),
        keep_checkpoints=1, log_every=max(1, steps // 4), entry_name=entry_name(seed, label),
        zoo_dir=str(out / "zoo"))
    start = time.time()
    result = run_search(search)
    record = {"kind": "search", "seed": seed, "label": label, "metric": metric,
              "hardware": list(hardware), "entry_path": result.entry_path,
              "steps": int(result.total_steps), "wall_s": time.time() - start,
              "resumed": bool(resumed or result.already_finished),
              "choices": [int(c) for c in result.choices],
              "predicted_latency_ms": result.predicted_latency_ms,
              "predicted_f_max": result.f_max, "predicted_f_avg": result.f_avg}
    _write_json(done_path, record)
    return record


def run_train_unit(config: ExperimentConfig, seed: int, label: str, model: str,
                   done_path: str) -> dict:
    """Train one model with the experiment's recipe (resuming) and evaluate it."""
    from mhmodels import train as train_lib
    model_dir = Path(config.output_dir) / f"seed{seed}" / "train" / label
    start = time.time()
    result = train_lib.train(train_lib.TrainConfig(
        model=model, width=config.width, dataset=config.dataset, data_dir=config.data_dir,
        image_size=config.image_size, batch_size=config.batch_size, steps=config.train_steps,
        seed=seed, model_dir=str(model_dir), mode="train_and_eval", eval_every_epoch=False,
        checkpoint_every=max(10, config.train_steps // 3), keep_checkpoints=1, progress=False,
        log_every=max(1, config.train_steps)))
    record = {"kind": "train", "seed": seed, "label": label, "model": model,
              "top1": float(result.metrics["top1"]), "top5": result.metrics.get("top5"),
              "eval_count": int(result.metrics["count"]), "steps": int(result.step),
              "wall_s": time.time() - start}
    _write_json(done_path, record)
    return record


def _run_unit(args: tuple) -> dict:
    """Entry point of a worker process (--jobs > 1): one unit, then the process exits."""
    kind, config, kwargs = args
    cli.quiet_tensorflow_import([])
    _make_zoo_visible(config)
    # The experiment prints one line per unit; the searches keep their few progress lines.
    logging.getLogger("mhmodels.train").setLevel(logging.WARNING)
    if kind == "search":
        return run_search_unit(config, **kwargs)
    return run_train_unit(config, **kwargs)


def _make_zoo_visible(config: ExperimentConfig) -> None:
    from .config import make_zoo_visible
    zoo = Path(config.output_dir) / "zoo"
    zoo.mkdir(parents=True, exist_ok=True)
    make_zoo_visible(zoo)


def _run_units(config: ExperimentConfig, work: list[tuple[str, dict]], jobs: int,
               what: str) -> None:
    """Run the units not done yet: in this process (jobs=1) or in `jobs` worker processes."""
    todo = [(kind, kwargs) for kind, kwargs in work if not os.path.isfile(kwargs["done_path"])]
    done = len(work) - len(todo)
    if done:
        print(f"{what}: {done} of {len(work)} already done (kept)", flush=True)
    if not todo:
        return
    start = time.time()

    def report(i: int, record: dict) -> None:
        extra = (f"predicted f_max {record['predicted_f_max']:.3f}" if record["kind"] == "search"
                 else f"top-1 {record['top1']:.4f}")
        print(f"  [{done + i}/{len(work)}] {record['kind']} seed {record['seed']} "
              f"{record['label']}: {record['wall_s']:.0f} s, {extra}  "
              f"({time.time() - start:.0f} s elapsed)", flush=True)

    if jobs <= 1:
        import keras
        for i, (kind, kwargs) in enumerate(todo, 1):
            record = _run_unit((kind, config, kwargs))
            keras.backend.clear_session()
            report(i, record)
        return
    import multiprocessing
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(jobs, maxtasksperchild=1) as pool:
        args = [(kind, config, kwargs) for kind, kwargs in todo]
        for i, record in enumerate(pool.imap_unordered(_run_unit, args), 1):
            report(i, record)


# --------------------------------------------------------------------------------------------
# The random control

def random_control(config: ExperimentConfig, seed: int, searched_max: dict, space,
                   cost_models) -> list[str]:
    """Entry paths of `random_k` uniform architectures at the f_max search's predicted f_max.

    Drawn once per seed (deterministic in the seed) and recorded, so a rerun trains the same.
    """
    from mhmodels.metrics import f_max
    out = Path(config.output_dir)
    record_path = out / f"seed{seed}" / "random.json"
    if record_path.is_file():
        return _read_json(record_path, "random control")["entry_paths"]
    normalizers = [float(c.normalizer_ms) for c in cost_models]
    target = float(searched_max["predicted_f_max"])
    rng = np.random.default_rng([seed, 7919])
    found: list[np.ndarray] = []
    tries = 0
    while len(found) < config.random_k and tries < 200_000:
        batch = np.stack([space.sample(rng) for _ in range(256)])
        tries += len(batch)
        lat = np.stack([np.asarray(c.predict(batch)).reshape(-1) for c in cost_models], -1)
        fm = np.asarray(f_max(lat, normalizers))
        for choices in batch[np.abs(fm / target - 1.0) <= config.random_tolerance]:
            if len(found) < config.random_k:
                found.append(choices)
    if len(found) < config.random_k:
        raise ValueError(f"seed {seed}: only {len(found)} of {config.random_k} random "
                         f"architectures within {config.random_tolerance:.0%} of f_max "
                         f"{target:.3f} in {tries} draws; raise --random_tolerance")
    paths = []
    for i, choices in enumerate(found):
        name = entry_name(seed, f"random_{i}")
        path = out / "zoo" / f"{name}.json"
        spec = space.decode(choices, name, description=(
            f"Uniform random architecture of {space.name} at the predicted f_max of "
            f"{entry_name(seed, 'searched_max')} (random control of search.experiment)."))
        if not path.is_file():
            _write_json(path, json.loads(spec.to_json(extra={"provenance": {
                "choices": [int(c) for c in choices], "key": space.encode(choices)}})))
        paths.append(str(path))
    _write_json(record_path, {"seed": seed, "target_f_max": target, "draws": tries,
                              "entry_paths": paths})
    return paths


# --------------------------------------------------------------------------------------------
# Measurement and structure

def spec_digest(spec) -> str:
    """The architecture's identity: its spec without name and description."""
    data = spec.to_dict()
    for key in ("name", "description", "reference"):
        data.pop(key, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def madds_by_stride(spec, image_size: int = 224) -> dict[int, float]:
    """{output stride: MAdds (M)} of the spec at width 1.0 (the one counting function)."""
    from mhmodels.profile import profile
    prof = profile(spec, 1.0, input_shape=(image_size, image_size, 3))
    out: dict[int, float] = {}
    for row in prof.rows:
        # Convs after the global pool (1x1 maps) and the classifier count as the stride-32 head.
        spatial = row.output_shape[0] if len(row.output_shape) == 3 else None  # (H, W, C)
        stride = min(32, int(round(image_size / spatial))) if spatial else 32
        out[stride] = out.get(stride, 0.0) + row.madds / 1e6
    return dict(sorted(out.items()))


def _measure_path(config: ExperimentConfig, digest: str) -> Path:
    return Path(config.output_dir) / "measure" / f"{digest}.json"


def measure_all_architectures(config: ExperimentConfig, todo: dict[str, tuple[str, Any]],
                              hardware) -> dict[str, dict]:
    """Measure every architecture of `todo` ({digest: (label, spec)}) not measured yet.

    Each is built at width 1.0 and exported once per format; deterministic hardware (vela) is
    measured once; timed hardware (LiteRT on this CPU) in `measure_rounds` rounds over all the
    architectures, keeping each one's minimum, so a burst of load on the host moves no single
    model. One JSON per architecture (cached: a rerun measures only what is missing).
    """
    import mhmodels
    from mhmodels.profile import profile
    from .hardware import export_formats
    results = {d: _read_json(_measure_path(config, d), "measurement") for d in todo
               if _measure_path(config, d).is_file()}
    pending = {d: v for d, v in todo.items() if d not in results}
    if not pending:
        return results
    size = config.measure_image_size
    timed = [hw for hw in hardware if not hw.deterministic]
    exported: dict[str, dict[str, bytes]] = {}
    records: dict[str, dict] = {}
    for i, (digest, (label, spec)) in enumerate(sorted(pending.items()), 1):
        start = time.time()
        latency = {hw.name: float("nan") for hw in hardware}
        try:
            model = mhmodels.build(spec, 1.0, input_shape=(size, size, 3))
            files = export_formats(model, [hw.quantization for hw in hardware], size)
            for hw in hardware:
                if hw.deterministic:
                    latency[hw.name] = hw.latency_ms(hw.measure_tflite(files[hw.quantization]))
            exported[digest] = files
        except Exception as err:  # one failing export is not fatal: NaN, retried next run
            print(f"  ({label}: measurement failed: {err})", flush=True)
        prof = profile(spec, 1.0)
        records[digest] = {
            "label": label, "image_size": size, "latency_ms": latency,
            "rounds_ms": {hw.name: [] for hw in timed}, "params_m": prof.params_m,
            "madds_m": prof.madds_m,
            "madds_m_by_stride": {str(k): v for k, v in madds_by_stride(spec).items()},
            "export_s": time.time() - start}
        print(f"  exported [{i}/{len(pending)}] {label}: " + ", ".join(
            f"{h} {v:.2f} ms" for h, v in latency.items() if np.isfinite(v)), flush=True)
    for r in range(config.measure_rounds if timed else 0):
        for digest, files in sorted(exported.items()):
            record = records[digest]
            for hw in timed:
                value = hw.latency_ms(hw.measure_tflite(files[hw.quantization]))
                record["rounds_ms"][hw.name].append(value)
                record["latency_ms"][hw.name] = min(record["rounds_ms"][hw.name])
        print(f"  timing round {r + 1}/{config.measure_rounds} on "
              f"{', '.join(hw.name for hw in timed)} done", flush=True)
    for digest, record in records.items():
        if all(np.isfinite(v) for v in record["latency_ms"].values()):
            _write_json(_measure_path(config, digest), record)
        results[digest] = record
    return results


def structure(spec) -> dict:
    """Section 7.2's view of a model: per stage its blocks, and the totals."""
    stages: list[list] = []
    for block in spec.blocks:  # a stage: a run of blocks of one resolution and width
        if not stages or block.stride > 1 or block.filters != stages[-1][-1].filters:
            stages.append([])
        stages[-1].append(block)
    kinds = [b.kind for b in spec.blocks]
    expansions = [b.expansion for b in spec.blocks if b.expansion]
    return {
        "blocks": len(spec.blocks),
        "fused": sum(k == "fused_ibn" for k in kinds),
        "kernel5": sum((b.kernel or 3) == 5 for b in spec.blocks),
        "mean_expansion": float(np.mean(expansions)) if expansions else float("nan"),
        "stages": [" ".join(f"{'F' if b.kind == 'fused_ibn' else 'I'}{b.expansion:g}"
                            f"k{b.kernel or 3}" for b in stage) + f" ({stage[-1].filters})"
                   for stage in stages],
    }


# --------------------------------------------------------------------------------------------
# Report

def _group(label: str) -> str:
    if label.startswith("single_"):
        return "single-hardware search"
    if label.startswith("searched_"):
        return "multi-hardware search"
    if label.startswith("random_"):
        return "random (control)"
    return "zoo baseline"


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray([x for x in values if np.isfinite(x)], np.float64)
    if not len(v):
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def _pm(values: Sequence[float], digits: int) -> str:
    mean, std = _mean_std(values)
    if len(values) < 2:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _row_label(label: str) -> str:
    return "random (best of K)" if label == "random_best" else label


def build_rows(hardware, searches: dict, trainings: dict, normalizers: list[float]
               ) -> list[dict]:
    """One row per (seed, model): accuracy, measured latency per hardware, MN-Norm, cost."""
    from mhmodels.metrics import mn_norm
    rows = []
    for (seed, label), train in sorted(trainings.items()):
        meas = train["measurement"]
        lat = [meas["latency_ms"][hw.name] for hw in hardware]
        fa, fm = mn_norm(lat, normalizers)
        search = searches.get((seed, label), {})
        rows.append({
            "seed": seed, "group": _group(label), "label": label, "model": train["model"],
            "architecture": train["digest"],
            "top1": train["top1"], **{f"latency_ms_{hw.name}": v for hw, v in
                                      zip(hardware, lat)},
            "mn_norm_avg": fa, "mn_norm_max": fm, "params_m": meas["params_m"],
            "madds_m": meas["madds_m"], "search_steps": search.get("steps", ""),
            "search_wall_s": search.get("wall_s", ""),
            "predicted_f_max": search.get("predicted_f_max", "")})
    return rows


def _csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue()


def _order(config: ExperimentConfig) -> list[str]:
    labels = [label for label, _, _ in _search_labels(config)]
    return labels + ["random_best"] + list(config.baselines)


def table2(config: ExperimentConfig, rows: list[dict], hardware, normalizers) -> tuple[str, list]:
    """Markdown and CSV rows of Table 2: every model, mean (± std) over seeds."""
    with_best = list(rows) + _best_random_rows(rows)
    agg = []
    for label in _order(config):
        mine = [r for r in with_best if r["label"] == label]
        if not mine:
            continue
        agg.append({
            "label": _row_label(label), "group": mine[0]["group"], "seeds": len(mine),
            "top1": [r["top1"] for r in mine],
            **{hw.name: [r[f"latency_ms_{hw.name}"] for r in mine] for hw in hardware},
            "mn_norm_avg": [r["mn_norm_avg"] for r in mine],
            "mn_norm_max": [r["mn_norm_max"] for r in mine],
            "madds_m": [r["madds_m"] for r in mine]})
    head = (["model", "group", "top-1 (%)"] + [f"{hw.name} (ms)" for hw in hardware]
            + ["MN-Norm avg", "MN-Norm max", "MAdds (M)"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines.append("| " + " | ".join([NORMALIZER + " (C)", "normaliser", "-"] +
                                    [f"{c:.2f}" for c in normalizers] + ["1.000", "1.000", "-"])
                 + " |")
    csv_rows = []
    for a in agg:
        best = a["label"] in ("searched_max",)
        cells = [f"**{a['label']}**" if best else a["label"], a["group"],
                 _pm([100 * v for v in a["top1"]], 1)]
        cells += [_pm(a[hw.name], 2) for hw in hardware]
        cells += [_pm(a["mn_norm_avg"], 3), _pm(a["mn_norm_max"], 3), _pm(a["madds_m"], 0)]
        lines.append("| " + " | ".join(cells) + " |")
        csv_row = {"model": a["label"], "group": a["group"], "seeds": a["seeds"]}
        for key in ["top1"] + [hw.name for hw in hardware] + ["mn_norm_avg", "mn_norm_max",
                                                               "madds_m"]:
            csv_row[f"{key}_mean"], csv_row[f"{key}_std"] = _mean_std(a[key])
        csv_rows.append(csv_row)
    return "\n".join(lines) + "\n", csv_rows


def _best_random_rows(rows: list[dict]) -> list[dict]:
    """Per seed, the random architecture with the best accuracy (the control's number)."""
    out = []
    for seed in sorted({r["seed"] for r in rows}):
        mine = [r for r in rows if r["seed"] == seed and r["group"] == "random (control)"]
        if mine:
            out.append({**max(mine, key=lambda r: r["top1"]), "label": "random_best"})
    return out


def table3(config: ExperimentConfig, rows: list[dict]) -> tuple[str, list[dict]]:
    """Search cost vs result: N single-hardware searches (keep the best f_max) vs one search.

    Returns the markdown and the CSV rows (mean and std over seeds)."""
    seeds = sorted({r["seed"] for r in rows})
    n = len(config.hardware)
    strategies = []
    winners = []
    single = {"name": f"{n} single-hardware searches, best measured MN-Norm max kept",
              "searches": n, "wall": [], "steps": [], "fmax": [], "top1": []}
    multi = {m: {"name": f"one multi-hardware search ({m})", "searches": 1, "wall": [],
                 "steps": [], "fmax": [], "top1": []} for m in MULTI_METRICS}
    for seed in seeds:
        mine = {r["label"]: r for r in rows if r["seed"] == seed}
        singles = [mine[label] for label, metric, _ in _search_labels(config)
                   if metric == "single" and label in mine]
        if singles:
            best = min(singles, key=lambda r: r["mn_norm_max"])
            winners.append(f"seed {seed}: {best['label']}")
            single["wall"].append(sum(float(r["search_wall_s"]) for r in singles))
            single["steps"].append(sum(int(r["search_steps"]) for r in singles))
            single["fmax"].append(best["mn_norm_max"])
            single["top1"].append(best["top1"])
        for m in MULTI_METRICS:
            r = mine.get(f"searched_{m}")
            if r:
                multi[m]["wall"].append(float(r["search_wall_s"]))
                multi[m]["steps"].append(int(r["search_steps"]))
                multi[m]["fmax"].append(r["mn_norm_max"])
                multi[m]["top1"].append(r["top1"])
    strategies = [single] + [multi[m] for m in MULTI_METRICS]
    lines = ["| strategy | searches | search wall (s) | search steps | MN-Norm max | top-1 (%) |",
             "|---|---|---|---|---|---|"]
    for s in strategies:
        lines.append(f"| {s['name']} | {s['searches']} | {_pm(s['wall'], 0)} | "
                     f"{_pm(s['steps'], 0)} | {_pm(s['fmax'], 3)} | "
                     f"{_pm([100 * v for v in s['top1']], 1)} |")
    lines += ["", "Best single-hardware search by measured MN-Norm max: " + "; ".join(winners)
              + "."]
    csv_rows = []
    for s in strategies:
        row = {"strategy": s["name"], "searches": s["searches"], "seeds": len(s["fmax"])}
        for key in ("wall", "steps", "fmax", "top1"):
            row[f"{key}_mean"], row[f"{key}_std"] = _mean_std(s[key])
        csv_rows.append(row)
    return "\n".join(lines) + "\n", csv_rows


def structure_md(config: ExperimentConfig, specs: dict, measurements: dict) -> str:
    lines = ["| model | seed | blocks | fused | 5x5 | mean expansion | stages (F/I = fused / "
             "regular IBN, expansion, kernel; (filters)) | MAdds share by stride 2/4/8/16/32 |",
             "|---|---|---|---|---|---|---|---|"]
    for (seed, label), spec in sorted(specs.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        s = structure(spec)
        by = {int(k): v for k, v in measurements[(seed, label)]["madds_m_by_stride"].items()}
        total = sum(by.values()) or 1.0
        share = " / ".join(f"{100 * by.get(k, 0.0) / total:.0f}%" for k in (2, 4, 8, 16, 32))
        lines.append(f"| {label} | {seed} | {s['blocks']} | {s['fused']} | {s['kernel5']} | "
                     f"{s['mean_expansion']:.1f} | {' · '.join(s['stages'])} | {share} |")
    return "\n".join(lines) + "\n"


def plots(config: ExperimentConfig, rows: list[dict], hardware, normalizers) -> list[str]:
    """fmax_vs_accuracy.png and latency_bars.png in the output dir."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out = Path(config.output_dir)
    markers = {"single-hardware search": "o", "multi-hardware search": "*",
               "random (control)": "x", "zoo baseline": "^"}
    labels = [label for label in _order(config) if label != "random_best"]
    labels += sorted({r["label"] for r in rows if r["group"] == "random (control)"})
    palette = plt.get_cmap("tab20").colors
    colour = {label: palette[i % len(palette)] for i, label in enumerate(labels)}
    fig, ax = plt.subplots(figsize=(8, 5.2))
    seen = set()
    for r in rows:
        random_row = r["group"] == "random (control)"
        label = "random (control)" if random_row else r["label"]
        ax.scatter(r["mn_norm_max"], 100 * r["top1"], marker=markers[r["group"]],
                   color="0.45" if random_row else colour[r["label"]],
                   s=140 if r["group"] == "multi-hardware search" else 55, alpha=0.9,
                   linewidths=1.2 if random_row else 0.4,
                   edgecolors=None if random_row else "k",
                   label=None if label in seen else label)
        seen.add(label)
    ax.axvline(config.target, color="k", lw=0.6, ls=":")
    ax.set_xlabel("MN-Norm max (measured worst case over " + ", ".join(h.name for h in hardware)
                  + "; lower is better)")
    ax.set_ylabel(f"top-1 (%) on {config.dataset} validation, width {config.width}")
    ax.set_title("Single- vs multi-hardware search (each point: one seed)")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    paths = [str(out / "fmax_vs_accuracy.png")]
    _save(fig, paths[0])

    labels = [label for label in _order(config) if label != "random_best"
              and any(r["label"] == label for r in rows)]
    fig, ax = plt.subplots(figsize=(max(7.5, 0.7 * len(labels) * len(hardware) / 2), 4.5))
    bar = 0.8 / len(hardware)
    for j, hw in enumerate(hardware):
        means = [np.nanmean([r[f"latency_ms_{hw.name}"] / normalizers[j] for r in rows
                             if r["label"] == label]) for label in labels]
        ax.bar(np.arange(len(labels)) + (j - (len(hardware) - 1) / 2) * bar, means, bar,
               label=hw.name)
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_xticks(np.arange(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(f"latency / {NORMALIZER} (measured, mean over seeds)")
    ax.set_title("Normalised latency per hardware (1.0 = MobileNetV1)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(str(out / "latency_bars.png"))
    _save(fig, paths[1])
    return paths


def _save(fig, path: str) -> None:
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    from mhmodels.files import atomic_write
    atomic_write(path, buf.getvalue())


# --------------------------------------------------------------------------------------------
# The experiment

def check_settings(config: ExperimentConfig) -> None:
    """The output dir holds this experiment (or nothing): refuse other settings, record ours."""
    path = Path(config.output_dir) / SETTINGS_JSON
    if path.is_file():
        saved = _read_json(path, "experiment settings")
        diff = [f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in config.identity().items()
                if saved.get(k) != v]
        if diff:
            raise ValueError(f"{config.output_dir} holds an experiment with other settings "
                             f"({'; '.join(diff)}); use a new --output_dir or the same flags")
        return
    _write_json(path, config.identity())


def run_experiment(config: ExperimentConfig, jobs: int = 1) -> dict:
    """Run (or resume) the experiment; returns {'rows', 'paths'}. Holds --output_dir's
    single-writer lock (mhmodels.locking): a second experiment there refuses."""
    from mhmodels.locking import run_lock
    validate(config)
    with run_lock(config.output_dir, "experiment", flag="--output_dir"):
        return _run_experiment(config, jobs)


def _run_experiment(config: ExperimentConfig, jobs: int) -> dict:
    from mhmodels.files import check_writable_dir
    from mhmodels.registry import read_entry
    from .hardware import get_hardware
    from .loop import load_cost_models
    from .space import get_space

    validate(config)
    check_writable_dir(config.output_dir, "--output_dir")
    check_settings(config)
    _make_zoo_visible(config)
    out = Path(config.output_dir)
    seeds = list(range(config.seeds))
    hardware = [get_hardware(h) for h in config.hardware]
    space = get_space("multi_hw")
    cost_models = load_cost_models(config.hardware, space)

    # 1. Searches.
    work = []
    for seed in seeds:
        for label, metric, hws in _search_labels(config):
            done = str(out / f"seed{seed}" / "search" / f"{label}.done.json")
            work.append(("search", dict(seed=seed, label=label, metric=metric,
                                        hardware=hws, done_path=done)))
    _run_units(config, work, jobs, "searches")
    searches = {(kw["seed"], kw["label"]): _read_json(kw["done_path"], "search result")
                for _, kw in work}

    # 2. The random control, 3. trainings.
    models: dict[tuple[int, str], str] = {}
    for seed in seeds:
        for label, _, _ in _search_labels(config):
            models[(seed, label)] = searches[(seed, label)]["entry_path"]
        if config.random_k:
            paths = random_control(config, seed, searches[(seed, "searched_max")], space,
                                   cost_models)
            models.update({(seed, f"random_{i}"): p for i, p in enumerate(paths)})
        models.update({(seed, name): name for name in config.baselines})
    work = [("train", dict(seed=seed, label=label, model=model,
                           done_path=str(out / f"seed{seed}" / "train" / f"{label}.done.json")))
            for (seed, label), model in models.items()]
    _run_units(config, work, jobs, "trainings")
    trainings = {(kw["seed"], kw["label"]): _read_json(kw["done_path"], "training result")
                 for _, kw in work}

    # 4. Measurements (one process, nothing else running: CPU timings).
    import mhmodels
    specs = {key: (read_entry(Path(m)).spec if m.endswith(".json") else mhmodels.get_spec(m))
             for key, m in models.items()}
    normalizer = mhmodels.get_spec(NORMALIZER)
    distinct = {spec_digest(normalizer): (NORMALIZER, normalizer)}
    for (seed, label), spec in sorted(specs.items()):
        distinct.setdefault(spec_digest(spec), (label, spec))
    print(f"measuring {len(distinct)} distinct architectures (with {NORMALIZER}) at "
          f"{config.measure_image_size}x{config.measure_image_size} on "
          f"{', '.join(config.hardware)}", flush=True)
    by_digest = measure_all_architectures(config, distinct, hardware)
    reference = by_digest[spec_digest(normalizer)]
    normalizers = [reference["latency_ms"][hw.name] for hw in hardware]
    measurements = {key: by_digest[spec_digest(spec)] for key, spec in specs.items()}
    for key in trainings:
        trainings[key]["measurement"] = measurements[key]
        trainings[key]["digest"] = spec_digest(specs[key])

    # 5. Report.
    rows = build_rows(hardware, searches, trainings, normalizers)
    t2_md, t2_rows = table2(config, rows, hardware, normalizers)
    t3_md, t3_rows = table3(config, rows)
    searched = {key: spec for key, spec in specs.items()
                if key[1].startswith(("single_", "searched_"))}
    from mhmodels.files import atomic_write
    header = (f"Proxy task: {config.dataset} at {config.image_size}x{config.image_size}, width "
              f"{config.width}; {len(seeds)} seed(s); search {config.search_steps} steps, "
              f"training {config.train_steps} steps (batch {config.batch_size}); latency "
              f"measured at {config.measure_image_size}x{config.measure_image_size}, width 1.0, "
              f"batch 1; target T = {config.target}.\n\n")
    paths = {name: str(out / name) for name in ("results.csv", "table2.md", "table2.csv",
                                                "table3.md", "table3.csv", "structure.md")}
    atomic_write(paths["results.csv"], _csv_text(rows))
    atomic_write(paths["table2.md"], header + t2_md)
    atomic_write(paths["table2.csv"], _csv_text(t2_rows))
    atomic_write(paths["table3.md"], header + t3_md)
    atomic_write(paths["table3.csv"], _csv_text(t3_rows))
    atomic_write(paths["structure.md"], structure_md(config, searched, measurements))
    for path in plots(config, rows, hardware, normalizers):
        paths[Path(path).name] = path
    print("\n" + header + t2_md + "\n" + t3_md, flush=True)
    print("wrote " + ", ".join(sorted(paths.values())), flush=True)
    return {"rows": rows, "paths": paths, "normalizers": normalizers}


# --------------------------------------------------------------------------------------------
# The command line

def define_flags() -> None:
    """Flags of the command line (defined only when run as a program: no clashes on import)."""
    flags.DEFINE_string("output_dir", None, "Directory of the experiment: searches, trainings, "
                        "measurements and the report; re-use it to resume.")
    flags.DEFINE_enum("mode", "full", ["full", "small"], "full: the defaults below; small: one "
                      "seed, 8 steps, one baseline, latency at 32x32 (a few minutes: CI). "
                      "Flags given explicitly override either.")
    flags.DEFINE_list("hardware", list(DEFAULT_HARDWARE), "Hardware of the experiment "
                      "(search.hardware names, measurable here); one single-hardware search each.")
    flags.DEFINE_integer("seeds", 3, "Seeds 0..N-1 of every search, training and random draw.")
    flags.DEFINE_integer("search_steps", 600, "Steps of every search.")
    flags.DEFINE_integer("train_steps", 500, "Training steps of every model (one recipe).")
    flags.DEFINE_float("width", 0.25, "Proxy width: of the supernet and of every trained model.")
    flags.DEFINE_integer("image_size", 32, "Image size of search and training.")
    flags.DEFINE_integer("batch_size", 32, "Batch size of search and training.")
    flags.DEFINE_float("target", 1.0, "MN-Norm target T of every search (single: L/C of its "
                       "hardware; avg / max: f_avg / f_max).")
    flags.DEFINE_float("beta", -0.07, "Reward latency coefficient of every search.")
    flags.DEFINE_list("baselines", list(DEFAULT_BASELINES), "Zoo models trained and measured "
                      "beside the searched ones.")
    flags.DEFINE_integer("random_k", 3, "Random architectures per seed at the f_max search's "
                         "predicted f_max (0: no random control).")
    flags.DEFINE_float("random_tolerance", 0.1, "Relative f_max tolerance of the random control.")
    flags.DEFINE_integer("measure_image_size", 224, "Input size of the latency measurements.")
    flags.DEFINE_integer("measure_rounds", 5, "Timing rounds over all architectures on timed "
                         "hardware (this CPU); each architecture's minimum is kept.")
    flags.DEFINE_string("dataset", "digits", "Dataset of search and training "
                        "(mhmodels.data.make_dataset names).")
    flags.DEFINE_string("data_dir", None, "Data dir of --dataset.")
    flags.DEFINE_integer("jobs", 1, "Searches / trainings run in this many processes at once "
                         "(measurements always run one at a time).")
    flags.mark_flag_as_required("output_dir")

FLAG_GROUPS = {
    "experiment": ("output_dir", "mode", "seeds", "jobs"),
    "searches": ("hardware", "search_steps", "target", "beta", "width"),
    "training": ("train_steps", "image_size", "batch_size", "dataset", "data_dir"),
    "comparison": ("baselines", "random_k", "random_tolerance", "measure_image_size",
                   "measure_rounds"),
}


def config_from_flags() -> ExperimentConfig:
    values = {}
    for field in dataclasses.fields(ExperimentConfig):
        if field.name in FLAGS:
            value = FLAGS[field.name].value
            values[field.name] = tuple(value) if isinstance(value, list) else value
    if FLAGS.mode == "small":
        for name, value in SMALL.items():
            if not FLAGS[name].present:
                values[name] = value
    return ExperimentConfig(**values)


def main(argv):
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.jobs < 1:
        raise ValueError(f"--jobs={FLAGS.jobs}: must be >= 1")
    config = config_from_flags()
    validate(config)
    from mhmodels.locking import check_unlocked
    check_unlocked(config.output_dir, "experiment", flag="--output_dir")  # before TF loads
    start = time.time()
    run_experiment(config, jobs=FLAGS.jobs)
    print(f"total wall time {time.time() - start:.0f} s")
    return 0


def run():
    define_flags()
    cli.run(main, groups=FLAG_GROUPS)


if __name__ == "__main__":
    run()
