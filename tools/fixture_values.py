"""Random variable values for the converter fixtures (tools/make_*_fixtures.py).

Every variable gets a random value (batch-norm statistics included: the defaults gamma=1,
beta=0, mean=0, var=1 would hide a mix-up of them), scaled so activations stay O(1) through
the network, on a grid of 64 levels per tensor so that gzip shrinks the committed files ~4x.
Only numpy: the Model Garden script imports it from its side venv too.
"""
from __future__ import annotations

import numpy as np


def random_value(name: str, shape: tuple[int, ...], rng: np.random.Generator,
                 kernel_gain: float) -> np.ndarray:
    """A value for the variable `name` (gamma, beta, moving_mean, moving_variance, bias,
    kernel or depthwise_kernel): kernels ~ N(0, kernel_gain / fan_in)."""
    if name == "gamma":
        v = rng.uniform(0.5, 1.5, shape)
    elif name in ("beta", "moving_mean", "bias"):
        v = rng.normal(0.0, 0.2, shape)
    elif name == "moving_variance":
        v = rng.uniform(0.5, 2.0, shape)
    else:  # kernel / depthwise_kernel: scaled on the fan-in
        fan_in = int(np.prod(shape[:-1])) if name == "kernel" else int(np.prod(shape[:2]))
        v = rng.normal(0.0, np.sqrt(kernel_gain / max(fan_in, 1)), shape)
    step = (np.abs(v).max() or 1.0) / 32.0
    v = np.round(v / step) * step
    if name == "moving_variance":
        v = np.maximum(v, step)
    return v.astype(np.float32)
