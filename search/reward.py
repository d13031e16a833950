"""The search reward (paper eq. 6-8): r = A + beta * |f / T - 1|.

* ``metric='single'``: f = L_1 / C_1 of the one hardware (TuNAS's single-hardware reward, eq. 6
  with L_0 = T * C_1);
* ``metric='avg'``: f = f_avg = mean_i L_i / C_i (eq. 7);
* ``metric='max'``: f = f_max = max_i L_i / C_i (eq. 8).

beta < 0 (paper -0.07, TuNAS -0.10); T = 1.0 targets the reference model (MobileNetV1) itself.
Works on numpy values and on TF tensors (inside ``tf.function`` / ``strategy.run``): latencies
``[..., H]`` with H the number of hardware, accuracy ``[...]``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from mhmodels.metrics import f_avg, f_max  # the one implementation of eq. 4-5

METRICS = ("single", "avg", "max")


def check_metric(metric: str, num_hardware: int) -> str:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if metric == "single" and num_hardware != 1:
        raise ValueError(f"metric 'single' needs exactly one hardware, got {num_hardware} "
                         "(use 'avg' or 'max' for several)")
    if num_hardware < 1:
        raise ValueError("at least one hardware is needed")
    return metric


def latency_metric(latencies_per_hw, normalizers: Sequence[float], metric: str = "max"):
    """f of the metric: the normalised latency the reward penalises (numpy or TF)."""
    check_metric(metric, len(normalizers))
    if metric == "avg":
        return f_avg(latencies_per_hw, normalizers)
    # 'single' with one hardware: max over one item is L_1 / C_1.
    return f_max(latencies_per_hw, normalizers)


def reward(accuracy, latencies_per_hw, normalizers: Sequence[float], metric: str = "max",
           beta: float = -0.07, target: float = 1.0):
    """r = A + beta * |f / T - 1| (paper eq. 6-8). numpy in -> numpy out; TF in -> TF out."""
    if beta > 0:
        raise ValueError(f"beta must be <= 0 (a latency penalty), got {beta}")
    if not target > 0:
        raise ValueError(f"target must be > 0, got {target}")
    f = latency_metric(latencies_per_hw, normalizers, metric)
    if isinstance(f, np.ndarray) or np.isscalar(f):
        return np.asarray(accuracy, np.float64) + beta * np.abs(f / target - 1.0)
    import tensorflow as tf
    f = tf.cast(f, tf.float32)
    return tf.cast(accuracy, tf.float32) + beta * tf.abs(f / target - 1.0)
