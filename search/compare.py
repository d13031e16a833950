"""Measured (LiteRT) beside predicted latency of a searched entry and reference zoo models.

The search CLI prints this table after a run. Cost-model milliseconds belong to the host the
models were fitted on; measured rows are therefore normalised by MobileNetV1 measured here.
"""
from __future__ import annotations

import numpy as np

import mhmodels
from mhmodels.metrics import f_avg, f_max
from search.hardware import get_hardware
from search.space import get_space


def _ms(value: float, width: int) -> str:
    """Milliseconds, or "-" where not measurable / outside the search space."""
    return f"{value:>{width}.2f}" if np.isfinite(value) else f"{'-':>{width}}"


def compare_latency(config, compare: list[str], image_size: int) -> None:
    """Print measured (LiteRT) and predicted latency of the entry beside the --compare models."""
    space = get_space(config.space)
    names = [config.entry_name] + [c for c in compare if c != config.entry_name]
    try:
        from search.loop import load_cost_models
        cms = load_cost_models(config.hardware, space, config.cost_model_dir)
    except Exception as err:  # pragma: no cover - cost models are checked before the search
        cms = None
        print(f"(no cost models for the predicted column: {err})")
    normalizers = [float(cm.normalizer_ms) for cm in cms] if cms else None
    hardware = [get_hardware(h) for h in config.hardware]
    print(f"\nLatency at {image_size}x{image_size}, batch 1, 1 thread (ms; measured / predicted "
          "by the cost model; f = MobileNet-normalised)")
    header = f"{'model':<34}" + "".join(f"{h:>24}" for h in config.hardware)
    if normalizers:
        header += f"{'f_avg':>14}{'f_max':>14}"
    # Measured rows are normalised by MobileNetV1 measured here too: the cost models'
    # milliseconds belong to the host they were fitted on, which may be faster or slower.
    measured_normalizers = list(normalizers or [])
    for i, hw in enumerate(hardware):
        if normalizers and hw.measurable:
            try:
                measured_normalizers[i] = hw.normalizer_ms(image_size)
            except Exception as err:  # keep going: fall back to the cost model's value
                print(f"  (mobilenet_v1 on {hw.name}: measurement failed: {err})")
    if normalizers:
        print("normaliser C = MobileNetV1 (ms, measured / cost model): " + ", ".join(
            f"{hw} {m:.2f} / {c:.2f}" for hw, m, c in
            zip(config.hardware, measured_normalizers, normalizers)))
    print(header)
    for name in names:
        measured, predicted = [], []
        try:
            choices = space.choices_for(mhmodels.get_spec(name))
        except ValueError:
            choices = None
        model = None
        for i, hw_name in enumerate(config.hardware):
            pred = float(np.asarray(cms[i].predict(choices[None])).reshape(-1)[0]) \
                if cms and choices is not None else float("nan")
            meas = float("nan")
            hw = hardware[i]
            if hw.measurable:
                try:
                    if model is None:
                        model = mhmodels.build(name, input_shape=(image_size, image_size, 3))
                    meas = hw.latency_ms(hw.measure_model(model))
                except Exception as err:  # keep going: one failing export is not fatal here
                    print(f"  ({name} on {hw_name}: measurement failed: {err})")
            measured.append(meas)
            predicted.append(pred)
        row = f"{name:<34}" + "".join(f"{_ms(m, 11)} / {_ms(p, 8)}  " for m, p in
                                       zip(measured, predicted))
        if normalizers:
            use_measured = np.all(np.isfinite(measured))
            lat = np.asarray(measured if use_measured else predicted)
            norm = measured_normalizers if use_measured else normalizers
            row += f"{float(f_avg(lat, norm)):>14.3f}{float(f_max(lat, norm)):>14.3f}"
        print(row, flush=True)
