"""Hardware-specific reduced search spaces, derived from a block profile (issue 21, item 3).

    python -m search.reduce_space --data=runs/profile/latency.csv --hardware=ethos_u55 \\
        --output=search/spaces/multi_hw@ethos_u55.json
    python -m search.reduce_space --data=float.csv,int8.csv \\
        --hardware=cpu_float,ethos_u55,ethos_u85 --output=multi.json     # one space for all

The data are `search.profile_blocks`' (collect_latency CSVs of uniform architectures, joined
by architecture), the intervals its Welch intervals. The idea of Mills et al. (CIKM 2021): a
search in a space without the choices a hardware runs badly finds a better accuracy-latency
front at the same budget. Which choices, precisely:

**Dominated choice.** Within a stage, choice v of a block decision (expansion, kernel, block
type) is dominated by another choice u of the same decision when

  1. u offers at least v's capacity: for expansion and kernel a value >= v's (a larger kernel
     or expansion is never a loss of capacity); regular and fused blocks are two
     implementations of one (expansion, kernel) block, so either may dominate the other;
  2. at *every* block position (placement) of the stage, and on *every* hardware named, the
     mean end-to-end latency of the networks with v there exceeds that with u there by more
     than the 95% confidence interval of the difference (Welch t), both sides measured on at
     least ``min_samples`` networks. A placement without enough data confirms nothing.

So a choice is dropped only where the profile says it is slower for no gain in capacity, with
confidence, wherever it is placed. The relation is acyclic (means are ordered at every
placement), so every decision keeps at least one choice. With several hardware it is
dominance of the latency *vector*: a choice dropped for them all is slower on each, so it is
worse under f_avg, f_max and any other monotone aggregate (the multi-hardware space of the
experiment; see docs/block_profiles.md).

**Depth cap.** A stage is capped at n - 1 blocks when adding its n-th block costs, on every
hardware named, more than ``depth_share`` of the mean network latency with the interval's
lower bound above that (the n-th block's cost is disproportionate, not merely positive).

The result is a space file (`search.space.ReducedSpace`): the allowed choices by value per
stage, and the rule with its data, thresholds and what it dropped, and why.
"""
from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .space import NUM_BLOCKS, ReducedSpace, base_space

CAPACITY_ORDERED = ("expansion", "kernel")  # a larger value never has less capacity
FIELDS = ("expansion", "kernel", "type")
MIN_SAMPLES = 5
DEPTH_SHARE = 0.10


def _welch_lower(slow: np.ndarray, fast: np.ndarray) -> tuple[float, float]:
    """(mean(slow) - mean(fast), the lower end of its 95% Welch interval)."""
    from .profile_blocks import _diff
    d, lo, _ = _diff(slow, fast)
    return d, lo


def dominance(space, choices: np.ndarray, latencies: Mapping[str, np.ndarray], stage: int,
              field: str, min_samples: int = MIN_SAMPLES) -> dict:
    """{v: (u, {hardware: smallest margin over the placements, ms})} for every choice v of
    `field` in `stage` dominated by some u (the module docstring's rule)."""
    base = base_space(space)
    decision = base.decisions[base.index[f"stage{stage}/block0/{field}"]]
    values = list(decision.choices)
    depth = np.asarray(NUM_BLOCKS)[choices[:, base.index[f"stage{stage}/num_blocks"]]]
    out = {}
    for v in values:
        for u in values:
            if u == v or (field in CAPACITY_ORDERED and u < v):
                continue
            margins = {}
            for hw, y in latencies.items():
                worst = np.inf
                for b in range(max(NUM_BLOCKS)):
                    col = choices[:, base.index[f"stage{stage}/block{b}/{field}"]]
                    present = depth > b
                    slow = y[present & (col == values.index(v))]
                    fast = y[present & (col == values.index(u))]
                    if min(len(slow), len(fast)) < max(2, min_samples):
                        worst = -np.inf
                        break
                    d, lo = _welch_lower(slow, fast)
                    worst = min(worst, lo)
                margins[hw] = float(worst)
            if all(m > 0 for m in margins.values()):
                out[v] = (u, margins)
                break
    return out


def depth_cap(space, choices: np.ndarray, latencies: Mapping[str, np.ndarray], stage: int,
              depth_share: float = DEPTH_SHARE, min_samples: int = MIN_SAMPLES
              ) -> tuple[int, dict]:
    """(the stage's block cap, {hardware: lower bound of the step that set it, ms}); the cap is
    max(NUM_BLOCKS) and the dict empty when no step is disproportionate."""
    base = base_space(space)
    depth = np.asarray(NUM_BLOCKS)[choices[:, base.index[f"stage{stage}/num_blocks"]]]
    for n in NUM_BLOCKS[1:]:
        bounds = {}
        for hw, y in latencies.items():
            more, fewer = y[depth == n], y[depth == n - 1]
            if min(len(more), len(fewer)) < max(2, min_samples):
                break
            _, lo = _welch_lower(more, fewer)
            if not lo > depth_share * float(y.mean()):
                break
            bounds[hw] = float(lo)
        else:
            return n - 1, bounds
    return max(NUM_BLOCKS), {}


def derive(space, choices: np.ndarray, latencies: Mapping[str, np.ndarray], name: str,
           source: str = "", image_size: int | None = None, min_samples: int = MIN_SAMPLES,
           depth_share: float = DEPTH_SHARE) -> ReducedSpace:
    """The reduced space of `space` for the hardware of `latencies` ({hardware: (N,) ms} of the
    architectures `choices` (N, D)), with its rule recorded."""
    base = base_space(space)
    choices = np.asarray(choices)
    latencies = {h: np.asarray(y, np.float64) for h, y in latencies.items()}
    allowed: dict[str, list] = {}
    dropped, caps = [], []
    for s in range(len(base.stages)):
        for field in FIELDS:
            gone = dominance(base, choices, latencies, s, field, min_samples)
            if gone:
                values = base.decisions[base.index[f"stage{s}/block0/{field}"]].choices
                allowed[f"stage{s}/{field}"] = [v for v in values if v not in gone]
                dropped += [{"stage": s, "decision": field, "choice": v, "dominated_by": u,
                             "min_margin_ms": {h: round(m, 4) for h, m in margins.items()}}
                            for v, (u, margins) in gone.items()]
        cap, bounds = depth_cap(base, choices, latencies, s, depth_share, min_samples)
        if cap < max(NUM_BLOCKS):
            allowed[f"stage{s}/num_blocks"] = [n for n in NUM_BLOCKS if n <= cap]
            caps.append({"stage": s, "max_blocks": cap,
                         "step_lower_bound_ms": {h: round(b, 4) for h, b in bounds.items()}})
    hws = list(latencies)
    rule = {
        "method": "search.reduce_space: drop a stage's expansion / kernel / block-type choice "
                  "when another choice of at least its capacity (expansion, kernel: a value >= "
                  "it; block type: either) is faster by more than the 95% Welch interval of the "
                  "difference at every block position of the stage on every hardware; cap a "
                  "stage's blocks where the next block costs more than depth_share of the mean "
                  "latency (interval lower bound) on every hardware",
        "hardware": hws, "profile": source, "architectures": int(len(choices)),
        "image_size": image_size, "confidence": 0.95, "min_samples": int(min_samples),
        "depth_share": float(depth_share),
        "mean_latency_ms": {h: round(float(y.mean()), 4) for h, y in latencies.items()},
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "dropped": dropped, "depth_caps": caps}
    reduced = ReducedSpace(base, allowed, name, rule=rule, description=(
        f"{base.name} without the choices dominated on {', '.join(hws)} (block profile of "
        f"{len(choices)} measured architectures)"))
    kept = reduced.size() / base.size()
    reduced.rule["size_fraction"] = float(f"{kept:.4g}")
    return reduced


def read_profile(paths: Sequence[str | Path], hardware: Sequence[str], space
                 ) -> tuple[np.ndarray, dict[str, np.ndarray], int]:
    """(choices, {hardware: ms}, image size) joined over collect_latency CSVs by architecture:
    each hardware from the first file that has its column, the architectures all files hold."""
    from .hardware import NORMALIZER_MODEL
    base = base_space(space)
    tables, size = [], None
    for path in paths:
        with open(path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["arch"] != NORMALIZER_MODEL]
        if rows:
            size = size or int(rows[0]["image_size"])
            if int(rows[0]["image_size"]) != size:
                raise ValueError(f"{path}: image size {rows[0]['image_size']}, not {size}")
        tables.append({r["arch"]: r for r in rows})
    latencies: dict[str, list] = {}
    keys = None
    for hw in hardware:
        table = next((t for t in tables if t and f"{hw}_ms" in next(iter(t.values()))), None)
        if table is None:
            raise ValueError(f"no latency of {hw} in {', '.join(map(str, paths))}")
        keys = [k for k in (keys if keys is not None else table) if k in table]
        latencies[hw] = table
    keys = keys or []
    if len(keys) < 4:
        raise ValueError(f"{len(keys)} architectures measured on all of {', '.join(hardware)}")
    choices = np.stack([base.parse(k) for k in keys])
    return choices, {h: np.array([float(t[k][f"{h}_ms"]) for k in keys])
                     for h, t in latencies.items()}, int(size)


def write(paths: Sequence[str | Path], hardware: Sequence[str], output: str | Path,
          space_name: str = "multi_hw", name: str | None = None,
          min_samples: int = MIN_SAMPLES, depth_share: float = DEPTH_SHARE) -> ReducedSpace:
    """Derive the reduced space of `hardware` from the profile CSVs and write it to `output`."""
    from .space import get_space, write_space_file
    base = base_space(get_space(space_name))
    choices, latencies, size = read_profile(paths, hardware, base)
    name = name or f"{base.name}@{'+'.join(hardware)}"
    reduced = derive(base, choices, latencies, name, source=",".join(map(str, paths)),
                     image_size=size, min_samples=min_samples, depth_share=depth_share)
    write_space_file(reduced, output)
    return reduced


def summary(space: ReducedSpace) -> str:
    """One line per drop and cap, for the command's output."""
    lines = [f"{space.name}: {space.rule['size_fraction']:.3g} of {space.base.name}'s choice "
             f"vectors ({space.rule['architectures']} architectures)"]
    for d in space.rule["dropped"]:
        lines.append(f"  stage {d['stage']} {d['decision']}={d['choice']} dominated by "
                     f"{d['dominated_by']} (margin >= " + ", ".join(
                         f"{h} {m:.3f} ms" for h, m in d["min_margin_ms"].items()) + ")")
    for c in space.rule["depth_caps"]:
        lines.append(f"  stage {c['stage']}: at most {c['max_blocks']} blocks")
    if len(lines) == 1:
        lines.append("  nothing dominated at this sample size: the space is the full one")
    return "\n".join(lines)


def define_flags() -> None:
    from absl import flags
    flags.DEFINE_list("data", None, "collect_latency CSV(s) of uniform architectures (joined "
                      "by architecture; each hardware from the first file that has it).")
    flags.DEFINE_list("hardware", None, "Hardware whose latencies define the space (several: "
                      "a choice is dropped only when dominated on every one).")
    flags.DEFINE_string("output", None, "The space file to write (.json).")
    flags.DEFINE_string("space", "multi_hw", "Base space (a registered name).")
    flags.DEFINE_string("name", None, "The space's name (default <base>@<hw>+<hw>...).")
    flags.DEFINE_integer("min_samples", MIN_SAMPLES, "Networks each side of a comparison "
                         "needs at a placement for it to count.", lower_bound=2)
    flags.DEFINE_float("depth_share", DEPTH_SHARE, "Cap a stage where its next block costs "
                       "more than this share of the mean latency.")
    for name in ("data", "hardware", "output"):
        flags.mark_flag_as_required(name)


def main(argv):
    from absl import flags
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {' '.join(argv[1:])}")
    FLAGS = flags.FLAGS
    reduced = write(FLAGS.data, FLAGS.hardware, FLAGS.output, FLAGS.space, FLAGS.name,
                    FLAGS.min_samples, FLAGS.depth_share)
    print(summary(reduced))
    print(f"wrote {FLAGS.output}")
    return 0


if __name__ == "__main__":
    from mhmodels import cli
    define_flags()
    cli.run(main)
