"""Measured beside predicted latency of a searched entry and reference zoo models.

The search CLI prints this table after a run: every hardware of the search (LiteRT timings on
this CPU, vela estimates for the NPUs), with one export per format per model
(`search.hardware.export_zoo_models`, in up to 2 processes; the timings run afterwards, one at
a time). Cost-model milliseconds of CPU hardware belong to the host they were fitted on;
measured rows are therefore normalised by MobileNetV1 measured here.
"""
from __future__ import annotations

import os

import numpy as np

import mhmodels
from mhmodels.metrics import f_avg, f_max
from .hardware import NORMALIZER_MODEL, export_zoo_models, get_hardware
from .space import get_space


def _ms(value: float, width: int) -> str:
    """Milliseconds, or "-" where not measurable / outside the search space."""
    return f"{value:>{width}.2f}" if np.isfinite(value) else f"{'-':>{width}}"


def _build_kwargs(name: str) -> dict:
    return {"width": 1.0} if name == NORMALIZER_MODEL else {}


def measure_models(names, hardware, image_size: int,
                   workers: int | None = None) -> dict[str, list[float]]:
    """{model name: [latency ms per hardware]} measured here (NaN where it failed).

    The exports (one per format per model, the slow part) run in `workers` processes
    (default: up to 2 cores); the CPU timings then run one at a time in this process.
    """
    measurable = [hw for hw in hardware if hw.measurable]
    formats = [hw.export_format for hw in measurable]
    if workers is None:
        workers = min(2, os.cpu_count() or 1)
    exports = export_zoo_models({name: _build_kwargs(name) for name in names}, formats,
                                image_size, workers) if measurable else {}
    out = {}
    for name in names:
        values = {hw.name: float("nan") for hw in hardware}
        exported = exports.get(name)
        if isinstance(exported, Exception):
            print(f"  ({name}: measurement failed: {exported})")
        elif exported is not None:
            for hw in measurable:
                try:
                    result = hw.measure_tflite(exported[hw.export_format])
                except Exception as err:  # keep going: one failing hardware is not fatal
                    print(f"  ({name} on {hw.name}: measurement failed: {err})")
                    continue
                values[hw.name] = hw.latency_ms(result)
                cpu_ops = getattr(result, "cpu_ops", 0)
                if cpu_ops:
                    print(f"  ({name} on {hw.name}: {cpu_ops} op(s) left on the host CPU, "
                          "not in the estimate)")
        out[name] = [values[hw.name] for hw in hardware]
    return out


def compare_latency(config, compare: list[str], image_size: int) -> None:
    """Print measured and predicted latency of the entry beside the --compare models."""
    space = get_space(config.space)
    names = [config.entry_name] + [c for c in compare if c != config.entry_name]
    try:
        from .loop import load_cost_models
        cms = load_cost_models(config.hardware, space, config.cost_model_dir)
    except Exception as err:  # pragma: no cover - cost models are checked before the search
        cms = None
        print(f"(no cost models for the predicted column: {err})")
    normalizers = [float(cm.normalizer_ms) for cm in cms] if cms else None
    hardware = [get_hardware(h) for h in config.hardware]
    print(f"\nLatency at {image_size}x{image_size}, batch 1 (ms; measured or vela-estimated / "
          "predicted by the cost model; f = MobileNet-normalised)")
    width = max(12, *(len(h) + 2 for h in config.hardware))
    header = f"{'model':<34}" + "".join(f"{h:>{width + 11}}" for h in config.hardware)
    if normalizers:
        header += f"{'f_avg':>10}{'f_max':>10}"
    # Measured rows are normalised by MobileNetV1 measured here too: the cost models'
    # milliseconds belong to the host they were fitted on, which may be faster or slower.
    measured_normalizers = list(normalizers or [])
    todo = list(dict.fromkeys(([NORMALIZER_MODEL] if normalizers else []) + names))
    print(f"(exporting and measuring {len(todo)} models ...)", flush=True)
    measured_rows = measure_models(todo, hardware, image_size)
    if normalizers:
        reference = measured_rows[NORMALIZER_MODEL]
        measured_normalizers = [m if np.isfinite(m) else c
                                for m, c in zip(reference, normalizers)]
        print("normaliser C = MobileNetV1 (ms, measured / cost model): " + ", ".join(
            f"{hw} {m:.2f} / {c:.2f}" for hw, m, c in
            zip(config.hardware, measured_normalizers, normalizers)))
    print(header)
    for name in names:
        try:
            choices = space.choices_for(mhmodels.get_spec(name))
        except ValueError:
            choices = None
        predicted = [float(np.asarray(cm.predict(choices[None])).reshape(-1)[0])
                     if choices is not None else float("nan") for cm in (cms or [])] or \
            [float("nan")] * len(hardware)
        measured = measured_rows[name]
        row = f"{name:<34}" + "".join(f"{_ms(m, width)} / {_ms(p, 8)}" for m, p in
                                       zip(measured, predicted))
        if normalizers:
            use_measured = np.all(np.isfinite(measured))
            lat = np.asarray(measured if use_measured else predicted)
            norm = measured_normalizers if use_measured else normalizers
            row += f"{float(f_avg(lat, norm)):>10.3f}{float(f_max(lat, norm)):>10.3f}"
        print(row, flush=True)
