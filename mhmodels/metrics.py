"""MobileNet-normalised multi-hardware metrics (paper section 6.2, eq. 4-5).

For hardware H_1..H_N with latencies L_i and normalisers C_i (the latency of MobileNetV1 1.0
on the same hardware):

    f_avg = sum_i w_i * L_i / C_i / sum_i w_i      (plain mean when weights is None)
    f_max = max_i w_i * L_i / C_i                  (weights re-weight the normalisers)

A per-hardware weight w_i re-weights C_i (C_i / w_i is the effective normaliser), so a weight
of 2 makes that hardware count twice as much. Latencies may carry leading batch dimensions:
the hardware axis is the LAST one, so `latencies` of shape (B, N) give B metric values.

Both functions use only `keras.ops` when given tensors (TF tensors inside a `tf.function`,
e.g. the search's reward) and plain numpy otherwise; `nan` latencies (a hardware that does
not run a model, the paper's "x") can be skipped with `skip_missing=True`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["f_avg", "f_max", "normalized", "mn_norm"]


def _is_tensor(x) -> bool:
    if isinstance(x, (np.ndarray, np.generic, float, int, list, tuple)):
        return False
    return hasattr(x, "dtype") and hasattr(x, "shape")


def _weights(normalizers, weights):
    c = np.asarray(normalizers, dtype=np.float64).reshape(-1)
    if np.any(~np.isfinite(c)) or np.any(c <= 0):
        raise ValueError(f"normalizers must be positive and finite, got {c.tolist()}")
    w = np.ones_like(c) if weights is None else np.asarray(weights, np.float64).reshape(-1)
    if w.shape != c.shape:
        raise ValueError(f"{w.size} weights for {c.size} normalizers")
    if np.any(w < 0) or not np.any(w > 0):
        raise ValueError(f"weights must be >= 0 and not all zero, got {w.tolist()}")
    return c, w


def normalized(latencies, normalizers: Sequence[float], weights=None):
    """w_i * L_i / C_i per hardware (last axis), numpy or tensor like `latencies`."""
    c, w = _weights(normalizers, weights)
    scale = w / c
    if _is_tensor(latencies):
        from keras import ops
        lat = ops.convert_to_tensor(latencies)
        if lat.shape[-1] is not None and lat.shape[-1] != c.size:
            raise ValueError(f"latencies have {lat.shape[-1]} hardware, normalizers {c.size}")
        return lat * ops.cast(ops.convert_to_tensor(scale), lat.dtype)
    lat = np.asarray(latencies, dtype=np.float64)
    if lat.shape[-1:] != (c.size,):
        raise ValueError(f"latencies of shape {lat.shape} do not end in {c.size} hardware")
    return lat * scale


def f_avg(latencies, normalizers: Sequence[float], weights=None, *, skip_missing=False):
    """Mean MobileNet-normalised latency: sum_i w_i L_i / C_i / sum_i w_i (eq. 4).

    With `skip_missing=True` (numpy only) nan latencies are left out of the mean, as the
    paper's Table 1 averages MobileNetV3-Large over the hardware it runs on.
    """
    c, w = _weights(normalizers, weights)
    if _is_tensor(latencies):
        from keras import ops
        r = normalized(latencies, c, w)
        return ops.sum(r, axis=-1) / ops.cast(float(w.sum()), r.dtype)
    lat = np.asarray(latencies, dtype=np.float64)
    r = normalized(lat, c, w)
    if skip_missing:
        present = np.isfinite(lat)
        return np.sum(np.where(present, r, 0.0), axis=-1) / np.sum(
            np.where(present, w, 0.0), axis=-1)
    return np.sum(r, axis=-1) / w.sum()


def f_max(latencies, normalizers: Sequence[float], weights=None, *, skip_missing=False):
    """Worst-case MobileNet-normalised latency: max_i w_i L_i / C_i (eq. 5)."""
    if _is_tensor(latencies):
        from keras import ops
        return ops.max(normalized(latencies, normalizers, weights), axis=-1)
    lat = np.asarray(latencies, dtype=np.float64)
    r = normalized(lat, normalizers, weights)
    if skip_missing:
        r = np.where(np.isfinite(lat), r, -np.inf)
    return np.max(r, axis=-1)


def mn_norm(latencies, normalizers, weights=None) -> tuple[float, float]:
    """(f_avg, f_max) of one model, skipping missing (nan / None) hardware: Table 1's columns."""
    lat = np.asarray([np.nan if v is None else v for v in latencies], dtype=np.float64)
    return (float(f_avg(lat, normalizers, weights, skip_missing=True)),
            float(f_max(lat, normalizers, weights, skip_missing=True)))
