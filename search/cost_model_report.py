"""Cost models, reported: the held-out scatter plot (paper Figure 4) and the one-line
summaries the command prints. The computation (layout, fitting, prediction, files) is
search.cost_model; the command line is search.cost_model_cli.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .cost_model import LinearCostModel, fit, model_file_name, space_label


def scatter_plot(true, pred, path, title: str, cv=None) -> None:
    """Predicted vs measured (paper Figure 4): held-out points, and optionally the pooled
    out-of-fold predictions of the 5-fold CV over all rows (`cv` = (true, pred))."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=110)
    points = list(true) + list(pred)
    if cv is not None:
        ax.scatter(cv[0], cv[1], s=8, alpha=0.5, color="0.6", label="5-fold CV, all archs")
        points += list(cv[0]) + list(cv[1])
    ax.scatter(true, pred, s=12, alpha=0.8, color="tab:blue", label="held-out archs")
    ax.legend(fontsize=7, loc="upper left")
    lo, hi = min(points), max(points)
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set_xlabel("measured latency (ms)")
    ax.set_ylabel("predicted latency (ms)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def holdout_title(name: str, model: LinearCostModel, num_holdout: int, num_cv: int) -> str:
    """The scatter plot's title: held-out and 5-fold CV Spearman / MAPE of a fitted model
    (the name on its own line: a reduced space's model name is too long to share one)."""
    m = model.metrics
    return (f"{name}\nheld-out {num_holdout} archs: Spearman "
            f"{m['holdout_spearman']:.3f}, MAPE {m['holdout_mape']:.1f}%\n5-fold CV over "
            f"{num_cv}: Spearman {m['cv_spearman']:.3f}, MAPE {m['cv_mape']:.1f}%")


def fit_and_save(data, hardware: str, output_dir: str | os.PathLike | None = None,
                 space_name="multi_hw", plot: bool = True) -> LinearCostModel:
    """Fit and write `<output_dir>/<hardware>.json` (+ a held-out PNG); another space than
    multi_hw: `<hardware>.<space>.json` (`cost_model.model_file_name`; a reduced space, by
    short name or file, is named by its own name: the model of its data, which that space
    reads before its base's).

    output_dir defaults to the user's `$MHMODELS_HOME/cost_models` (read by the search before
    the shipped models); a shipped file is never overwritten (checked before fitting).
    """
    from mhmodels.files import check_writable_dir, refuse_shipped, user_cost_model_dir
    from .hardware import hardware_id
    out = Path(output_dir) if output_dir else user_cost_model_dir()
    name = model_file_name(hardware_id(hardware), space_label(space_name))[:-len(".json")]
    targets = [out / f"{name}.json"] + ([out / f"{name}_holdout.png"] if plot else [])
    for target in targets:
        refuse_shipped(target, "--output_dir")
    check_writable_dir(out, "--output_dir")
    model = fit(data, hardware, space_name)
    holdout = model.metrics.pop("_holdout", None)
    oof = model.metrics.pop("_oof", None)
    model.save(out / f"{name}.json")
    if plot and holdout is not None:
        true, pred = holdout
        scatter_plot(true, pred, out / f"{name}_holdout.png",
                     holdout_title(name, model, len(true), len(oof[0])), cv=oof)
    return model


def fit_summary(hardware: str, model: LinearCostModel, path: Path) -> str:
    """One line per fitted hardware: held-out and training fit, normaliser, where it went."""
    m = model.metrics
    return (f"{hardware}: {m['num_archs']} archs, held-out ({m['holdout_archs']}) "
            f"Spearman {m['holdout_spearman']} MAPE {m['holdout_mape']}%, train Spearman "
            f"{m['train_spearman']} MAPE {m['train_mape']}%, normalizer "
            f"{model.normalizer_ms} ms -> {path}")


def calibration_summary(hardware: str, path: Path) -> str:
    """One line per calibrated hardware: the method chosen and its cross-validated error."""
    m = json.loads(Path(path).read_text())["metrics"]
    return (f"{hardware}: {m['method']}, held-out MAPE {m['holdout_mape']}% Spearman "
            f"{m['holdout_spearman']} ({m['num_archs']} archs; every candidate in its "
            f"metrics.calibration) -> {path}")
