"""Collect (architecture, latency) pairs for the cost models by measuring real models.

    python -m search.collect_latency --hardware=cpu_float,cpu_int8,cpu_ref_float \
        --num_archs=300 --space=multi_hw --image_size=224 --output=zoo/cost_models/data/cpu.csv

    python -m search.collect_latency --hardware=ethos_u55,ethos_u65,ethos_u85 --workers=2 \
        --num_archs=300 --output=data/npu.csv       # vela estimates: parallel processes

Architectures are sampled uniformly from the space (independent uniform choice per decision),
built with `mhmodels.build`, exported once per format the hardware need (one float export for
the float CPU hardware, one int8 export for cpu_int8 and every NPU) with
`mhmodels.export.export_tflite`, and measured by each hardware's one latency path
(`search.hardware`: LiteRT timing, vela estimate). Export is the bottleneck (seconds per
architecture); `--workers=N` builds, exports and measures in N processes. `--export=direct`
(the command's default) writes each .tflite from the spec instead (`mhmodels.tflite_writer`,
milliseconds, no Keras model): vela then dominates (benchmarks/collection_rate.py). vela's estimates are
deterministic, so NPU data can be collected in parallel; CPU timings taken while other
processes export are slower and noisier (thread CPU time hides pre-emption, not a shared
cache), so collect CPU hardware with one worker on a quiet machine.

The configuration of every hardware (tool and version, vela accelerator / system / memory
mode, LiteRT settings) is written beside the CSV as `<output>.hardware.json`; appending with a
different configuration is refused, and `search.cost_model --fit` copies it into the cost
model. Every row is appended and fsync'ed as soon as it is measured, so an
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
statistic the cost models fit: for LiteRT `search.hardware.STATISTIC`, the minimum thread CPU
time, beside `<hw>_median_ms`, `<hw>_min_ms`; for an NPU vela's estimate, beside
`<hw>_cpu_ops`, the ops vela leaves on the host CPU).
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
from absl import app, flags

from .hardware import (NORMALIZER_MODEL, Hardware, LiteRTHardware, get_hardware,
                             measure_all, parse_hardware_list, same_config, worker_init)

BASE_COLUMNS = ("arch", "image_size", "madds_m", "params_m", "seconds")


def columns_for(hardware: Sequence[Hardware]) -> list[str]:
    cols = list(BASE_COLUMNS)
    for hw in hardware:
        cols += [f"{hw.name}_{suffix}" for suffix in hw.column_suffixes()]
    return cols


def config_path(output: str | os.PathLike) -> Path:
    """Where the hardware configuration of a collected CSV is kept: `<output>.hardware.json`."""
    output = Path(output)
    return output.with_name(output.stem + ".hardware.json")


def read_config(output: str | os.PathLike) -> dict | None:
    """{hardware name: config()} recorded for a collected CSV; None for files without one."""
    path = config_path(output)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())["hardware"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a hardware configuration file ({err})") from None


def read_host(output: str | os.PathLike) -> dict | None:
    """The host (`search.cost_model.current_host`) a collected CSV's CPU rows were timed on."""
    path = config_path(output)
    return json.loads(path.read_text()).get("host") if path.is_file() else None


def read_space(output: str | os.PathLike) -> dict | None:
    """The search space ({name, decision_sizes}) recorded for a collected CSV, if any."""
    path = config_path(output)
    return json.loads(path.read_text()).get("space") if path.is_file() else None


def space_record(space) -> dict:
    """The space a CSV's keys belong to: a reduced space's base (same keys), so data sampled
    in a reduced space fits the base space's cost model beside uniform data."""
    from .space import base_space
    space = base_space(space)
    return {"name": space.name, "decision_sizes": [int(n) for n in space.num_choices]}


def check_config(output: str | os.PathLike, hardware: Sequence[Hardware], fresh: bool,
                 space=None) -> None:
    """Record the hardware configuration (and search space) of a new CSV; refuse to extend
    one measured with another (another vela version or memory mode, other LiteRT settings, a
    different space)."""
    recorded = read_config(output)
    record = {"hardware": {hw.name: hw.config() for hw in hardware}}
    if space is not None:
        record["space"] = space_record(space)
    cpu = [hw for hw in hardware if isinstance(hw, LiteRTHardware)]
    if cpu:  # CPU milliseconds belong to the host they were measured on
        from .host import current_host, host_id
        record["host"] = current_host(cpu[0].threads)
        known = read_host(output)
        if recorded is not None and known and host_id(known) != host_id(record["host"]):
            print(f"[collect] warning: {output} holds CPU timings of another host "
                  f"({known.get('cpu_model')}); appending this host's", file=sys.stderr)
    if recorded is None:
        if not fresh:
            print(f"[collect] {output} has no {config_path(output).name}: its rows' hardware "
                  "configuration is unknown; recording the current one", file=sys.stderr)
        _write_json(config_path(output), record)
        return
    for hw in hardware:
        if not hw.same_config(recorded.get(hw.name)):
            raise ValueError(f"{output} was measured with {hw.name} configured as "
                             f"{recorded.get(hw.name)}, not {hw.config()}: data of different "
                             "configurations cannot be mixed; use another --output")
    known = read_space(output)
    if space is not None and known is not None and known != space_record(space):
        raise ValueError(f"{output} holds architectures of space {known['name']!r} with "
                         f"decision sizes {known['decision_sizes']}, not {space.name!r}: use "
                         "another --output")


def _write_json(path: Path, data) -> None:
    from mhmodels.files import atomic_write
    atomic_write(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


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
    """Export `model` once per format and measure it on every hardware: one CSV row's values."""
    from mhmodels.profile import count_layers
    counts = count_layers(model)
    row = {"madds_m": counts.madds / 1e6, "params_m": counts.params / 1e6}
    results = measure_all(model, hardware, image_size, overrides)
    for hw in hardware:
        for suffix, value in hw.row_values(results[hw.name]).items():
            row[f"{hw.name}_{suffix}"] = value
    return row


def measure_key(key: str, hardware: Sequence[Hardware], image_size: int, overrides: dict,
                space) -> dict:
    """Build the architecture `key` (or the normaliser) and measure it: one complete row."""
    import mhmodels
    t0 = time.time()
    shape = (image_size, image_size, 3)
    model = mhmodels.build(NORMALIZER_MODEL, 1.0, input_shape=shape) \
        if key == NORMALIZER_MODEL else mhmodels.build(space.decode(space.parse(key)),
                                                       input_shape=shape)
    row = measure_model(model, hardware, image_size, overrides)
    row.update(arch=key, image_size=image_size, seconds=time.time() - t0)
    return row


def measure_key_direct(key: str, hardware: Sequence[Hardware], image_size: int,
                       overrides: dict, space) -> dict:
    """`measure_key` with the .tflite written from the spec (`search.hardware.write_formats`,
    `--export=direct`): no Keras model, no converter."""
    import mhmodels
    from .hardware import write_formats
    t0 = time.time()
    spec = mhmodels.get_spec(NORMALIZER_MODEL) if key == NORMALIZER_MODEL else \
        space.decode(space.parse(key))
    files, profile = write_formats(spec, [hw.export_format for hw in hardware], image_size)
    row = {"madds_m": profile.madds / 1e6, "params_m": profile.params / 1e6}
    for hw in hardware:
        result = hw.measure_tflite(files[hw.export_format], **overrides)
        for suffix, value in hw.row_values(result).items():
            row[f"{hw.name}_{suffix}"] = value
    row.update(arch=key, image_size=image_size, seconds=time.time() - t0)
    return row


MEASURE = {"converter": measure_key, "direct": measure_key_direct}


def _worker_measure(key, hardware_names, image_size, overrides, space_name,
                    export: str = "converter") -> dict:
    from .space import get_space
    return MEASURE[export](key, [get_hardware(n) for n in hardware_names], image_size,
                           overrides, get_space(space_name))


def sample(space, rng: np.random.Generator, fused_prob: float | None = None) -> np.ndarray:
    """Uniform sample; with `fused_prob`, each block's type is fused with that probability.

    Uniform sampling makes half the blocks fused, whose MAdds then dominate most sampled
    networks; a second stream with few fused blocks covers the depthwise-heavy corner of the
    space where Multi-AVG / Multi-MAX (and most search results) live. (In a space with more
    block types, e.g. multi_hw_grouped, a non-fused block is uniform over the others.)
    """
    c = space.sample(rng)
    if fused_prob is not None:
        from .space import choice_mask
        allowed = choice_mask(space)  # a reduced space's mask: only its block types
        for d, decision in enumerate(space.decisions):
            if not decision.name.endswith("/type"):
                continue
            # fused with fused_prob, else uniform over the other allowed types ('ibn' in the
            # paper's space)
            ok = [i for i in range(decision.size) if allowed[d, i]]
            fused = decision.choices.index("fused_ibn")
            others = [i for i in ok if i != fused]
            if fused in ok and (rng.random() < fused_prob or not others):
                c[d] = fused
            elif others:
                c[d] = others[0] if len(others) == 1 else others[int(rng.integers(len(others)))]
    return c


def collect(hardware: Sequence[Hardware], num_archs: int, output: str | os.PathLike,
            space_name: str = "multi_hw", image_size: int = 224, seed: int = 0,
            overrides: dict | None = None, max_seconds: float | None = None,
            progress: bool = True, fused_prob: float | None = None,
            anchors: Sequence[str] = (), workers: int = 1, shard: int = 0,
            num_shards: int = 1, export: str = "converter") -> int:
    """Append measurements until `output` holds `num_archs` architectures; returns the count.

    `anchors`: zoo model names inside the space (e.g. multi_max) or architecture keys,
    measured first, as rows keyed by their choices like any sampled architecture. An
    architecture vela cannot compile (`mhmodels.vela.VelaCompileError`, e.g. its tensors do
    not fit the SRAM) is skipped with one line, listed in `skipped_path(output)` so a rerun
    does not try it again, and replaced by another sample. `workers`: processes that build, export
    and measure in parallel (rows are appended as they finish). `shard` of `num_shards`: this
    file gets positions shard, shard + num_shards, ... of the first `num_archs` distinct
    architectures of the seed's sequence (anchors on shard 0 only, the normaliser on every
    shard), so N hosts or processes collect disjoint sets into their own files; `merge`
    combines them. `export`: 'converter' (build + export each model) or 'direct' (write the
    .tflite from the spec, `search.hardware.EXPORTS`).

    Holds the single-writer lock of `output` (`<output>.lock`, mhmodels.locking): a second
    collection into the same file refuses."""
    with output_lock(output):
        return _collect(hardware, num_archs, output, space_name, image_size, seed, overrides,
                        max_seconds, progress, fused_prob, anchors, workers, shard, num_shards,
                        export)


def output_lock(output: str | os.PathLike):
    """The single-writer lock of one output CSV (`<output>.lock` beside it)."""
    from mhmodels.locking import run_lock
    return run_lock(output, "latency collection", file=True, flag="--output")


def _check_collect_args(hardware, workers, shard, num_shards, export) -> None:
    """Refuse what cannot run, before any file is touched."""
    from .hardware import EXPORTS
    if export not in EXPORTS:
        raise ValueError(f"export must be one of {', '.join(EXPORTS)}, got {export!r}")
    for hw in hardware:
        if not hw.measurable:
            raise ValueError(f"hardware {hw.name!r} cannot be measured here")
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    if not isinstance(num_shards, int) or num_shards < 1 or not 0 <= shard < num_shards:
        raise ValueError(f"shard must be in [0, num_shards) and num_shards >= 1, got shard "
                         f"{shard!r} of {num_shards!r}")
    if workers > 1 and any(isinstance(hw, LiteRTHardware) for hw in hardware):
        print("[collect] note: CPU timings taken beside other exporting processes are slower "
              "and noisier; collect CPU hardware with --workers=1 on a quiet machine",
              file=sys.stderr)


def _measured_keys(path: Path, columns, hardware, space, image_size: int) -> set[str]:
    """The architectures `path` already holds (creating, repairing and checking it)."""
    fresh = not path.exists() or path.stat().st_size == 0
    rows = repair_and_read(path, columns)
    check_config(path, hardware, fresh, space)
    sizes = {int(r["image_size"]) for r in rows}
    if sizes and sizes != {image_size}:
        raise ValueError(f"{path} holds image sizes {sorted(sizes)}, not {image_size}")
    return {r["arch"] for r in rows}


SKIPPED_COLUMNS = ("arch", "image_size", "error")


def skipped_path(output: str | os.PathLike) -> Path:
    """Beside the CSV: the architectures vela could not compile (`VelaCompileError`), so a
    rerun does not try them again: ``npu.csv`` -> ``npu.skipped.csv``."""
    path = Path(output)
    return path.with_name(path.stem + ".skipped.csv")


def read_skipped(output: str | os.PathLike, image_size: int) -> set[str]:
    """The architectures `output`'s collection skipped at `image_size`."""
    path = skipped_path(output)
    if not path.is_file():
        return set()
    with path.open(newline="") as f:
        return {r["arch"] for r in csv.DictReader(f)
                if r.get("image_size") == str(image_size)}


ARCH_KEY = re.compile(r"\d+(-\d+)+")  # an architecture's choices, as the CSV keys it


def _first_keys(space, done: set[str], anchors: Sequence[str]) -> list[str]:
    """What is measured before any sample: the normaliser, then the `anchors` (zoo model
    names or architecture keys of the space), each unless the file has it."""
    import mhmodels
    first = [] if NORMALIZER_MODEL in done else [NORMALIZER_MODEL]
    for name in anchors:
        choices = space.parse(name) if ARCH_KEY.fullmatch(name) else \
            space.choices_for(mhmodels.get_spec(name))
        key = space.encode(space.canonical(choices))
        if key not in done and key not in first:
            first.append(key)
    return first


class _KeySource:
    """The architectures to measure, in a deterministic order: the `first` keys, then the
    seed's samples. `done` is the file's set of keys, which grows as rows are written."""

    def __init__(self, space, seed: int, fused_prob, num_archs: int, first: list[str],
                 done: set[str], skipped: set[str] = frozenset()):
        self.space, self.fused_prob, self.num_archs = space, fused_prob, num_archs
        self.first, self.done, self.skipped = first, done, set(skipped)
        self.rng = np.random.default_rng(seed)
        self.attempts = 0
        self.failed = 0  # keys handed out in this run that vela could not compile

    def draw(self) -> str:
        self.attempts += 1
        if self.attempts > 100 * self.num_archs + 1000:
            raise RuntimeError("could not sample enough distinct architectures")
        return self.space.encode(self.space.canonical(sample(self.space, self.rng,
                                                             self.fused_prob)))

    def missing(self, target: int) -> "_Missing":
        """The first keys, then samples not in the file until it would hold `num_archs`
        (`target`: what it holds once the first keys are in)."""
        return _Missing(self, target)

    def of_shard(self, shard: int, num_shards: int):
        """The first keys, then this shard's positions of the seed's first `num_archs`
        distinct architectures."""
        yield from self.first
        sequence: set = set()
        while len(sequence) < self.num_archs:
            key = self.draw()
            if key in sequence:
                continue
            position = len(sequence)
            sequence.add(key)
            if (position % num_shards == shard and key not in self.done
                    and key not in self.skipped):
                yield key


class _Missing:
    """`_KeySource.missing` as an iterator that may go on after it stopped: a key that vela
    could not compile (counted in `failed` once its worker reports) asks for one more, even
    after every key was handed out."""

    def __init__(self, keys: _KeySource, target: int):
        self.keys, self.target = keys, target
        self.first = list(keys.first)
        self.queued = set(self.first)

    def __iter__(self):
        return self

    def __next__(self) -> str:
        if self.first:
            return self.first.pop(0)
        k = self.keys
        while self.target - k.failed < k.num_archs:
            key = k.draw()
            if key in k.done or key in self.queued or key in k.skipped:
                continue
            self.queued.add(key)
            self.target += 1
            return key
        raise StopIteration


class _Recorder:
    """Appends each finished row to the file, counts the architectures, shows progress."""

    def __init__(self, path: Path, columns, done: set[str], have: int, total: int,
                 progress: bool):
        self.path, self.columns, self.done, self.have = path, columns, done, have
        self.start = have
        self.bar = None
        if progress:
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=min(have, total), desc="archs", unit="arch",
                            dynamic_ncols=True, file=sys.stderr)

    def finished(self, row: dict) -> None:
        _append(self.path, _format_row(self.columns, row))
        self.done.add(row["arch"])
        if row["arch"] != NORMALIZER_MODEL:
            self.have += 1
            if self.bar is not None:
                self.bar.update(1)
                self.bar.set_postfix(s_per_arch=f"{row['seconds']:.1f}")

    def skipped(self, key: str, err: Exception, image_size: int, keys: "_KeySource") -> None:
        """One architecture vela could not compile: one line, a row beside the CSV, and the
        key source draws another; many of them mean the set-up, not the models, is wrong."""
        keys.failed += 1
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"[collect] skipping {key}: {first}", file=sys.stderr)
        side = skipped_path(self.path)
        new = not side.exists() or side.stat().st_size == 0
        _append(side, ("arch,image_size,error\n" if new else "")
                + _format_row(SKIPPED_COLUMNS, {"arch": key, "image_size": image_size,
                                                "error": first}))
        measured = self.have - self.start
        if keys.failed >= 20 and keys.failed > measured:
            raise RuntimeError(f"vela could not compile {keys.failed} of the "
                               f"{keys.failed + measured} architectures tried in this run "
                               f"(last: {first}); check the hardware configuration")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _Deadline:
    """`max_seconds` after `start` (None: never); says so once when it passes."""

    def __init__(self, max_seconds: float | None, start: float):
        self.max_seconds, self.start, self.said = max_seconds, start, False

    def passed(self) -> bool:
        if self.max_seconds is not None and time.time() - self.start > self.max_seconds:
            if not self.said:
                print("[collect] time limit reached: finishing the architectures in flight",
                      file=sys.stderr)
                self.said = True
            return True
        return False


def _measure_in_process(keys, finished, out_of_time, hardware, image_size, overrides, space,
                        export: str, skipped) -> None:
    from mhmodels.vela import VelaCompileError
    for i, key in enumerate(keys):
        if out_of_time():
            break
        try:
            row = MEASURE[export](key, hardware, image_size, overrides, space)
        except VelaCompileError as err:
            skipped(key, err)
            continue
        finished(row)
        if export == "converter" and i % 20 == 19:
            import keras
            keras.backend.clear_session()


def _collect(hardware, num_archs, output, space_name, image_size, seed, overrides,
             max_seconds, progress, fused_prob, anchors, workers, shard, num_shards,
             export) -> int:
    from .space import get_space
    _check_collect_args(hardware, workers, shard, num_shards, export)
    if num_shards > 1 and shard > 0:
        anchors = ()
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    space = get_space(space_name)
    path, columns = Path(output), columns_for(hardware)
    done = _measured_keys(path, columns, hardware, space, image_size)
    deadline = _Deadline(max_seconds, time.time())
    skipped_keys = read_skipped(path, image_size)
    first = _first_keys(space, done | skipped_keys, anchors)
    have = len(done - {NORMALIZER_MODEL})
    new_first = sum(k != NORMALIZER_MODEL for k in first)
    keys = _KeySource(space, seed, fused_prob, num_archs, first, done, skipped_keys)
    if num_shards == 1:
        total, source = num_archs, keys.missing(have + new_first)
    else:
        total = len(range(shard, num_archs, num_shards)) + new_first
        source = keys.of_shard(shard, num_shards)
    recorder = _Recorder(path, columns, done, have, total, progress)

    def skip(key: str, err: Exception) -> None:
        recorder.skipped(key, err, image_size, keys)
    try:
        if workers == 1:
            _measure_in_process(source, recorder.finished, deadline.passed, hardware,
                                image_size, overrides, space, export, skip)
        else:
            _collect_parallel(source, recorder.finished, deadline.passed, hardware,
                              image_size, overrides, space_name, workers, export, skip)
    finally:
        recorder.close()
    return recorder.have


def _collect_parallel(keys, finished, out_of_time, hardware, image_size, overrides,
                      space_name, workers, export: str = "converter", skipped=None) -> None:
    """Keep `workers` processes busy with `keys`; hand each finished row to `finished`, each
    architecture vela could not compile to `skipped`."""
    import concurrent.futures as cf
    import multiprocessing
    from mhmodels.vela import VelaCompileError
    names = [hw.name for hw in hardware]
    context = multiprocessing.get_context("spawn")  # TensorFlow does not survive fork
    # Converter exports leak memory (fresh workers every 50); written files do not.
    with cf.ProcessPoolExecutor(workers, mp_context=context, initializer=worker_init,
                                max_tasks_per_child=50 if export == "converter" else None
                                ) as pool:
        pending = {}
        source = iter(keys)
        exhausted = False
        try:
            while True:
                while not exhausted and len(pending) < 2 * workers and not out_of_time():
                    key = next(source, None)
                    if key is None:
                        exhausted = True
                        break
                    pending[pool.submit(_worker_measure, key, names, image_size,
                                        overrides, space_name, export)] = key
                if not pending:
                    break
                done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                for future in done:
                    key = pending.pop(future)
                    try:
                        row = future.result()
                    except VelaCompileError as err:
                        if skipped is None:
                            raise
                        skipped(key, err)
                        exhausted = False  # the source may owe a replacement
                        continue
                    finished(row)
                if out_of_time():
                    exhausted = True
        finally:
            for future in pending:
                future.cancel()


def calibration_keys(space, num_archs: int, seed: int = 0,
                     anchors: Sequence[str] = ("multi_max", "multi_avg")) -> list[str]:
    """The architectures a host calibration measures: the zoo `anchors`, then distinct samples,
    alternately uniform and depthwise-heavy (`fused_prob=0.1`, where the zoo's and most
    searched models live), `num_archs` in all."""
    import mhmodels
    keys: list[str] = []
    for name in anchors[:num_archs]:
        key = space.encode(space.canonical(space.choices_for(mhmodels.get_spec(name))))
        if key not in keys:
            keys.append(key)
    rng = np.random.default_rng(seed)
    for _ in range(100 * num_archs + 100):
        if len(keys) >= num_archs:
            break
        key = space.encode(space.canonical(sample(space, rng, None if len(keys) % 2 else 0.1)))
        if key not in keys:
            keys.append(key)
    return keys


def measure_interleaved(keys: Sequence[str], hardware: Sequence[Hardware], output,
                        image_size: int = 224, rounds: int = 3, space_name: str = "multi_hw",
                        overrides: dict | None = None, progress: bool = True) -> Path:
    """Write MobileNetV1 and every architecture of `keys` once per format (directly from the
    spec, `search.hardware.write_formats`: the converter's graph, proven equal in latency),
    then time them all in `rounds` rounds, each in a new random order (interleaved: a slow
    spell on a shared host hits every model alike), keeping each model's minimum; write the
    rows to `output` (the collect CSV format, written atomically, with its `.hardware.json`
    and host record)."""
    import mhmodels
    from .hardware import write_formats
    from .space import get_space
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    for hw in hardware:
        if not hw.measurable:
            raise ValueError(f"hardware {hw.name!r} cannot be measured here")
    space = get_space(space_name)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    keys = [NORMALIZER_MODEL] + [k for k in keys if k != NORMALIZER_MODEL]
    exported, rows = {}, {}
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(keys) * (1 + rounds), desc="export, then time", unit="model",
                   dynamic_ncols=True, file=sys.stderr)
    for key in keys:
        t0 = time.time()
        spec = mhmodels.get_spec(NORMALIZER_MODEL) if key == NORMALIZER_MODEL else \
            space.decode(space.parse(key))
        exported[key], counts = write_formats(spec, [hw.export_format for hw in hardware],
                                              image_size)
        rows[key] = {"arch": key, "image_size": image_size, "madds_m": counts.madds / 1e6,
                     "params_m": counts.params / 1e6, "seconds": time.time() - t0}
        if bar is not None:
            bar.update()
    results: dict = {key: {hw.name: [] for hw in hardware} for key in keys}
    rng = np.random.default_rng(0)
    for _ in range(rounds):
        for j in rng.permutation(len(keys)):
            key = keys[j]
            for hw in hardware:
                results[key][hw.name].append(
                    hw.measure_tflite(exported[key][hw.export_format], **overrides))
            if bar is not None:
                bar.update()
    if bar is not None:
        bar.close()
    columns = columns_for(hardware)
    lines = [",".join(columns) + "\n"]
    for key in keys:
        row = rows[key]
        for hw in hardware:
            measured = results[key][hw.name]
            best = min(measured, key=hw.latency_ms)
            for suffix, value in hw.row_values(best).items():
                row[f"{hw.name}_{suffix}"] = value
            if "median_ms" in hw.column_suffixes():
                row[f"{hw.name}_median_ms"] = float(np.median([r.median_ms for r in measured]))
        lines.append(_format_row(columns, row))
    from mhmodels.files import atomic_write
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(output, "".join(lines))
    if config_path(output).exists():
        config_path(output).unlink()
    check_config(output, hardware, True, space)
    return output


def _merged_normalizer(header: list[str], normalizers: list[dict]) -> list[str]:
    """The one normaliser row of a merge: the inputs' when their timings agree, else the mean
    of each timed column (CPU timings from different processes), with a note."""
    norm = dict(normalizers[0])
    timed = [c for c in header if c.endswith("_ms")]
    if any(n[c] != normalizers[0][c] for n in normalizers[1:] for c in timed):
        for c in timed:
            norm[c] = f"{np.mean([float(n[c]) for n in normalizers]):.4f}"
        print(f"[merge] {NORMALIZER_MODEL}: {len(normalizers)} measurements differ; "
              "keeping their mean", file=sys.stderr)
    return [norm[c] for c in header]


def _merged_record(configs: dict, space: dict | None, hosts: list[dict]) -> dict:
    """The merged CSV's `.hardware.json`: the inputs' configuration, space and CPU host (as
    check_config records it; the first's, with a note, when the inputs' hosts differ)."""
    record = {"hardware": configs}
    if space is not None:
        record["space"] = space
    if hosts:
        from .host import host_id
        record["host"] = hosts[0]
        if len({host_id(h) for h in hosts}) > 1:
            print(f"[merge] the inputs hold CPU timings of different hosts; recording the "
                  f"first's ({hosts[0].get('cpu_model')})", file=sys.stderr)
    return record


def merge(inputs: Sequence[str | os.PathLike], output: str | os.PathLike) -> int:
    """Combine collected CSVs (e.g. shards) into `output`; returns its architecture count.

    Refused unless every input has the same columns, the same recorded hardware
    configuration (`<input>.hardware.json`), the same search space and image size. Rows are
    deduplicated by arch (conflicting duplicates are reported, the first kept); the
    normaliser row is kept once when the inputs agree, else averaged (CPU timings from
    different processes) with a note. Written atomically, with its configuration file."""
    inputs = [Path(p) for p in inputs]
    output = Path(output)
    if len(inputs) < 2:
        raise ValueError("--merge needs at least two input CSVs")
    if any(p.resolve() == output.resolve() for p in inputs):
        raise ValueError(f"{output} is also an input: merge into a new file")
    header = configs = space = None
    hosts: list[dict] = []
    rows: dict[str, dict] = {}
    normalizers: list[dict] = []
    conflicts = 0
    for path in inputs:
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist")
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            fields = list(reader.fieldnames or [])
            file_rows = list(reader)
        config = read_config(path)
        if config is None:
            raise ValueError(f"{path} has no {config_path(path).name}: its hardware "
                             "configuration is unknown, so it cannot be merged safely")
        if header is None:
            header, configs, space = fields, config, read_space(path)
            image_sizes = {r["image_size"] for r in file_rows}
        elif fields != header:
            raise ValueError(f"{path} has columns {fields}, {inputs[0]} has {header}")
        elif not all(same_config(config.get(k), configs.get(k))
                     for k in set(config) | set(configs)):
            raise ValueError(f"{path} was measured with hardware configured as {config}, "
                             f"{inputs[0]} with {configs}: data of different configurations "
                             "cannot be mixed")
        elif read_space(path) != space:
            raise ValueError(f"{path} holds architectures of space {read_space(path)}, "
                             f"{inputs[0]} of {space}")
        if read_host(path):
            hosts.append(read_host(path))
        sizes = {r["image_size"] for r in file_rows}
        if sizes - image_sizes:
            raise ValueError(f"{path} holds image sizes {sorted(sizes)}, {inputs[0]} "
                             f"{sorted(image_sizes)}")
        for r in file_rows:
            if r["arch"] == NORMALIZER_MODEL:
                normalizers.append(r)
            elif r["arch"] in rows:
                conflicts += any(rows[r["arch"]][c] != r[c] for c in header
                                 if c.endswith("_ms"))
            else:
                rows[r["arch"]] = r
    lines = [header] + ([_merged_normalizer(header, normalizers)] if normalizers else [])
    lines += [[r[c] for c in header] for r in rows.values()]
    if conflicts:
        print(f"[merge] {conflicts} architecture(s) measured differently in two inputs: "
              "the first measurement kept", file=sys.stderr)
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(lines)
    from mhmodels.files import atomic_write
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(output, out.getvalue())
    _write_json(config_path(output), _merged_record(configs, space, hosts))
    return len(rows)


def define_flags():
    """Flags of the command line (defined only when run as a program: no clashes on import)."""
    flags.DEFINE_list("hardware", ["cpu_float", "cpu_int8", "cpu_ref_float"],
                      "Hardware to measure (search.hardware names: LiteRT CPU, Ethos-U NPUs "
                      "via vela).")
    flags.DEFINE_integer("num_archs", 200, "Collect until the file holds this many architectures "
                         "(the normaliser row not counted).")
    flags.DEFINE_string("space", "multi_hw", "Search space: a name or a space file "
                        "(search.space.get_space); a reduced space samples inside its mask "
                        "and records its base space (same keys).")
    flags.DEFINE_string("output", "zoo/cost_models/data/cpu_latency.csv", "CSV to append to.")
    flags.DEFINE_integer("image_size", 224, "Input resolution of the measured models.")
    flags.DEFINE_integer("seed", 0, "Sampling seed (a rerun with the same seed continues the "
                         "same sequence, skipping architectures already measured).")
    flags.DEFINE_integer("runs", None, "Timed runs per model (default: each hardware's own).")
    flags.DEFINE_integer("warmup", None, "Warm-up runs per model (default: each hardware's own).")
    flags.DEFINE_float("max_hours", None, "Stop after this much wall time.")
    flags.DEFINE_float("fused_prob", None, "Probability of a fused block (default: uniform "
                       "over the type decision, i.e. 0.5).")
    flags.DEFINE_list("anchors", [], "Zoo models inside the space, or architecture keys "
                      "(the CSV's arch column), measured first (e.g. multi_avg,multi_max).")
    flags.DEFINE_integer("shard", 0, "This process's shard in [0, --num_shards).",
                         lower_bound=0)
    flags.DEFINE_integer("num_shards", 1, "Split the seed's first --num_archs architectures "
                         "into this many disjoint sets (one per host / process / phone, each "
                         "into its own --output); combine them with --merge.", lower_bound=1)
    flags.DEFINE_bool("merge", False, "Merge the CSVs given as arguments into --output "
                      "(same hardware configuration, space and image size) and exit.")
    flags.DEFINE_enum("export", "direct", ["direct", "converter"], "How each measured "
                      ".tflite is made: 'direct' writes it from the spec "
                      "(mhmodels.tflite_writer: milliseconds; vela estimates equal to the "
                      "converter's, CPU timings within noise), 'converter' builds the Keras "
                      "model and exports it (seconds).")
    flags.DEFINE_integer("workers", 1, "Processes that build, export and measure in parallel "
                         "(NPU estimates are deterministic; time CPU hardware with 1).",
                         lower_bound=1)


def main(argv):
    FLAGS = flags.FLAGS
    if FLAGS.merge:
        with output_lock(FLAGS.output):
            n = merge(argv[1:], FLAGS.output)
        print(f"{FLAGS.output}: {n} architectures from {len(argv) - 1} files")
        return 0
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]} (input CSVs go with --merge)")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    hardware = parse_hardware_list(FLAGS.hardware)
    from mhmodels.locking import check_unlocked
    check_unlocked(FLAGS.output, "latency collection", file=True, flag="--output")
    overrides = {"runs": FLAGS.runs, "warmup": FLAGS.warmup}
    n = collect(hardware, FLAGS.num_archs, FLAGS.output, FLAGS.space, FLAGS.image_size,
                FLAGS.seed, overrides,
                None if FLAGS.max_hours is None else FLAGS.max_hours * 3600.0,
                fused_prob=FLAGS.fused_prob, anchors=FLAGS.anchors, workers=FLAGS.workers,
                shard=FLAGS.shard, num_shards=FLAGS.num_shards, export=FLAGS.export)
    print(f"{FLAGS.output}: {n} architectures")


if __name__ == "__main__":
    from mhmodels import cli
    define_flags()
    cli.run(main)
