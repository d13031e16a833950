"""Measured beside predicted latency of a searched entry and reference zoo models.

The search CLI prints this table after a run: every hardware of the search (LiteRT timings on
this CPU, vela estimates for the NPUs), with one export per format per model
(`search.hardware.measure_all`). Cost-model milliseconds of CPU hardware belong to the host
they were fitted on; measured rows are therefore normalised by MobileNetV1 measured here.
"""
from __future__ import annotations

import numpy as np

import mhmodels
from mhmodels.metrics import f_avg, f_max
from .hardware import NORMALIZER_MODEL, get_hardware, measure_all
from .space import get_space


def _ms(value: float, width: int) -> str:
    """Milliseconds, or "-" where not measurable / outside the search space."""
    return f"{value:>{width}.2f}" if np.isfinite(value) else f"{'-':>{width}}"


def measure_models(names, hardware, image_size: int) -> dict[str, list[float]]:
    """{model name: [latency ms per hardware]} measured here (NaN where it failed)."""
    measurable = [hw for hw in hardware if hw.measurable]
    out = {}
    for name in names:
        values = {hw.name: float("nan") for hw in hardware}
        if measurable:
            try:
                width = {"width": 1.0} if name == NORMALIZER_MODEL else {}
                model = mhmodels.build(name, input_shape=(image_size, image_size, 3), **width)
                results = measure_all(model, measurable, image_size)
                for hw in measurable:
                    values[hw.name] = hw.latency_ms(results[hw.name])
                    cpu_ops = getattr(results[hw.name], "cpu_ops", 0)
                    if cpu_ops:
                        print(f"  ({name} on {hw.name}: {cpu_ops} op(s) left on the host CPU, "
                              "not in the estimate)")
            except Exception as err:  # keep going: one failing export is not fatal here
                print(f"  ({name}: measurement failed: {err})")
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
    if normalizers:
        reference = measure_models([NORMALIZER_MODEL], hardware, image_size)[NORMALIZER_MODEL]
        measured_normalizers = [m if np.isfinite(m) else c
                                for m, c in zip(reference, normalizers)]
        print("normaliser C = MobileNetV1 (ms, measured / cost model): " + ", ".join(
            f"{hw} {m:.2f} / {c:.2f}" for hw, m, c in
            zip(config.hardware, measured_normalizers, normalizers)))
    print(header)
    measured_rows = measure_models(names, hardware, image_size)
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
