"""`python -m search.experiment`: the paper's experiment (section 7.3, Tables 2 and 3).

    python -m search.experiment --output_dir=runs/experiment --seeds=3
    python -m search.experiment --output_dir=/tmp/exp --mode=small     # a few minutes (CI)

For every seed it runs, with one recipe for all:

1. one single-hardware search per hardware (``--metric=single``, paper eq. 6) and one
   multi-hardware search with f_avg and one with f_max (eq. 7, 8), every one with the same
   MobileNet-normalised target T (``--target``), so their results are comparable; every
   search runs in ``--space`` (default the full ``multi_hw``), a single-hardware one in its
   ``--space_for`` space where given (hardware-specific reduced spaces,
   ``search.reduce_space``);
2. the random-architecture control of every search: ``--random_k`` architectures drawn
   uniformly from the space whose predicted f (that search's metric over its hardware) is
   within ``--random_tolerance`` of the search's result, reported as the mean and spread of
   all of them (never a best-of-K pick on the evaluation split), drawn from the search's space;
3. trains every searched model and the zoo baselines (``--baselines``) at the proxy width
   times every ``--widths`` multiplier, the random ones at 1.0 only (they are already matched
   to their search's point; curves are for the models compared across points), with one
   identical recipe (``mhmodels.train``) and evaluates them on the held-out validation split;
4. measures every distinct architecture at every width on every hardware: LiteRT on this CPU
   (the minimum of ``--measure_rounds`` rounds over all architectures), vela's estimate for
   the Ethos-U NPUs (never the cost models), with MobileNetV1 measured in the same rounds as
   the normaliser C of MN-Norm.

Then it writes, into --output_dir: ``results.csv`` (one row per model and seed),
``table2.md`` / ``table2.csv`` (models at width 1.0: accuracy mean and spread over seeds,
latency per hardware, MN-Norm avg and max, binding hardware, predicted and measured f),
``table3.md`` / ``table3.csv`` (first the paper's comparison, one multi-hardware search minus
the best single-hardware search of the same seed as paired differences with 95% CIs, then the
search cost), ``structure.md``
(section 7.2's view of every searched model: kernels, expansions, fused blocks, where the
MAdds sit by stride), ``fmax_vs_accuracy.png`` and ``latency_bars.png``.

Every unit of work (a search, a training, a measurement) writes its result file atomically
when it is done; a rerun with the same --output_dir skips finished units, and an interrupted
search or training resumes from its own checkpoint. More --seeds later reuse the earlier ones.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from absl import flags

from mhmodels import cli

from .experiment_report import MULTI_METRICS, NORMALIZER

FLAGS = flags.FLAGS
log = logging.getLogger("search.experiment")

# The CPU and the two NPUs that disagree most (cpu_int8 ranks architectures like cpu_float:
# correlation 0.91 at matched MAdds, README "Hardware diversity"); one search each.
DEFAULT_HARDWARE = ("cpu_float", "ethos_u55", "ethos_u85")
DEFAULT_BASELINES = ("multi_avg", "multi_max", "mobilenet_v2", "mobilenet_v3_large_min",
                     "mobilenet_edgetpu")
SETTINGS_JSON = "experiment.json"
SEARCH_KINDS = ("single",) + MULTI_METRICS  # a single-hardware search per hardware, avg, max


@dataclass
class ExperimentConfig:
    """Everything the experiment's results depend on (the flags, as one object)."""

    output_dir: str
    hardware: tuple[str, ...] = DEFAULT_HARDWARE
    seeds: int = 8
    search_steps: int = 600
    train_steps: int = 500
    width: float = 0.25  # proxy width: supernet during search, every model in training
    image_size: int = 32
    batch_size: int = 32
    target: float = 1.0
    beta: float | None = None  # None: the search's default, scaled to its held-out batch
    baselines: tuple[str, ...] = DEFAULT_BASELINES
    random_k: int = 3  # per search group, matched on that group's predicted f
    random_tolerance: float = 0.05
    widths: tuple[float, ...] = (0.75, 1.0, 1.25)  # searched and baselines at these (random: 1.0)
    calibration_archs: int = 24  # CPU cost models calibrated on this host first (0: as found)
    measure_image_size: int = 224
    measure_rounds: int = 5  # timed hardware: rounds over all architectures, min kept
    dataset: str = "digits"
    data_dir: str | None = None
    space: str = "multi_hw"  # of every search (search.space.get_space: a name or a file)
    space_for: tuple[str, ...] = ()  # "hw:space": that hardware's single-hardware search
    searches: tuple[str, ...] = SEARCH_KINDS  # of every seed; `single` alone: spaces compared

    # Fields that may change between runs on one --output_dir (the rest must not).
    FREE = ("output_dir", "seeds", "measure_rounds")

    def identity(self) -> dict:
        data = dataclasses.asdict(self)
        data["hardware"], data["baselines"] = list(self.hardware), list(self.baselines)
        data["widths"] = list(self.widths)
        data["space_for"] = list(self.space_for)
        data["searches"] = list(self.searches)
        if data["space"] == "multi_hw" and not data["space_for"]:
            data.pop("space"), data.pop("space_for")  # the settings of runs before --space
        if tuple(self.searches) == SEARCH_KINDS:
            data.pop("searches")  # likewise before --searches
        return {k: v for k, v in data.items() if k not in self.FREE}


# --mode=small: every kind of unit once, each as small as it gets (CI).
SMALL = dict(seeds=1, search_steps=8, train_steps=8, batch_size=16, random_k=1,
             measure_image_size=32, measure_rounds=2, baselines=("multi_max",), widths=(1.0,),
             random_tolerance=0.2, calibration_archs=0)


def validate(config: ExperimentConfig) -> None:
    """One line naming the flag for any setting the experiment cannot run with."""
    from .hardware import get_hardware
    hardware = list(config.hardware)
    searches = list(config.searches)
    unknown = [s for s in searches if s not in SEARCH_KINDS]
    if not searches or unknown or len(set(searches)) != len(searches):
        raise ValueError(f"--searches={','.join(searches)}: a non-empty subset of "
                         f"{','.join(SEARCH_KINDS)} without repeats")
    multi = [s for s in searches if s != "single"]
    if not hardware:
        raise ValueError("--hardware: name at least one hardware")
    if multi and len(hardware) < 2:
        raise ValueError(f"--hardware: name at least two hardware for the multi-hardware "
                         f"searches ({','.join(multi)}); one is enough with --searches=single")
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
                             ("measure_rounds", config.measure_rounds, 1),
                             ("calibration_archs", config.calibration_archs, 0)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"--{flag}={value}: must be an integer >= {low}")
    if 0 < config.calibration_archs < 10:
        raise ValueError(f"--calibration_archs={config.calibration_archs}: 0 (no calibration) "
                         "or at least 10")
    if not config.width > 0:
        raise ValueError(f"--width={config.width}: must be > 0")
    if not config.target > 0:
        raise ValueError(f"--target={config.target}: must be > 0")
    if config.beta is not None and config.beta > 0:
        raise ValueError(f"--beta={config.beta}: must be <= 0 (a latency penalty)")
    if not config.widths or 1.0 not in config.widths or min(config.widths) <= 0:
        raise ValueError(f"--widths={','.join(map(str, config.widths))}: positive multipliers "
                         "that include 1.0 (the searched operating point)")
    if not 0 < config.random_tolerance < 1:
        raise ValueError(f"--random_tolerance={config.random_tolerance}: must be in (0, 1)")
    search_spaces(config)
    import mhmodels
    for name in list(config.baselines) + [NORMALIZER]:
        try:
            mhmodels.get_spec(name)
        except ValueError as err:
            raise ValueError(f"--baselines: {err}") from None


def search_spaces(config: ExperimentConfig) -> dict[str, str]:
    """{hardware or '*': space} of the searches: `--space_for` for single-hardware searches,
    `--space` for the rest. Every space must load and share one base space (the cost models
    and the supernet are the base's)."""
    from .space import base_space, get_space
    spaces = {"*": config.space}
    for item in config.space_for:
        hw, sep, name = item.partition(":")
        if not sep or not name:
            raise ValueError(f"--space_for={item}: expected <hardware>:<space name or file>")
        if hw not in config.hardware:
            raise ValueError(f"--space_for={item}: {hw} is not one of --hardware "
                             f"({','.join(config.hardware)})")
        spaces[hw] = name
    bases = set()
    for hw, name in spaces.items():
        try:
            bases.add(base_space(get_space(name)).name)
        except ValueError as err:
            raise ValueError(f"--{'space' if hw == '*' else 'space_for'}: {err}") from None
    if len(bases) > 1:
        raise ValueError(f"--space / --space_for: spaces of different base spaces "
                         f"({', '.join(sorted(bases))}); one experiment searches one base")
    return spaces


def space_of_search(config: ExperimentConfig, hardware: Sequence[str]) -> str:
    """The space of a search over `hardware` (see `search_spaces`)."""
    spaces = search_spaces(config)
    return spaces.get(hardware[0], spaces["*"]) if len(hardware) == 1 else spaces["*"]


# --------------------------------------------------------------------------------------------
# Units of work: each is a function of plain data that writes one result file when done.

def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9_]+", "_", text.lower()).strip("_")


def entry_name(seed: int, label: str) -> str:
    return f"exp_s{seed}_{label}"


def _search_labels(config: ExperimentConfig) -> list[tuple[str, str, tuple[str, ...]]]:
    """(label, metric, hardware) of every search of one seed."""
    out = ([(f"single_{_slug(hw)}", "single", (hw,)) for hw in config.hardware]
           if "single" in config.searches else [])
    return out + [(f"searched_{m}", m, tuple(config.hardware)) for m in MULTI_METRICS
                  if m in config.searches]


def _write_json(path: str | os.PathLike, data: Any) -> None:
    from mhmodels.files import atomic_write
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def _read_json(path: str | os.PathLike, what: str) -> Any:
    from mhmodels.files import read_json
    return read_json(path, what, hint="delete it to redo that unit")


def experiment_cost_models(config: ExperimentConfig) -> str:
    """<output_dir>/cost_models: the cost models every search of the experiment uses, the
    files themselves (provenance). The CPU ones are calibrated on this host, the host that
    measures the results (``--calibration_archs`` architectures and MobileNetV1 timed in
    interleaved rounds), so search and evaluation share one scale; the NPU ones (vela is
    host-independent) are copies of the loader's. Made once, reused by every rerun."""
    from .cost_model import calibrate_cost_models, calibrated_file_name, load_cost_model
    from .hardware import hardware_id
    out = Path(config.output_dir) / "cost_models"
    out.mkdir(parents=True, exist_ok=True)
    cpu = [h for h in config.hardware if calibrated_file_name(h)]
    todo = [h for h in cpu if not (out / calibrated_file_name(h)).is_file()]
    if todo and config.calibration_archs:
        print(f"calibrating the {', '.join(todo)} cost model(s) on this host "
              f"({config.calibration_archs} architectures)", flush=True)
        calibrate_cost_models(todo, num_archs=config.calibration_archs,
                              image_size=config.measure_image_size, output_dir=out,
                              progress=False)
    for hw in config.hardware:
        target = out / f"{hardware_id(hw)}.json"
        if hw in cpu and (out / calibrated_file_name(hw)).is_file() or target.is_file():
            continue
        source = Path(load_cost_model(hw).source)
        from mhmodels.files import atomic_write
        atomic_write(target, source.read_bytes())
    return str(out)


def run_search_unit(config: ExperimentConfig, seed: int, label: str, metric: str,
                    hardware: Sequence[str], done_path: str, space: str = "multi_hw") -> dict:
    """One search (resuming from its checkpoint); its zoo entry goes to <output_dir>/zoo."""
    from .config import SearchConfig
    from .loop import run_search
    out = Path(config.output_dir)
    model_dir = out / f"seed{seed}" / "search" / label
    resumed = (model_dir / "checkpoints").is_dir()
    steps = config.search_steps
    search = SearchConfig(
        model_dir=str(model_dir), hardware=tuple(hardware), metric=metric, beta=config.beta,
        target=config.target, space=space, dataset=config.dataset, data_dir=config.data_dir,
        image_size=config.image_size, batch_size=config.batch_size, steps=steps,
        cost_model_dir=experiment_cost_models(config), supernet_width=config.width, seed=seed, checkpoint_every=max(10, steps // 4),
        keep_checkpoints=1, log_every=max(1, steps // 4), entry_name=entry_name(seed, label),
        zoo_dir=str(out / "zoo"))
    start = time.time()
    result = run_search(search)
    record = {"kind": "search", "seed": seed, "label": label, "metric": metric,
              "hardware": list(hardware), "space": space, "entry_path": result.entry_path,
              "steps": int(result.total_steps), "wall_s": time.time() - start,
              "resumed": bool(resumed or result.already_finished),
              "choices": [int(c) for c in result.choices],
              "predicted_latency_ms": result.predicted_latency_ms,
              "predicted_f": result.predicted_f, "predicted_f_metric": result.final.get(
                  "predicted_f", result.f_max),
              "predicted_f_max": result.f_max, "predicted_f_avg": result.f_avg}
    _write_json(done_path, record)
    return record


def run_train_unit(config: ExperimentConfig, seed: int, label: str, model: str,
                   done_path: str, width: float = 1.0) -> dict:
    """Train one model with the experiment's recipe (resuming) and evaluate it, at ``width``
    times the proxy width."""
    from mhmodels import train as train_lib
    model_dir = Path(config.output_dir) / f"seed{seed}" / "train" / label
    start = time.time()
    result = train_lib.train(train_lib.TrainConfig(
        model=model, width=config.width * width, dataset=config.dataset, data_dir=config.data_dir,
        image_size=config.image_size, batch_size=config.batch_size, steps=config.train_steps,
        seed=seed, model_dir=str(model_dir), mode="train_and_eval", eval_every_epoch=False,
        checkpoint_every=max(10, config.train_steps // 3), keep_checkpoints=1, progress=False,
        log_every=max(1, config.train_steps)))
    record = train_record(result, seed, label, model, width, time.time() - start)
    _write_json(done_path, record)
    return record


class Interrupted(RuntimeError):
    """A unit stopped before its end by SIGINT / SIGTERM, checkpointed: the experiment stops
    there (nothing is recorded for that unit) and a rerun resumes it."""


def train_record(result, seed: int, label: str, model: str, width: float, wall_s: float
                 ) -> dict:
    """The result file of a training unit; `Interrupted` if the training stopped early (a
    signal: `mhmodels.train` checkpoints and returns without a final evaluation)."""
    if result.step < result.total_steps or "top1" not in result.metrics:
        raise Interrupted(f"training {label} (seed {seed}) stopped at step {result.step} of "
                          f"{result.total_steps}, checkpointed; rerun the same command to "
                          "resume")
    return {"kind": "train", "seed": seed, "label": label, "model": model, "width": width,
            "top1": float(result.metrics["top1"]), "eval_count": int(result.metrics["count"]),
            "steps": int(result.step), "wall_s": wall_s}


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
        extra = (f"predicted f ({record['metric']}) {record['predicted_f_metric']:.3f}"
                 if record["kind"] == "search"
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
    import signal
    ctx = multiprocessing.get_context("spawn")
    # SIGTERM reaches this process only (a `kill`, a preemption): as Ctrl-C, stop the workers
    # here. They ignore SIGINT (a terminal's Ctrl-C reaches the whole group): this process
    # alone decides, so a worker outliving its experiment cannot write into a directory the
    # rerun is using.
    try:
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    except ValueError:  # not the main thread: signals stay as they are
        previous = None
    pool = ctx.Pool(jobs, initializer=_ignore_sigint, maxtasksperchild=1)
    try:
        args = [(kind, config, kwargs) for kind, kwargs in todo]
        for i, record in enumerate(pool.imap_unordered(_run_unit, args), 1):
            report(i, record)
        pool.close()
    except KeyboardInterrupt:
        raise Interrupted(f"{what} stopped by a signal with units in progress in {jobs} "
                          "processes, checkpointed; rerun the same command to resume") from None
    finally:
        # terminate() sends SIGTERM to the workers and waits for them: a training checkpoints
        # first (mhmodels.train), a search resumes from its last checkpoint.
        pool.terminate()
        pool.join()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _ignore_sigint() -> None:
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# --------------------------------------------------------------------------------------------
# The random control

def random_label(search_label: str, i: int) -> str:
    return f"random_{search_label}_{i}"


def draw_matched(space, cost_models, metric: str, target_f: float, k: int, tolerance: float,
                 rng: np.random.Generator, max_draws: int = 200_000) -> tuple[list, int]:
    """``k`` uniform architectures whose predicted f (``metric`` over ``cost_models``) is
    within ``tolerance`` of ``target_f``, and how many draws that took."""
    from .loop import predicted_f
    normalizers = [float(c.normalizer_ms) for c in cost_models]
    found: list[np.ndarray] = []
    tries = 0
    while len(found) < k and tries < max_draws:
        batch = np.stack([space.sample(rng) for _ in range(256)])
        tries += len(batch)
        f = predicted_f(cost_models, normalizers, metric, batch)
        found += list(batch[np.abs(f / target_f - 1.0) <= tolerance][: k - len(found)])
    return found, tries


def random_control(config: ExperimentConfig, seed: int, search: dict,
                   cost_models: dict) -> dict[str, str]:
    """{label: entry path} of `random_k` uniform architectures of the search's space matched
    to one search group:
    their predicted f (the group's metric over the group's hardware) is within
    `random_tolerance` of the search's. Drawn once (deterministic in seed and group) and
    recorded, so a rerun trains the same ones."""
    out = Path(config.output_dir)
    label = search["label"]
    record_path = out / f"seed{seed}" / f"random_{label}.json"
    if record_path.is_file():
        return _read_json(record_path, "random control")["entries"]
    from .space import get_space
    space = get_space(search.get("space", "multi_hw"))
    target = float(search["predicted_f_metric"])
    models = [cost_models[h] for h in search["hardware"]]
    stream = int(hashlib.sha256(label.encode()).hexdigest()[:8], 16)
    found, tries = draw_matched(space, models, search["metric"], target, config.random_k,
                                config.random_tolerance, np.random.default_rng([seed, stream]))
    if len(found) < config.random_k:
        raise ValueError(f"seed {seed}, {label}: only {len(found)} of {config.random_k} random "
                         f"architectures within {config.random_tolerance:.0%} of its predicted "
                         f"f {target:.3f} in {tries} draws; raise --random_tolerance")
    entries = {}
    for i, choices in enumerate(found):
        name = entry_name(seed, random_label(label, i))
        path = out / "zoo" / f"{name}.json"
        spec = space.decode(choices, name, description=(
            f"Uniform random architecture of {space.name} at the predicted f of "
            f"{entry_name(seed, label)} (random control of search.experiment)."))
        if not path.is_file():
            _write_json(path, json.loads(spec.to_json(extra={"provenance": {
                "choices": [int(c) for c in choices], "key": space.encode(choices)}})))
        entries[random_label(label, i)] = str(path)
    _write_json(record_path, {"seed": seed, "search": label, "metric": search["metric"],
                              "target_f": target, "draws": tries, "entries": entries})
    return entries


# --------------------------------------------------------------------------------------------
# Measurement and structure

def spec_digest(spec) -> str:
    """The architecture's identity: its spec without name and description."""
    data = spec.to_dict()
    for key in ("name", "description", "reference"):
        data.pop(key, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def madds_by_stride(spec, width: float = 1.0, image_size: int = 224) -> dict[int, float]:
    """{output stride: MAdds (M)} of the spec at `width` (the one counting function)."""
    from mhmodels.profile import profile
    prof = profile(spec, width, input_shape=(image_size, image_size, 3))
    out: dict[int, float] = {}
    for row in prof.rows:
        # Convs after the global pool (1x1 maps) and the classifier count as the stride-32 head.
        spatial = row.output_shape[0] if len(row.output_shape) == 3 else None  # (H, W, C)
        stride = min(32, int(round(image_size / spatial))) if spatial else 32
        out[stride] = out.get(stride, 0.0) + row.madds / 1e6
    return dict(sorted(out.items()))


def _measure_path(config: ExperimentConfig, digest: str) -> Path:
    return Path(config.output_dir) / "measure" / f"{digest}.json"


def measure_key(spec, width: float = 1.0) -> str:
    """The measurement's identity: the architecture's digest, and its width if not 1.0."""
    digest = spec_digest(spec)
    return digest if width == 1.0 else f"{digest}_w{width:g}"


def measure_all_architectures(config: ExperimentConfig,
                              todo: dict[str, tuple[str, Any, float]],
                              hardware) -> dict[str, dict]:
    """Measure every model of `todo` ({measure_key: (label, spec, width)}) not measured yet.

    Each is written from its spec at its width once per format (`mhmodels.tflite_writer`, as
    collection does: the converter's graph, equal in vela's estimate and in CPU time within
    noise, tests/test_tflite_writer.py; milliseconds instead of seconds per export).
    Deterministic hardware (vela) is measured once; timed hardware (LiteRT on this CPU) in
    `measure_rounds` rounds over all the architectures, keeping each one's minimum, so a burst
    of load on the host moves no single model. One JSON per architecture (cached: a rerun
    measures only what is missing).
    """
    from mhmodels.profile import profile
    from .hardware import write_formats
    results = {d: _read_json(_measure_path(config, d), "measurement") for d in todo
               if _measure_path(config, d).is_file()}
    pending = {d: v for d, v in todo.items() if d not in results}
    if not pending:
        return results
    size = config.measure_image_size
    timed = [hw for hw in hardware if not hw.deterministic]
    exported: dict[str, dict[str, bytes]] = {}
    records: dict[str, dict] = {}
    for i, (digest, (label, spec, width)) in enumerate(sorted(pending.items()), 1):
        start = time.time()
        latency = {hw.name: float("nan") for hw in hardware}
        try:
            files, _ = write_formats(spec, [hw.export_format for hw in hardware], size, width)
            for hw in hardware:
                if hw.deterministic:
                    latency[hw.name] = hw.latency_ms(hw.measure_tflite(files[hw.export_format]))
            exported[digest] = files
        except Exception as err:  # one failing export is not fatal: NaN, retried next run
            print(f"  ({label}: measurement failed: {err})", flush=True)
        prof = profile(spec, width)
        records[digest] = {
            "label": label, "width": width, "image_size": size, "latency_ms": latency,
            "rounds_ms": {hw.name: [] for hw in timed}, "params_m": prof.params_m,
            "madds_m": prof.madds_m,
            "madds_m_by_stride": {str(k): v for k, v in madds_by_stride(spec, width).items()},
            "export_s": time.time() - start}
        print(f"  exported [{i}/{len(pending)}] {label}: " + ", ".join(
            f"{h} {v:.2f} ms" for h, v in latency.items() if np.isfinite(v)), flush=True)
    for r in range(config.measure_rounds if timed else 0):
        for digest, files in sorted(exported.items()):
            record = records[digest]
            for hw in timed:
                value = hw.latency_ms(hw.measure_tflite(files[hw.export_format]))
                record["rounds_ms"][hw.name].append(value)
                record["latency_ms"][hw.name] = min(record["rounds_ms"][hw.name])
        print(f"  timing round {r + 1}/{config.measure_rounds} on "
              f"{', '.join(hw.name for hw in timed)} done", flush=True)
    for digest, record in records.items():
        if all(np.isfinite(v) for v in record["latency_ms"].values()):
            _write_json(_measure_path(config, digest), record)
        results[digest] = record
    return results


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
    from .space import base_space, get_space

    validate(config)
    check_writable_dir(config.output_dir, "--output_dir")
    check_settings(config)
    _make_zoo_visible(config)
    out = Path(config.output_dir)
    seeds = list(range(config.seeds))
    hardware = [get_hardware(h) for h in config.hardware]
    space = base_space(get_space(config.space))  # the cost models are the base space's
    cost_models = load_cost_models(config.hardware, space, experiment_cost_models(config))

    # 1. Searches.
    work = []
    for seed in seeds:
        for label, metric, hws in _search_labels(config):
            done = str(out / f"seed{seed}" / "search" / f"{label}.done.json")
            work.append(("search", dict(seed=seed, label=label, metric=metric,
                                        hardware=hws, done_path=done,
                                        space=space_of_search(config, hws))))
    _run_units(config, work, jobs, "searches")
    searches = {(kw["seed"], kw["label"]): _read_json(kw["done_path"], "search result")
                for _, kw in work}

    # 2. The random control of every search group, 3. trainings at every width.
    models = _models(config, seeds, searches, cost_models)
    work = []
    for (seed, label), model in models.items():
        for width in widths_of(config, label):
            key = label if width == 1.0 else f"{label}@{width:g}"
            work.append(("train", dict(seed=seed, label=key, model=model, width=width,
                                       done_path=str(out / f"seed{seed}" / "train"
                                                     / f"{key}.done.json"))))
    _run_units(config, work, jobs, "trainings")
    trainings = {(kw["seed"], kw["label"]): _read_json(kw["done_path"], "training result")
                 for _, kw in work}

    # 4. Measurements (one process, nothing else running: CPU timings).
    import mhmodels
    specs = {key: (read_entry(Path(m)).spec if m.endswith(".json") else mhmodels.get_spec(m))
             for key, m in models.items()}
    normalizer = mhmodels.get_spec(NORMALIZER)
    distinct = {measure_key(normalizer): (NORMALIZER, normalizer, 1.0)}
    for (seed, label), train in sorted(trainings.items()):
        spec = specs[(seed, label.split("@")[0])]
        distinct.setdefault(measure_key(spec, train["width"]), (label, spec, train["width"]))
    print(f"measuring {len(distinct)} distinct models (with {NORMALIZER}) at "
          f"{config.measure_image_size}x{config.measure_image_size} on "
          f"{', '.join(config.hardware)}", flush=True)
    by_key = measure_all_architectures(config, distinct, hardware)
    normalizers = [by_key[measure_key(normalizer)]["latency_ms"][hw.name] for hw in hardware]
    for (seed, label), train in trainings.items():
        spec = specs[(seed, label.split("@")[0])]
        train["measurement"] = by_key[measure_key(spec, train["width"])]
        train["digest"] = spec_digest(spec)
    return _report(config, seeds, searches, trainings, specs, hardware, normalizers)


def widths_of(config: ExperimentConfig, label: str) -> tuple[float, ...]:
    """The multipliers `label` is trained and measured at: a random control's architectures
    are drawn at their search's predicted f, so only 1.0 (a third of the trainings they would
    cost at three widths); the searched models and the baselines get the curves."""
    return (1.0,) if label.startswith("random_") else tuple(config.widths)


def _models(config: ExperimentConfig, seeds, searches: dict, cost_models
            ) -> dict[tuple[int, str], str]:
    """{(seed, label): zoo entry path or model name} of every model to train: the searches,
    each search's random control, the baselines."""
    by_hw = dict(zip(config.hardware, cost_models))
    models: dict[tuple[int, str], str] = {}
    for seed in seeds:
        for label, _, _ in _search_labels(config):
            models[(seed, label)] = searches[(seed, label)]["entry_path"]
        for label, _, _ in _search_labels(config) if config.random_k else ():
            for key, path in random_control(config, seed, searches[(seed, label)],
                                            by_hw).items():
                models[(seed, key)] = path
        models.update({(seed, name): name for name in config.baselines})
    return models


def _report(config: ExperimentConfig, seeds, searches, trainings, specs, hardware,
            normalizers) -> dict:
    """Write results.csv, Tables 2 and 3, structure.md and the plots; print the tables."""
    from mhmodels.files import atomic_write
    from . import experiment_report as report
    out = Path(config.output_dir)
    labels = [label for label, _, _ in _search_labels(config)]
    singles = [label for label, metric, _ in _search_labels(config) if metric == "single"]
    rows = report.build_rows(hardware, searches, trainings, normalizers)
    t2_md, t2_rows = report.table2(labels, config.baselines, rows, hardware, normalizers)
    t3_md, t3_rows = report.table3(singles, rows, config.target,
                                   labels + list(config.baselines))
    searched = {key: spec for key, spec in specs.items() if key[1] in labels}
    header = (f"Proxy task: {config.dataset} at {config.image_size}x{config.image_size}, width "
              f"{config.width}; {len(seeds)} seed(s); search {config.search_steps} steps, "
              f"training {config.train_steps} steps (batch {config.batch_size}); latency "
              f"measured at {config.measure_image_size}x{config.measure_image_size}, width 1.0, "
              f"batch 1; target T = {config.target}; search space "
              + ", ".join(f"{'all others' if k == '*' else k}: {v}"
                          for k, v in search_spaces(config).items()) + ".\n\n")
    paths = {name: str(out / name) for name in ("results.csv", "table2.md", "table2.csv",
                                                "table3.md", "table3.csv", "structure.md")}
    atomic_write(paths["results.csv"], report.csv_text(rows))
    atomic_write(paths["table2.md"], header + t2_md)
    atomic_write(paths["table2.csv"], report.csv_text(t2_rows))
    atomic_write(paths["table3.md"], header + t3_md)
    atomic_write(paths["table3.csv"], report.csv_text(t3_rows))
    measurements = {key: trainings[key]["measurement"] for key in searched}
    atomic_write(paths["structure.md"], report.structure_md(searched, measurements))
    names = report.order(labels, config.baselines, rows)
    for path in report.plots(str(out), names, rows, hardware, normalizers, config.target,
                             config.dataset, config.width):
        paths[Path(path).name] = path
    print("\n" + header + t3_md + "\n" + t2_md, flush=True)
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
    flags.DEFINE_integer("seeds", 8, "Seeds 0..N-1 of every search, training and random draw "
                         "(the paired comparison of Table 3 needs several).")
    flags.DEFINE_integer("search_steps", 600, "Steps of every search.")
    flags.DEFINE_integer("train_steps", 500, "Training steps of every model (one recipe).")
    flags.DEFINE_float("width", 0.25, "Proxy width: of the supernet and of every trained model.")
    flags.DEFINE_integer("image_size", 32, "Image size of search and training.")
    flags.DEFINE_integer("batch_size", 32, "Batch size of search and training.")
    flags.DEFINE_float("target", 1.0, "MN-Norm target T of every search (single: L/C of its "
                       "hardware; avg / max: f_avg / f_max).")
    flags.DEFINE_float("beta", None, "Reward latency coefficient of every search (default: "
                       "the search's, scaled to its held-out batch).")
    flags.DEFINE_list("widths", ["0.75", "1.0", "1.25"], "Width multipliers every searched "
                      "and baseline model is also trained and measured at (curves of accuracy "
                      "against f_max); the random control is trained at 1.0.")
    flags.DEFINE_list("baselines", list(DEFAULT_BASELINES), "Zoo models trained and measured "
                      "beside the searched ones.")
    flags.DEFINE_integer("random_k", 3, "Random architectures per seed and search, matched on "
                         "that search's predicted f (0: no random control).")
    flags.DEFINE_float("random_tolerance", 0.05, "Relative tolerance of the random control's "
                       "match on predicted f.")
    flags.DEFINE_integer("measure_image_size", 224, "Input size of the latency measurements.")
    flags.DEFINE_integer("calibration_archs", 24, "Before searching, calibrate the CPU cost "
                         "models on this host with this many architectures (0: use the ones "
                         "found, shipped or yours), so that search and evaluation share a scale.")
    flags.DEFINE_integer("measure_rounds", 5, "Timing rounds over all architectures on timed "
                         "hardware (this CPU); each architecture's minimum is kept.")
    flags.DEFINE_string("dataset", "digits", "Dataset of search and training "
                        "(mhmodels.data.make_dataset names).")
    flags.DEFINE_string("data_dir", None, "Data dir of --dataset.")
    flags.DEFINE_string("space", "multi_hw", "Search space of every search (and its random "
                        "control): a name (multi_hw, a shipped reduced space such as "
                        "multi_hw@ethos_u55) or a space file; see docs/block_profiles.md.")
    flags.DEFINE_list("space_for", [], "<hardware>:<space>,...: the space of that hardware's "
                      "single-hardware search instead of --space (e.g. "
                      "ethos_u55:multi_hw@ethos_u55); spaces of one base space.")
    flags.DEFINE_list("searches", list(SEARCH_KINDS), "Searches of every seed: `single` (one "
                      "per hardware), `avg`, `max`; e.g. --searches=single with one --hardware "
                      "to compare search spaces of that hardware (search.compare_spaces).")
    flags.DEFINE_integer("jobs", 1, "Searches / trainings run in this many processes at once "
                         "(measurements always run one at a time).")
    flags.mark_flag_as_required("output_dir")

FLAG_GROUPS = {
    "experiment": ("output_dir", "mode", "seeds", "jobs"),
    "searches": ("hardware", "searches", "space", "space_for", "search_steps", "target", "beta",
                 "width", "widths"),
    "training": ("train_steps", "image_size", "batch_size", "dataset", "data_dir"),
    "comparison": ("baselines", "random_k", "random_tolerance", "measure_image_size",
                   "measure_rounds", "calibration_archs"),
}


def config_from_flags() -> ExperimentConfig:
    values = {}
    for field in dataclasses.fields(ExperimentConfig):
        if field.name in FLAGS:
            value = FLAGS[field.name].value
            if field.name == "widths":
                value = [float(w) for w in value]
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
    try:
        run_experiment(config, jobs=FLAGS.jobs)
    except Interrupted as stop:  # a signal: one line, not a traceback; the rerun resumes
        print(f"stopped: {stop}", file=sys.stderr, flush=True)
        return 1
    print(f"total wall time {time.time() - start:.0f} s")
    return 0


def run():
    define_flags()
    cli.run(main, groups=FLAG_GROUPS)


if __name__ == "__main__":
    run()
