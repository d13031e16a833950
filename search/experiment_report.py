"""The paper's experiment, reported: rows, Tables 2 and 3, paired statistics, structure, plots.

Computation of the report only (no search, training or measurement here): search.experiment
gathers the units' results and calls these. Table 3 leads with the paper's comparison, one
multi-hardware search against the best of the N single-hardware searches of the same seed, as
paired per-seed differences with a 95% confidence interval (Student's t); the random control is
the mean and spread of all its K architectures per search group, never a best-of-K pick; every
model is a curve over width multipliers, so a smaller model cannot pass for a better one.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Sequence

import numpy as np

NORMALIZER = "mobilenet_v1"
MULTI_METRICS = ("avg", "max")
GROUPS = ("single-hardware search", "multi-hardware search", "random (control)",
          "zoo baseline")


def group_of(label: str) -> str:
    if label.startswith("random_"):
        return "random (control)"
    if label.startswith("single_"):
        return "single-hardware search"
    if label.startswith("searched_"):
        return "multi-hardware search"
    return "zoo baseline"


def matched_search(label: str) -> str | None:
    """The search a random-control label was matched to (random_<search>_<i>), else None."""
    if not label.startswith("random_"):
        return None
    return label[len("random_"):].rsplit("_", 1)[0]


def build_rows(hardware, searches: dict, trainings: dict, normalizers: list[float]
               ) -> list[dict]:
    """One row per (seed, model, width): accuracy, measured latency per hardware, MN-Norm,
    the binding hardware (the largest L_i / C_i), and for searches and their random controls
    the predicted f of the search's metric beside the measured one."""
    from mhmodels.metrics import mn_norm
    from .reward import latency_metric
    rows = []
    for (seed, key), train in sorted(trainings.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        label, width = train["label"].split("@")[0], float(train.get("width", 1.0))
        meas = train["measurement"]
        lat = np.array([meas["latency_ms"][hw.name] for hw in hardware])
        fa, fm = mn_norm(lat, normalizers)
        ratio = lat / np.asarray(normalizers)
        search = searches.get((seed, matched_search(label) or label), {})
        measured_f = predicted_f = ""
        if search:
            idx = [i for i, hw in enumerate(hardware) if hw.name in search["hardware"]]
            measured_f = float(latency_metric(lat[idx], [normalizers[i] for i in idx],
                                              search["metric"]))
            predicted_f = float(search.get("predicted_f_metric", search["predicted_f_max"])) \
                if group_of(label) != "random (control)" else ""
        rows.append({
            "seed": seed, "group": group_of(label), "label": label, "width": width,
            "model": train["model"], "architecture": train["digest"], "top1": train["top1"],
            **{f"latency_ms_{hw.name}": float(v) for hw, v in zip(hardware, lat)},
            "mn_norm_avg": float(fa), "mn_norm_max": float(fm),
            "binding_hardware": hardware[int(np.argmax(ratio))].name,
            "search_metric": search.get("metric", ""), "predicted_f": predicted_f,
            "measured_f": measured_f, "params_m": meas["params_m"], "madds_m": meas["madds_m"],
            "search_steps": search.get("steps", "") if not label.startswith("random_") else "",
            "search_wall_s": search.get("wall_s", "") if not label.startswith("random_") else ""})
    return rows


def csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    fields = list(dict.fromkeys(k for row in rows for k in row))  # every row's, in order
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# Statistics

def mean_std(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray([x for x in values if np.isfinite(x)], np.float64)
    if not len(v):
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def pm(values: Sequence[float], digits: int) -> str:
    mean, std = mean_std(values)
    if len(values) < 2:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and its two-sided Student-t confidence interval (NaN bounds with one value)."""
    from scipy import stats
    v = np.asarray(values, np.float64)
    mean = float(v.mean()) if v.size else float("nan")
    if v.size < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size))
    return mean, mean - half, mean + half


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> dict:
    """Per-pair differences a - b: mean, CI, t statistic and n (paired t-test)."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    mean, low, high = mean_ci(d, level)
    sd = float(d.std(ddof=1)) if d.size > 1 else float("nan")
    t = mean / (sd / np.sqrt(d.size)) if d.size > 1 and sd > 0 else float("nan")
    return {"n": int(d.size), "mean": mean, "low": low, "high": high, "t": float(t),
            "differences": d.tolist()}


# --------------------------------------------------------------------------------------------
# Tables

def order(search_labels: Sequence[str], baselines: Sequence[str], rows: list[dict]
          ) -> list[str]:
    """Table order: the searches, each one's random control, then the zoo baselines."""
    randoms = [f"random @ {s}" for s in search_labels
               if any(matched_search(r["label"]) == s for r in rows)]
    return list(search_labels) + randoms + list(baselines)


def _table_label(row: dict) -> str:
    search = matched_search(row["label"])
    return f"random @ {search}" if search else row["label"]


def table2(search_labels, baselines, rows: list[dict], hardware, normalizers
           ) -> tuple[str, list]:
    """Markdown and CSV rows of Table 2 at width 1.0: every model, mean (± std) over seeds;
    a random control row is all its K architectures of every seed."""
    at_one = [r for r in rows if r["width"] == 1.0]
    head = (["model", "group", "n", "top-1 (%)"] + [f"{hw.name} (ms)" for hw in hardware]
            + ["MN-Norm avg", "MN-Norm max", "binding", "predicted f", "measured f",
               "MAdds (M)"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
             "| " + " | ".join([NORMALIZER + " (C)", "normaliser", "-", "-"]
                               + [f"{c:.2f}" for c in normalizers]
                               + ["1.000", "1.000", "-", "-", "-", "-"]) + " |"]
    csv_rows = []
    for name in order(search_labels, baselines, at_one):
        mine = [r for r in at_one if _table_label(r) == name]
        if not mine:
            continue
        binding = max({r["binding_hardware"] for r in mine},
                      key=lambda h: sum(r["binding_hardware"] == h for r in mine))
        pred = [r["predicted_f"] for r in mine if r["predicted_f"] != ""]
        meas = [r["measured_f"] for r in mine if r["measured_f"] != ""]
        cells = [name, mine[0]["group"], str(len(mine)), pm([100 * r["top1"] for r in mine], 1)]
        cells += [pm([r[f"latency_ms_{hw.name}"] for r in mine], 2) for hw in hardware]
        cells += [pm([r["mn_norm_avg"] for r in mine], 3), pm([r["mn_norm_max"] for r in mine], 3),
                  binding, pm(pred, 3) if pred else "-", pm(meas, 3) if meas else "-",
                  pm([r["madds_m"] for r in mine], 0)]
        lines.append("| " + " | ".join(cells) + " |")
        csv_row = {"model": name, "group": mine[0]["group"], "n": len(mine),
                   "binding_hardware": binding}
        for key in ["top1"] + [f"latency_ms_{hw.name}" for hw in hardware] + [
                "mn_norm_avg", "mn_norm_max", "madds_m"]:
            csv_row[f"{key}_mean"], csv_row[f"{key}_std"] = mean_std([r[key] for r in mine])
        csv_row["predicted_f_mean"], csv_row["predicted_f_std"] = mean_std(pred)
        csv_row["measured_f_mean"], csv_row["measured_f_std"] = mean_std(meas)
        csv_rows.append(csv_row)
    return "\n".join(lines) + "\n", csv_rows


def comparisons(single_labels: Sequence[str], rows: list[dict]) -> list[dict]:
    """The paper's comparison per multi metric m: searched_m minus the single-hardware search
    with the lowest measured MN-Norm m of the same seed, per seed, for MN-Norm max, MN-Norm avg
    and top-1 (width 1.0); with each seed's winner."""
    at_one = [r for r in rows if r["width"] == 1.0]
    out = []
    for m in MULTI_METRICS:
        multi, best, winners = [], [], []
        for seed in sorted({r["seed"] for r in at_one}):
            mine = {r["label"]: r for r in at_one if r["seed"] == seed}
            singles = [mine[s] for s in single_labels if s in mine]
            if f"searched_{m}" not in mine or not singles:
                continue
            winner = min(singles, key=lambda r: r[f"mn_norm_{m}"])
            multi.append(mine[f"searched_{m}"])
            best.append(winner)
            winners.append(winner["label"])
        if not multi:  # that multi-hardware search (or any single one) was not run
            continue
        for key, name in (("mn_norm_max", "MN-Norm max"), ("mn_norm_avg", "MN-Norm avg"),
                          ("top1", "top-1")):
            scale = 100.0 if key == "top1" else 1.0
            diff = paired_difference([scale * r[key] for r in multi],
                                     [scale * r[key] for r in best])
            out.append({"metric": m, "quantity": name, "winners": winners, **diff,
                        "multi_mean": mean_std([scale * r[key] for r in multi])[0],
                        "best_single_mean": mean_std([scale * r[key] for r in best])[0]})
    return out


def _verdict(c: dict) -> str:
    if not np.isfinite(c["low"]):
        return "one seed: no interval"
    better_low = c["quantity"] != "top-1"  # lower MN-Norm is better; higher top-1 is better
    if c["high"] < 0:
        return "multi lower" + (" (better)" if better_low else " (worse)")
    if c["low"] > 0:
        return "multi higher" + (" (worse)" if better_low else " (better)")
    return "no difference resolved"


def accuracy_at(curve: Sequence[dict], key: str, f: float) -> float:
    """Top-1 (%) of one model and seed at MN-Norm `key` = f, linearly interpolated along its
    width curve (one row per width multiplier); NaN where the curve does not reach f (no
    extrapolation) or has one point."""
    points = sorted((r[key], 100.0 * r["top1"]) for r in curve)
    xs = [x for x, _ in points]
    if len(points) < 2 or not xs[0] <= f <= xs[-1]:
        return float("nan")
    return float(np.interp(f, xs, [y for _, y in points]))


def matched_comparisons(single_labels: Sequence[str], rows: list[dict], target: float
                        ) -> list[dict]:
    """The paper's comparison at a matched point, per multi metric m: top-1 of searched_m
    minus the best single-hardware search's, both read off their width curves at MN-Norm m =
    `target` (seeds where the multi-hardware search's curve and at least one single search's
    reach it; the best single one is the most accurate there, picked with hindsight, which
    favours the single searches). A model that
    is smaller than the others cannot look better here: all are at the same latency."""
    out = []
    for m in MULTI_METRICS:
        key = f"mn_norm_{m}"
        multi, best, winners, seeds = [], [], [], []
        for seed in sorted({r["seed"] for r in rows}):
            mine = [r for r in rows if r["seed"] == seed]
            at = {label: accuracy_at([r for r in mine if r["label"] == label], key, target)
                  for label in (f"searched_{m}", *single_labels)}
            singles = {s: a for s, a in at.items() if s in single_labels and np.isfinite(a)}
            if not np.isfinite(at[f"searched_{m}"]) or not singles:
                continue
            winner = max(singles, key=singles.get)
            multi.append(at[f"searched_{m}"])
            best.append(singles[winner])
            winners.append(winner)
            seeds.append(seed)
        if multi:
            out.append({"metric": m, "quantity": f"top-1 at MN-Norm {m} = {target:g}",
                        "winners": winners, "seeds": seeds,
                        **paired_difference(multi, best), "multi_mean": float(np.mean(multi)),
                        "best_single_mean": float(np.mean(best))})
    return out


def matched_table(labels: Sequence[str], rows: list[dict], target: float) -> str:
    """Every model with a width curve: its top-1 at MN-Norm max = `target` (mean and 95% CI
    over the seeds whose curve reaches it), beside its width-1.0 point."""
    lines = [f"| model | seeds reaching f_max = {target:g} | top-1 (%) there | 95% CI | "
             "top-1 (%) at width 1.0 | MN-Norm max at width 1.0 |", "|---|---|---|---|---|---|"]
    for label in labels:
        mine = [r for r in rows if r["label"] == label]
        seeds = sorted({r["seed"] for r in mine})
        if len({r["width"] for r in mine}) < 2:
            continue
        at = [accuracy_at([r for r in mine if r["seed"] == s], "mn_norm_max", target)
              for s in seeds]
        at = [a for a in at if np.isfinite(a)]
        one = [r for r in mine if r["width"] == 1.0]
        mean, low, high = mean_ci(at) if at else (float("nan"),) * 3
        ci = f"[{low:.1f}, {high:.1f}]" if np.isfinite(low) else "-"
        there = f"{mean:.1f}" if np.isfinite(mean) else "-"
        lines.append(f"| {label} | {len(at)} of {len(seeds)} | "
                     f"{there} | {ci} | {pm([100 * r['top1'] for r in one], 1)} | "
                     f"{pm([r['mn_norm_max'] for r in one], 3)} |")
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""


def random_comparisons(search_labels: Sequence[str], rows: list[dict]) -> list[dict]:
    """Each search against its own random control, per seed: the search's top-1 and measured
    f (its own metric) minus the mean of the K random architectures drawn at its predicted f
    (width 1.0). Does the search find more accurate models than chance at the same price?"""
    at_one = [r for r in rows if r["width"] == 1.0]
    out = []
    for label in search_labels:
        pairs = {"top1": ([], []), "measured_f": ([], []), "madds_m": ([], [])}
        for seed in sorted({r["seed"] for r in at_one}):
            mine = [r for r in at_one if r["seed"] == seed and r["label"] == label]
            randoms = [r for r in at_one if r["seed"] == seed
                       and matched_search(r["label"]) == label]
            if not mine or not randoms:
                continue
            for key, (a, b) in pairs.items():
                scale = 100.0 if key == "top1" else 1.0
                a.append(scale * float(mine[0][key]))
                b.append(scale * float(np.mean([float(r[key]) for r in randoms])))
        for key, (a, b) in pairs.items():
            if a:
                out.append({"search": label, "quantity": key, **paired_difference(a, b),
                            "search_mean": float(np.mean(a)), "random_mean": float(np.mean(b))})
    return out


def _random_lines(randoms: list[dict]) -> list[str]:
    """Table 3's search-vs-random section (nothing without a random control)."""
    if not randoms:
        return []
    names = {"top1": ("top-1 (%)", 1), "measured_f": ("measured f", 3),
             "madds_m": ("MAdds (M)", 0)}
    lines = ["", "Each search against its random control (per seed, the search minus the "
             "mean of its K random architectures drawn at the search's predicted f; 95% CI "
             "over seeds):", "",
             "| search | quantity | seeds | search | random (mean of K) | difference | 95% CI "
             "| t |", "|---|---|---|---|---|---|---|---|"]
    for c in randoms:
        name, digits = names[c["quantity"]]
        ci = (f"[{c['low']:+.{digits}f}, {c['high']:+.{digits}f}]" if np.isfinite(c["low"])
              else "-")
        t = f"{c['t']:.2f}" if np.isfinite(c["t"]) else "-"
        lines.append(f"| {c['search']} | {name} | {c['n']} | {c['search_mean']:.{digits}f} | "
                     f"{c['random_mean']:.{digits}f} | {c['mean']:+.{digits}f} | {ci} | {t} |")
    return lines


def _matched_lines(matched: list[dict], rows: list[dict], target: float | None,
                   labels: Sequence[str]) -> list[str]:
    """Table 3's matched-point section (nothing without width curves)."""
    if not matched:
        return []
    widths = ", ".join(f"{w:g}" for w in sorted({r["width"] for r in rows}))
    lines = ["", f"At a matched point: top-1 read off each model's width curve (widths "
             f"{widths}) at MN-Norm = {target:g}, per seed; the best single-hardware search is "
             "the most accurate one there:", "",
             "| search | quantity | seeds | multi | best single | difference | 95% CI | t | "
             "reading |", "|---|---|---|---|---|---|---|---|---|"]
    for c in matched:
        ci = f"[{c['low']:+.1f}, {c['high']:+.1f}]" if np.isfinite(c["low"]) else "-"
        t = f"{c['t']:.2f}" if np.isfinite(c["t"]) else "-"
        lines.append(f"| searched_{c['metric']} | {c['quantity']} | {c['n']} | "
                     f"{c['multi_mean']:.1f} | {c['best_single_mean']:.1f} | {c['mean']:+.1f} | "
                     f"{ci} | {t} | {_verdict({**c, 'quantity': 'top-1'})} |")
    table = matched_table(labels, rows, target) if labels else ""
    if table:
        lines += ["", f"Each model's top-1 at MN-Norm max = {target:g} (its width curve read "
                  "there):", "", table.rstrip("\n")]
    return lines


def table3(single_labels: Sequence[str], rows: list[dict], target: float | None = None,
           labels: Sequence[str] = ()) -> tuple[str, list[dict]]:
    """Table 3: the paired comparison first (at width 1.0; then, with width curves and a
    `target`, at the matched point MN-Norm = target, and with `labels` (searches and
    baselines) each one's top-1 there), each search against its random control, then the
    search cost (N searches vs one)."""
    comps = comparisons(single_labels, rows)
    matched = matched_comparisons(single_labels, rows, target) if target else []
    lines = ["**One multi-hardware search vs the best of the single-hardware searches** "
             "(per seed, the single search with the lowest measured MN-Norm of the same "
             "metric; differences multi - best single, 95% CI over seeds):", "",
             "| search | quantity | seeds | multi | best single | difference | 95% CI | t | "
             "reading |", "|---|---|---|---|---|---|---|---|---|"]
    for c in comps:
        digits = 1 if c["quantity"] == "top-1" else 3
        ci = (f"[{c['low']:+.{digits}f}, {c['high']:+.{digits}f}]" if np.isfinite(c["low"])
              else "-")
        t = f"{c['t']:.2f}" if np.isfinite(c["t"]) else "-"
        lines.append(f"| searched_{c['metric']} | {c['quantity']} | {c['n']} | "
                     f"{c['multi_mean']:.{digits}f} | {c['best_single_mean']:.{digits}f} | "
                     f"{c['mean']:+.{digits}f} | {ci} | {t} | {_verdict(c)} |")
    for m in MULTI_METRICS:
        winners = next((c["winners"] for c in comps if c["metric"] == m), [])
        if winners:
            lines.append(f"\nBest single-hardware search per seed by MN-Norm {m}: "
                         + ", ".join(f"seed {i}: {w}" for i, w in enumerate(winners)) + ".")
    lines += _matched_lines(matched, rows, target, labels)
    randoms = random_comparisons(list(single_labels) + [f"searched_{m}" for m in MULTI_METRICS],
                                 rows)
    lines += _random_lines(randoms)
    at_one = [r for r in rows if r["width"] == 1.0]
    seeds = sorted({r["seed"] for r in at_one})
    cost = {"single": {"wall": [], "steps": []}, **{m: {"wall": [], "steps": []}
                                                     for m in MULTI_METRICS}}
    for seed in seeds:
        mine = {r["label"]: r for r in at_one if r["seed"] == seed}
        singles = [mine[s] for s in single_labels if s in mine]
        if singles:
            cost["single"]["wall"].append(sum(float(r["search_wall_s"]) for r in singles))
            cost["single"]["steps"].append(sum(int(r["search_steps"]) for r in singles))
        for m in MULTI_METRICS:
            if f"searched_{m}" in mine:
                cost[m]["wall"].append(float(mine[f"searched_{m}"]["search_wall_s"]))
                cost[m]["steps"].append(int(mine[f"searched_{m}"]["search_steps"]))
    lines += ["", "Search cost:", "", "| strategy | searches | search wall (s) | search steps |",
              "|---|---|---|---|"]
    names = {"single": (f"{len(single_labels)} single-hardware searches", len(single_labels)),
             **{m: (f"one multi-hardware search ({m})", 1) for m in MULTI_METRICS}}
    csv_rows = []
    for key, (name, n) in names.items():
        if not cost[key]["wall"]:  # not among the experiment's --searches
            continue
        lines.append(f"| {name} | {n} | {pm(cost[key]['wall'], 0)} | "
                     f"{pm(cost[key]['steps'], 0)} |")
        row = {"row": "cost", "strategy": name, "searches": n}
        for what in ("wall", "steps"):
            row[f"{what}_mean"], row[f"{what}_std"] = mean_std(cost[key][what])
        csv_rows.append(row)
    for kind, cs in (("paired", comps), ("paired at matched point", matched)):
        for c in cs:
            csv_rows.append({"row": kind, "strategy": f"searched_{c['metric']}",
                             "quantity": c["quantity"], "n": c["n"], "difference": c["mean"],
                             "ci_low": c["low"], "ci_high": c["high"], "t": c["t"]})
    for c in randoms:
        csv_rows.append({"row": "search vs random control", "strategy": c["search"],
                         "quantity": c["quantity"], "n": c["n"], "difference": c["mean"],
                         "ci_low": c["low"], "ci_high": c["high"], "t": c["t"]})
    return "\n".join(lines) + "\n", csv_rows


# --------------------------------------------------------------------------------------------
# Structure

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


def structure_md(specs: dict, measurements: dict) -> str:
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


# --------------------------------------------------------------------------------------------
# Plots

def plots(output_dir: str, names: Sequence[str], rows: list[dict], hardware, normalizers,
          target: float, dataset: str, width: float) -> list[str]:
    """fmax_vs_accuracy.png (every model a curve over width multipliers: mean over seeds with
    95% CIs, the binding hardware at width 1.0, the target line) and latency_bars.png."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out = Path(output_dir)
    markers = dict(zip(GROUPS, ("o", "*", "x", "^")))
    palette = plt.get_cmap("tab10").colors
    fig, ax = plt.subplots(figsize=(8.5, 5.4))
    shown = []
    for i, name in enumerate(names):
        mine = [r for r in rows if _table_label(r) == name]
        if not mine:
            continue
        group = mine[0]["group"]
        colour = "0.5" if group == "random (control)" else palette[i % len(palette)]
        points = []
        for w in sorted({r["width"] for r in mine}):
            at = [r for r in mine if r["width"] == w]
            fx = mean_ci([r["mn_norm_max"] for r in at])
            ty = mean_ci([100 * r["top1"] for r in at])
            points.append((w, fx, ty))
        xs = [p[1][0] for p in points]
        ys = [p[2][0] for p in points]
        ax.plot(xs, ys, "-", color=colour, lw=1.0, alpha=0.8)
        for w, fx, ty in points:
            err = lambda ci: [[ci[0] - ci[1]], [ci[2] - ci[0]]] if np.isfinite(ci[1]) \
                else None  # noqa: E731
            ax.errorbar(fx[0], ty[0], xerr=err(fx), yerr=err(ty), fmt=markers[group],
                        color=colour, ms=11 if group == "multi-hardware search" else 6,
                        mec="k", mew=0.4, elinewidth=0.8, capsize=2,
                        label=name if w == 1.0 else None)
            shown.append(ty[0])
            if w == 1.0:
                binding = max({r["binding_hardware"] for r in mine if r["width"] == 1.0},
                              key=lambda h: sum(r["binding_hardware"] == h for r in mine))
                ax.annotate(binding, (fx[0], ty[0]), textcoords="offset points", xytext=(5, 3),
                            fontsize=6, color="0.3")
    ax.axvline(target, color="k", lw=0.8, ls=":")
    ax.annotate(f"T = {target:g}", (target, 1), xycoords=("data", "axes fraction"),
                xytext=(3, -12), textcoords="offset points", fontsize=8)
    if shown:
        lo, hi = float(np.nanmin(shown)), float(np.nanmax(shown))
        pad = max(1.0, 0.15 * (hi - lo))
        ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel("MN-Norm max, measured (worst case over " + ", ".join(h.name for h in hardware)
                  + "; lower is better)")
    ax.set_ylabel(f"top-1 (%) on {dataset} validation (proxy width {width} x multiplier)")
    ax.set_title("Accuracy against measured f_max: mean over seeds, 95% CI; lines join widths")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    paths = [str(out / "fmax_vs_accuracy.png")]
    save(fig, paths[0])

    at_one = [r for r in rows if r["width"] == 1.0]
    labels = [n for n in names if any(_table_label(r) == n for r in at_one)]
    fig, ax = plt.subplots(figsize=(max(7.5, 0.7 * len(labels) * len(hardware) / 2), 4.5))
    bar = 0.8 / len(hardware)
    for j, hw in enumerate(hardware):
        means = [np.nanmean([r[f"latency_ms_{hw.name}"] / normalizers[j] for r in at_one
                             if _table_label(r) == label]) for label in labels]
        ax.bar(np.arange(len(labels)) + (j - (len(hardware) - 1) / 2) * bar, means, bar,
               label=hw.name)
    ax.axhline(target, color="k", lw=0.8, ls="--", label=f"T = {target:g}")
    ax.set_xticks(np.arange(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(f"latency / {NORMALIZER} (measured, mean over seeds)")
    ax.set_title("Normalised latency per hardware at width 1.0 (1.0 = MobileNetV1)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(str(out / "latency_bars.png"))
    save(fig, paths[1])
    return paths


def save(fig, path: str) -> None:
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    from mhmodels.files import atomic_write
    atomic_write(path, buf.getvalue())
