"""`python -m search.compare_spaces`: two (or more) experiments that differ only in their search
space, compared as accuracy against *measured* f (Pareto points and hypervolume).

    python -m search.compare_spaces --runs=full:runs/exp_full,reduced:runs/exp_reduced \\
        --output_dir=runs/space_comparison

Each run is a `search.experiment` output directory (its results.csv); runs must share every
setting but the space (checked: their experiment.json without `space` / `space_for`). For
every search label (single_<hw>, searched_avg, searched_max) and run, the points are
(measured f of that search's metric, top-1) of every seed and width. Lower f and higher
accuracy are better; the hypervolume is the area those points dominate up to the reference
point (f = ``--f_ref``, top-1 = 0), in f x top-1 units: of the union of all seeds (the
front each space reaches) and per seed, with the paired per-seed difference between the runs
(second minus first) and its 95% interval (Student t).

Writes space_comparison.md / .csv and space_comparison.png (one panel per search label) and
prints the table.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from .experiment_report import csv_text, paired_difference, save

F_REF = 2.0  # twice MobileNetV1's latency: every search here targets f = 1
SPACE_KEYS = ("space", "space_for", "output_dir", "seeds", "measure_rounds")


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points (f, accuracy) no other point beats on both (lower f, higher accuracy),
    sorted by f."""
    front: list[tuple[float, float]] = []
    for f, a in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or a > front[-1][1]:
            front.append((f, a))
    return front


def hypervolume(points: Sequence[tuple[float, float]], f_ref: float = F_REF) -> float:
    """Area dominated by `points` within f < f_ref, accuracy > 0 (2-D, exact)."""
    front = [(f, a) for f, a in pareto_front(points) if f < f_ref and a > 0]
    area = 0.0
    for i, (f, a) in enumerate(front):
        f_next = front[i + 1][0] if i + 1 < len(front) else f_ref
        area += (f_next - f) * a
    return area


def read_run(directory: str | Path) -> tuple[dict, list[dict]]:
    """(experiment settings, search rows of results.csv) of one experiment directory."""
    directory = Path(directory)
    settings = json.loads((directory / "experiment.json").read_text())
    with open(directory / "results.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("measured_f") and
                r["group"] in ("single-hardware search", "multi-hardware search")]
    for r in rows:
        r["seed"], r["width"] = int(r["seed"]), float(r["width"])
        r["measured_f"], r["top1"] = float(r["measured_f"]), float(r["top1"])
    return settings, rows


def compare(runs: dict[str, str | Path], f_ref: float = F_REF) -> tuple[str, list[dict]]:
    """The Markdown table and its rows (see the module docstring)."""
    data = {name: read_run(d) for name, d in runs.items()}
    names = list(runs)
    same = [{k: v for k, v in s.items() if k not in SPACE_KEYS} for s, _ in data.values()]
    if any(s != same[0] for s in same[1:]):
        raise ValueError("the runs differ in more than their space: "
                         + "; ".join(f"{n}: {s}" for n, s in zip(names, same)))
    labels = list(dict.fromkeys(r["label"] for _, rows in data.values() for r in rows))
    out, lines = [], []
    first, last = names[0], names[-1]
    lines += [f"| search | " + " | ".join(f"{n}: points / front / HV" for n in names)
              + f" | per-seed HV, {last} - {first} (95% CI) | seeds |",
              "|---|" + "---|" * len(names) + "---|---|"]
    for label in labels:
        row = {"label": label}
        cells = []
        per_seed = {}
        for n in names:
            mine = [r for r in data[n][1] if r["label"] == label]
            pts = [(r["measured_f"], r["top1"]) for r in mine]
            hv = hypervolume(pts, f_ref)
            row.update({f"{n}_points": len(pts), f"{n}_front": len(pareto_front(pts)),
                        f"{n}_hv": hv,
                        f"{n}_f_mean": float(np.mean([p[0] for p in pts])) if pts else "",
                        f"{n}_top1_mean": float(np.mean([p[1] for p in pts])) if pts else ""})
            cells.append(f"{len(pts)} / {len(pareto_front(pts))} / {hv:.4f}")
            per_seed[n] = {s: hypervolume([(r["measured_f"], r["top1"]) for r in mine
                                           if r["seed"] == s], f_ref)
                           for s in sorted({r["seed"] for r in mine})}
        seeds = sorted(set(per_seed[first]) & set(per_seed[last]))
        diff = paired_difference([per_seed[last][s] for s in seeds],
                                 [per_seed[first][s] for s in seeds]) if seeds else None
        if diff and diff["n"] > 1:
            text = f"{diff['mean']:+.4f} [{diff['low']:+.4f}, {diff['high']:+.4f}]"
        elif diff:
            text = f"{diff['mean']:+.4f} (one seed)"
        else:
            text = "-"
        row.update({"hv_difference": diff["mean"] if diff else "",
                    "hv_difference_low": diff["low"] if diff else "",
                    "hv_difference_high": diff["high"] if diff else "", "seeds": len(seeds)})
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {text} | {len(seeds)} |")
        out.append(row)
    head = (f"Hypervolume: area dominated in (measured f of the search's metric, top-1) up to "
            f"f = {f_ref:g}, top-1 = 0; higher is better. Points: every seed and width.\n\n")
    return head + "\n".join(lines) + "\n", out


def plot(runs: dict[str, str | Path], path: str | Path, f_ref: float = F_REF) -> None:
    """One panel per search label: every run's points and its Pareto front."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    data = {n: read_run(d)[1] for n, d in runs.items()}
    labels = list(dict.fromkeys(r["label"] for rows in data.values() for r in rows))
    fig, axes = plt.subplots(1, max(1, len(labels)), figsize=(3.2 * max(1, len(labels)), 3.4),
                             squeeze=False)
    for ax, label in zip(axes[0], labels):
        for i, (n, rows) in enumerate(data.items()):
            pts = [(r["measured_f"], 100 * r["top1"]) for r in rows if r["label"] == label]
            if not pts:
                continue
            ax.scatter(*zip(*pts), s=18, marker="os^"[i % 3], label=n, alpha=0.8)
            front = pareto_front(pts)
            ax.step([p[0] for p in front] + [f_ref], [p[1] for p in front] + [front[-1][1]],
                    where="post", lw=0.8)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("measured f (lower is better)", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel("top-1 (%)", fontsize=8)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    save(fig, str(path))


def define_flags() -> None:
    from absl import flags
    flags.DEFINE_list("runs", None, "name:directory,... of search.experiment outputs (the "
                      "first is the reference of the paired difference).")
    flags.DEFINE_string("output_dir", None, "Where space_comparison.md/.csv/.png go.")
    flags.DEFINE_float("f_ref", F_REF, "Reference f of the hypervolume.")
    flags.mark_flag_as_required("runs")
    flags.mark_flag_as_required("output_dir")


def main(argv):
    from absl import flags
    from mhmodels.files import atomic_write
    FLAGS = flags.FLAGS
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {' '.join(argv[1:])}")
    runs = {}
    for item in FLAGS.runs:
        name, sep, directory = item.partition(":")
        if not sep:
            raise ValueError(f"--runs={item}: expected name:directory")
        runs[name] = directory
    if len(runs) < 2:
        raise ValueError("--runs: name at least two experiments")
    out = Path(FLAGS.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    text, rows = compare(runs, FLAGS.f_ref)
    atomic_write(out / "space_comparison.md", text)
    atomic_write(out / "space_comparison.csv", csv_text(rows))
    plot(runs, out / "space_comparison.png", FLAGS.f_ref)
    print(text)
    return 0


if __name__ == "__main__":
    from mhmodels import cli
    define_flags()
    cli.run(main)
