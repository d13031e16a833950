"""Which blocks each hardware likes, from end-to-end latencies only (block profiling).

    python -m search.profile_blocks --hardware=cpu_int8,ethos_u55,ethos_u85 \\
        --samples=2000 --output_dir=runs/profile      # measures, then reports
    python -m search.profile_blocks --hardware=ethos_u55 --samples=16 --image_size=32 \\
        --output_dir=/tmp/p                           # small mode (the test): ~20 s CPU
    python -m search.profile_blocks --hardware=ethos_u55 --data=latency.csv \\
        --output_dir=/tmp/p                           # profile collected data

The method of Mills et al., "Profiling Neural Blocks and Design Spaces for Mobile Neural
Architecture Search" (CIKM 2021), on this project's search space (`search.space`) and hardware
(`search.hardware`): sample architectures uniformly, measure each end to end (LiteRT timing or
vela estimate of the file `mhmodels.tflite_writer` writes, collected by
`search.collect_latency` into `<output_dir>/latency.csv`, resumable), then for every block
position (stage s, block b) and every choice v of it (expansion, kernel, regular / fused):

  block effect      E[y | block (s, b) present with v]                          (paper Eq. 1)
  placement effect  E[y | (s, b) = v] - E[y]                                    (paper Eq. 2)
  p5 / p95 shift    Q_q[y | (s, b) = v] - Q_q[y], q = 5%, 95%                   (paper Eq. 3)
  choice effect     E[y | (s, b) = v] - E[y | (s, b) present]: the cost of v against the
                    position's other choices (depth and the rest of the network averaged
                    out alike; the quantity a linear cost model's weights estimate)

and per stage the depth sensitivity E[y | n blocks] - E[y | n - 1 blocks] and the width
(output filter ratio) effect E[y | ratio] - E[y]. Each estimate has a 95% confidence interval
(Welch's t for differences of means; distribution-free order-statistic intervals for
the percentiles). The estimators are exact on an additive cost (tests: known per-choice
costs recovered within 5%).

Outputs in --output_dir: effects.csv (every estimate with its interval), report.md (tables,
the cross-check, findings), heatmaps_<hw>.png (expansion x kernel, regular and fused, one
panel per stage) and heatmaps.png (one panel per hardware, all stages pooled).

Cross-check: the same estimator applied to the shipped linear cost model's predictions
(`search.cost_model.load_cost_model`) for 50,000 fresh uniform architectures gives the effects
its coefficients imply (with negligible sampling noise); the report gives, per hardware, the fraction of clearly non-zero measured effects
whose sign the cost model agrees with and the Spearman rank correlation, and lists the
disagreements.
"""
from __future__ import annotations

import csv
import io
import math
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .space import BLOCK_TYPES, EXPANSIONS, FILTER_RATIOS, KERNELS, NUM_BLOCKS, SearchSpace

Z95 = 1.959964
CROSS_CHECK_SAMPLES = 50000  # architectures whose cost-model predictions give its effects
FIELDS = {"expansion": EXPANSIONS, "kernel": KERNELS, "type": BLOCK_TYPES}


@dataclass(frozen=True)
class Effect:
    """One estimate (ms) with its 95% interval; `stage`/`block` -1 where pooled."""

    hardware: str
    factor: str  # expansion | kernel | type | expansion_kernel_type | depth | width
    stage: int
    block: int
    choice: str
    n: int
    mean: float
    placement: float
    placement_lo: float
    placement_hi: float
    choice_effect: float
    choice_lo: float
    choice_hi: float
    p5_shift: float
    p5_lo: float
    p5_hi: float
    p95_shift: float
    p95_lo: float
    p95_hi: float


def _quantile_ci(values: np.ndarray, q: float) -> tuple[float, float, float]:
    """The q-quantile with a distribution-free 95% interval (binomial order statistics)."""
    n = len(values)
    s = np.sort(values)
    half = Z95 * math.sqrt(n * q * (1 - q))
    lo = int(max(0, math.floor(n * q - half)))
    hi = int(min(n - 1, math.ceil(n * q + half)))
    return float(np.quantile(s, q)), float(s[lo]), float(s[hi])


def _diff(sub: np.ndarray, ref: np.ndarray) -> tuple[float, float, float]:
    """mean(sub) - mean(ref) with a Welch 95% interval (Student t, Welch-Satterthwaite
    degrees of freedom: a few samples per choice give wide intervals, not false ones)."""
    d = float(sub.mean() - ref.mean())
    if len(sub) < 2 or len(ref) < 2:
        return d, -math.inf, math.inf
    a, b = sub.var(ddof=1) / len(sub), ref.var(ddof=1) / len(ref)
    se = math.sqrt(a + b)
    if se == 0:
        return d, d, d
    dof = (a + b) ** 2 / (a * a / (len(sub) - 1) + b * b / (len(ref) - 1))
    from scipy.stats import t
    half = float(t.ppf(0.975, dof)) * se
    return d, d - half, d + half


def _effect(hardware, factor, stage, block, choice, y, mask, present) -> Effect | None:
    sub = y[mask]
    if len(sub) < 2:
        return None
    placement = _diff(sub, y)
    chosen = _diff(sub, y[present]) if present is not None else (float("nan"),) * 3
    q5, lo5, hi5 = _quantile_ci(sub, 0.05)
    q95, lo95, hi95 = _quantile_ci(sub, 0.95)
    a5, a95 = float(np.quantile(y, 0.05)), float(np.quantile(y, 0.95))
    return Effect(hardware, factor, stage, block, str(choice), int(mask.sum()), float(sub.mean()),
                  *placement, *chosen, q5 - a5, lo5 - a5, hi5 - a5, q95 - a95, lo95 - a95,
                  hi95 - a95)


def block_effects(space: SearchSpace, choices: np.ndarray, y: np.ndarray,
                  hardware: str = "") -> list[Effect]:
    """Every estimate of the module docstring for one hardware's latencies `y` (N,) of the
    architectures `choices` (N, D)."""
    choices = np.asarray(choices)
    y = np.asarray(y, dtype=np.float64)
    if choices.ndim != 2 or len(choices) != len(y) or len(y) < 4:
        raise ValueError(f"need (N, D) choices and N latencies with N >= 4, got "
                         f"{choices.shape} and {y.shape}")
    col = space.index
    out: list[Effect] = []

    def add(effect):
        if effect is not None:
            out.append(effect)

    for s in range(len(space.stages)):
        depth = np.asarray(NUM_BLOCKS)[choices[:, col[f"stage{s}/num_blocks"]]]
        for b in range(max(NUM_BLOCKS)):
            present = depth > b
            if present.sum() < 2:
                continue
            values = {f: np.asarray(v)[choices[:, col[f"stage{s}/block{b}/{f}"]]]
                      for f, v in FIELDS.items()}
            for f, options in FIELDS.items():
                for v in options:
                    add(_effect(hardware, f, s, b, v, y, present & (values[f] == v), present))
            for e in EXPANSIONS:
                for k in KERNELS:
                    for t in BLOCK_TYPES:
                        mask = present & (values["expansion"] == e) & (values["kernel"] == k) \
                            & (values["type"] == t)
                        add(_effect(hardware, "expansion_kernel_type", s, b, f"{e}/{k}/{t}", y,
                                    mask, present))
        for n in NUM_BLOCKS:
            add(_effect(hardware, "depth", s, -1, n, y, depth == n, None))
        ratio = np.asarray(FILTER_RATIOS)[choices[:, col[f"stage{s}/filter_ratio"]]]
        for r in FILTER_RATIOS:
            add(_effect(hardware, "width", s, -1, r, y, ratio == r, None))
    return out


def pooled(effects: Sequence[Effect], factor: str, stage: int | None = None
           ) -> dict[str, tuple[float, float]]:
    """{choice: (choice effect, its 95% half-width)} averaged over block positions (and over
    stages unless `stage` is given), weighting each position by its sample count."""
    acc: dict[str, list] = {}
    for e in effects:
        if e.factor != factor or e.block < 0 or (stage is not None and e.stage != stage):
            continue
        acc.setdefault(e.choice, []).append((e.n, e.choice_effect, (e.choice_hi - e.choice_lo) / 2))
    out = {}
    for choice, items in acc.items():
        n = np.array([i[0] for i in items], float)
        w = n / n.sum()
        out[choice] = (float(w @ [i[1] for i in items]),
                       float(math.sqrt(sum((wi * i[2]) ** 2 for wi, i in zip(w, items)))))
    return out


def depth_sensitivity(effects: Sequence[Effect], stage: int) -> dict[int, tuple[float, float]]:
    """{n: (E[y | n blocks] - E[y | n - 1 blocks], 95% half-width)} for n = 2..4."""
    rows = {int(e.choice): e for e in effects if e.factor == "depth" and e.stage == stage}
    out = {}
    for n in NUM_BLOCKS[1:]:
        if n in rows and n - 1 in rows:
            a, b = rows[n], rows[n - 1]
            half = math.hypot(a.placement_hi - a.placement, b.placement_hi - b.placement)
            out[n] = (a.mean - b.mean, half)
    return out


# --------------------------------------------------------------------------------------------
# Cross-check against the linear cost models.

def summary_effects(effects: Sequence[Effect]) -> dict[str, tuple[float, float]]:
    """The effects compared with a cost model: per stage, each kernel / expansion / type
    choice against the position's average, each depth step and each width ratio."""
    out = {}
    stages = sorted({e.stage for e in effects})
    for s in stages:
        for factor in FIELDS:
            for choice, value in pooled(effects, factor, s).items():
                out[f"stage{s} {factor}={choice}"] = value
        for n, value in depth_sensitivity(effects, s).items():
            out[f"stage{s} depth {n - 1}->{n}"] = value
        for e in effects:
            if e.factor == "width" and e.stage == s:
                out[f"stage{s} width={e.choice}"] = (e.placement, e.placement_hi - e.placement)
    return out


def cross_check(measured: dict[str, tuple[float, float]],
                predicted: dict[str, tuple[float, float]]) -> dict:
    """Sign agreement over the measured effects whose interval excludes 0, Spearman rank
    correlation over all, and the disagreements (largest first)."""
    from .cost_model import spearman
    keys = [k for k in measured if k in predicted]
    clear = [k for k in keys if abs(measured[k][0]) > measured[k][1]]
    agree = [k for k in clear if np.sign(measured[k][0]) == np.sign(predicted[k][0])]
    rho = spearman([measured[k][0] for k in keys], [predicted[k][0] for k in keys]) \
        if len(keys) > 2 else float("nan")
    disagree = sorted((k for k in clear if k not in agree), key=lambda k: -abs(measured[k][0]))
    return {"effects": len(keys), "clear": len(clear), "sign_agreement":
            len(agree) / len(clear) if clear else float("nan"), "spearman": rho,
            "disagreements": [(k, measured[k][0], predicted[k][0]) for k in disagree]}


# --------------------------------------------------------------------------------------------
# Data, report, plots.

def measure(hardware: Sequence, samples: int, output_dir: Path, space_name: str,
            image_size: int, seed: int, workers: int) -> Path:
    """Measure `samples` uniform architectures into `<output_dir>/latency.csv` (resumable)."""
    from .collect_latency import collect
    path = output_dir / "latency.csv"
    collect(hardware, samples, path, space_name=space_name, image_size=image_size, seed=seed,
            progress=sys.stderr.isatty(), workers=workers, export="direct")
    return path


def read_latencies(path: Path, hardware: Sequence[str], space: SearchSpace
                   ) -> tuple[np.ndarray, dict[str, np.ndarray], int]:
    """(choices (N, D), {hardware: ms (N,)}, image size) from a collect_latency CSV."""
    from .hardware import NORMALIZER_MODEL
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["arch"] != NORMALIZER_MODEL]
    if not rows:
        raise ValueError(f"{path} holds no architectures")
    missing = [h for h in hardware if f"{h}_ms" not in rows[0]]
    if missing:
        raise ValueError(f"{path} has no latency of {', '.join(missing)}")
    choices = np.stack([space.parse(r["arch"]) for r in rows])
    return choices, {h: np.array([float(r[f"{h}_ms"]) for r in rows]) for h in hardware}, \
        int(rows[0]["image_size"])


def write_effects_csv(effects: Sequence[Effect], path: Path) -> None:
    from mhmodels.files import atomic_write
    out = io.StringIO()
    names = list(Effect.__dataclass_fields__)
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(names)
    for e in effects:
        writer.writerow([f"{v:.5g}" if isinstance(v, float) else v for v in asdict(e).values()])
    atomic_write(path, out.getvalue())


def heatmap_grid(effects: Sequence[Effect], stage: int | None) -> np.ndarray:
    """(expansion, kernel x type) choice effects, ms: columns k3, k5, k3 fused, k5 fused."""
    values = pooled(effects, "expansion_kernel_type", stage)
    grid = np.full((len(EXPANSIONS), len(KERNELS) * len(BLOCK_TYPES)), np.nan)
    for i, e in enumerate(EXPANSIONS):
        for j, (t, k) in enumerate((t, k) for t in BLOCK_TYPES for k in KERNELS):
            if f"{e}/{k}/{t}" in values:
                grid[i, j] = values[f"{e}/{k}/{t}"][0]
    return grid


def _columns() -> list[str]:
    return [f"k{k}" + (" fused" if t == "fused_ibn" else "") for t in BLOCK_TYPES for k in KERNELS]


def plot_heatmaps(panels: dict[str, np.ndarray], path: Path, title: str) -> None:
    """One expansion x (kernel, type) heatmap per panel, a diverging colour scale centred at
    0 (red: slower than the position's average, blue: faster), values printed in the cells."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(3.1 * n + 0.8, 3.6), squeeze=False)
    for ax, (name, grid) in zip(axes[0], panels.items()):
        limit = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0
        image = ax.imshow(grid, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
        ax.set_xticks(range(grid.shape[1]), _columns(), rotation=30, fontsize=8)
        ax.set_yticks(range(len(EXPANSIONS)), [f"e{e}" for e in EXPANSIONS], fontsize=8)
        ax.set_title(name, fontsize=9)
        for (i, j), v in np.ndenumerate(grid):
            if np.isfinite(v):
                ax.text(j, i, f"{v:+.2f}" if limit < 10 else f"{v:+.0f}", ha="center",
                        va="center", fontsize=7)
        fig.colorbar(image, ax=ax, fraction=0.05, pad=0.02).ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def _fmt(value: float, half: float) -> str:
    return f"{value:+.3f} ± {half:.3f}"


def report(effects_by_hw: dict[str, list[Effect]], latencies: dict[str, np.ndarray],
           checks: dict[str, dict | str], image_size: int, space: SearchSpace,
           output_dir: Path) -> str:
    """The Markdown report: per hardware the pooled choice effects, depth and width, the
    cross-check, and a few findings."""
    lines = [f"# Block profile: {', '.join(effects_by_hw)}", "",
             f"{len(next(iter(latencies.values())))} uniform architectures of space "
             f"`{space.name}`, {image_size}x{image_size}, latency in ms "
             "(choice effect: against the block position's average, pooled over positions "
             "and stages; ± the 95% half-width). Method: Mills et al., CIKM 2021; "
             "`search/profile_blocks.py`.", "",
             "![heatmaps](heatmaps.png)", ""]
    hws = list(effects_by_hw)
    header = "| choice | " + " | ".join(hws) + " |"
    rule = "|---|" + "---|" * len(hws)
    lines += ["## Choice effects (ms)", "", header, rule]
    for factor in FIELDS:
        per = {h: pooled(effects_by_hw[h], factor) for h in hws}
        for choice in [str(v) for v in FIELDS[factor]]:
            cells = [_fmt(*per[h][choice]) if choice in per[h] else "" for h in hws]
            lines.append(f"| {factor} {choice} | " + " | ".join(cells) + " |")
    lines += ["", "## Depth sensitivity (ms per added block, by stage)", "", header, rule]
    for s in range(len(space.stages)):
        for n in NUM_BLOCKS[1:]:
            cells = []
            for h in hws:
                d = depth_sensitivity(effects_by_hw[h], s)
                cells.append(_fmt(*d[n]) if n in d else "")
            lines.append(f"| stage {s}: {n - 1} -> {n} | " + " | ".join(cells) + " |")
    lines += ["", "## Width (output filter ratio) placement effect (ms, by stage)", "",
              header, rule]
    for s in range(len(space.stages)):
        for r in FILTER_RATIOS:
            cells = []
            for h in hws:
                e = [x for x in effects_by_hw[h] if x.factor == "width" and x.stage == s
                     and x.choice == str(r)]
                cells.append(_fmt(e[0].placement, e[0].placement_hi - e[0].placement)
                             if e else "")
            lines.append(f"| stage {s}: x{r} | " + " | ".join(cells) + " |")
    lines += ["", "## Relative to each hardware's mean latency", "",
              "| hardware | mean ms | fused vs regular | kernel 5 vs 3 | expansion 6 vs 1 |",
              "|---|---|---|---|---|"]
    for h in hws:
        mean = float(latencies[h].mean())
        t, k, e = (pooled(effects_by_hw[h], f) for f in ("type", "kernel", "expansion"))

        def rel(a, b):
            return f"{(a[0] - b[0]) / mean:+.1%}" if a and b else ""
        lines.append(f"| {h} | {mean:.3f} | {rel(t.get('fused_ibn'), t.get('ibn'))} | "
                     f"{rel(k.get('5'), k.get('3'))} | {rel(e.get('6'), e.get('1'))} |")
    lines += ["", "## Cross-check with the shipped linear cost models", "",
              f"The same estimator on the cost model's predictions for {CROSS_CHECK_SAMPLES} "
              "fresh uniform architectures (the effects its coefficients imply). Sign agreement "
              "over the measured effects whose interval excludes 0; the Spearman correlation "
              "over all of them is bounded by the measured effects' noise.", "",
              "| hardware | effects | clearly non-zero | sign agreement | Spearman | largest "
              "disagreements (measured / cost model, ms) |", "|---|---|---|---|---|---|"]
    for h in hws:
        c = checks.get(h)
        if not isinstance(c, dict):
            lines.append(f"| {h} | {c or 'no cost model'} | | | | |")
            continue
        worst = "; ".join(f"{k}: {m:+.3f} / {p:+.3f}" for k, m, p in c["disagreements"][:3])
        name = h if c.get("fitted_image_size", image_size) == image_size else \
            f"{h} (model fitted at {c['fitted_image_size']})"
        lines.append(f"| {name} | {c['effects']} | {c['clear']} | {c['sign_agreement']:.0%} | "
                     f"{c['spearman']:.2f} | {worst or '-'} |")
    text = "\n".join(lines) + "\n"
    from mhmodels.files import atomic_write
    atomic_write(output_dir / "report.md", text)
    return text


def profile(hardware: Sequence[str], samples: int, output_dir: str | os.PathLike, *,
            space_name: str = "multi_hw", image_size: int = 224, seed: int = 0,
            workers: int = 1, data: str | os.PathLike | None = None) -> dict:
    """Measure (or read `data`), estimate, cross-check, write the outputs; returns
    {hardware: [Effect, ...]}."""
    from .cost_model import load_cost_model
    from .hardware import parse_hardware_list
    from .space import get_space
    space = get_space(space_name)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    hws = parse_hardware_list(hardware)
    path = Path(data) if data else measure(hws, samples, output_dir, space_name, image_size,
                                           seed, workers)
    choices, latencies, size = read_latencies(path, [h.name for h in hws], space)
    effects = {h: block_effects(space, choices, y, h) for h, y in latencies.items()}
    checks: dict[str, dict | str] = {}
    for h, y in latencies.items():
        try:
            model = load_cost_model(h)
        except Exception as err:  # noqa: BLE001 - reported per hardware in the report
            checks[h] = f"no cost model ({type(err).__name__})"
            continue
        # The cost model's effects from many fresh architectures (predictions are cheap): on
        # the measured architectures themselves both estimates would share the sample's
        # composition noise and agree for that reason alone.
        rng = np.random.default_rng(seed + 1)
        fresh = rng.integers(0, space.num_choices, (CROSS_CHECK_SAMPLES, len(space.num_choices)))
        predicted = block_effects(space, fresh, model.predict(fresh), h)
        checks[h] = cross_check(summary_effects(effects[h]), summary_effects(predicted))
        checks[h]["fitted_image_size"] = int(model.image_size)
    write_effects_csv([e for v in effects.values() for e in v], output_dir / "effects.csv")
    plot_heatmaps({h: heatmap_grid(effects[h], None) for h in effects},
                  output_dir / "heatmaps.png",
                  "choice effect (ms) vs the block position's average, all stages")
    for h in effects:
        plot_heatmaps({f"stage {s}": heatmap_grid(effects[h], s)
                       for s in range(len(space.stages))},
                      output_dir / f"heatmaps_{h}.png", f"{h}: choice effect (ms) by stage")
    report(effects, latencies, checks, size, space, output_dir)
    return effects


def define_flags():
    from absl import flags
    flags.DEFINE_list("hardware", ["cpu_int8", "ethos_u55", "ethos_u85"],
                      "Hardware to profile (search.hardware names).")
    flags.DEFINE_integer("samples", 1000, "Uniform architectures measured.", lower_bound=4)
    flags.DEFINE_string("output_dir", None, "Where latency.csv, effects.csv, report.md and "
                        "the heatmaps go.")
    flags.DEFINE_string("space", "multi_hw", "Search space name (search.space.get_space).")
    flags.DEFINE_integer("image_size", 224, "Input resolution of the measured networks.")
    flags.DEFINE_integer("seed", 0, "Sampling seed.")
    flags.DEFINE_integer("workers", 1, "Measuring processes (vela estimates are "
                         "deterministic; time CPU hardware with 1).", lower_bound=1)
    flags.DEFINE_string("data", None, "Profile this collect_latency CSV instead of measuring.")
    flags.mark_flag_as_required("output_dir")


def main(argv):
    from absl import app, flags
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    FLAGS = flags.FLAGS
    profile(FLAGS.hardware, FLAGS.samples, FLAGS.output_dir, space_name=FLAGS.space,
            image_size=FLAGS.image_size, seed=FLAGS.seed, workers=FLAGS.workers,
            data=FLAGS.data)
    print(f"{FLAGS.output_dir}/report.md")


if __name__ == "__main__":
    from mhmodels import cli
    define_flags()
    cli.run(main)
