"""The one latency-measurement path: a TFLite model run by LiteRT, batch 1, on this CPU.

Used by `python -m mhmodels benchmark` and by the cost-model collection of the search
(`search/collect_latency.py`), so both see the same numbers for the same file.

    from mhmodels.latency import measure_tflite
    r = measure_tflite('m.tflite', threads=1, use_xnnpack=True)
    r.median_ms, r.p10_ms, r.p90_ms

Clock: with one thread (the default) each invocation is timed by the calling thread's CPU
time (`time.thread_time`; LiteRT and XNNPACK run a 1-thread model on the caller's thread), so
time the process spends pre-empted by other jobs on a shared machine is not counted: on this
2-core box under load, wall-clock minima of MobileNetV1 moved by 2x between repeats while the
thread CPU time stayed within ~3%. `clock='wall'` (automatic for threads > 1) times wall
clock; the wall median is reported either way (`wall_median_ms`).

`use_xnnpack=False` runs LiteRT's builtin reference-grade kernels without the default
(XNNPACK) delegate (`OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES`). The input is random
data of the model's own input dtype and shape (a fixed batch of 1); LiteRT is imported lazily
and TensorFlow is never imported here.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Union

import numpy as np

ModelSource = Union[str, os.PathLike, bytes, bytearray]

DEFAULT_WARMUP = 3
DEFAULT_RUNS = 20
DEFAULT_MIN_TIME_S = 0.0
DEFAULT_MAX_TIME_S = 60.0


@dataclass(frozen=True)
class LatencyResult:
    """Latency statistics of one model on one interpreter configuration (milliseconds)."""

    median_ms: float
    mean_ms: float
    p10_ms: float
    p90_ms: float
    min_ms: float
    std_ms: float
    runs: int
    warmup: int
    threads: int
    use_xnnpack: bool
    input_shape: tuple = ()
    input_dtype: str = ""
    clock: str = "wall"  # cpu (calling thread's CPU time) | wall
    wall_median_ms: float = 0.0
    samples_ms: tuple = field(default=(), repr=False)

    @property
    def spread(self) -> float:
        """(p90 - p10) / median: a relative noise figure."""
        return (self.p90_ms - self.p10_ms) / self.median_ms if self.median_ms else 0.0

    def to_dict(self, samples: bool = False) -> dict:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        if not samples:
            d.pop("samples_ms")
        else:
            d["samples_ms"] = list(self.samples_ms)
        return d


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError as err:  # pragma: no cover - depends on the install
        raise ImportError("measuring latency needs the `ai-edge-litert` package "
                          "(pip install ai-edge-litert)") from err
    return Interpreter, OpResolverType


def make_interpreter(model: ModelSource, *, threads: int = 1, use_xnnpack: bool = True):
    """A LiteRT interpreter with tensors allocated, from a path or the model's bytes."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    Interpreter, OpResolverType = _interpreter_class()
    kwargs = dict(num_threads=int(threads))
    if not use_xnnpack:
        kwargs["experimental_op_resolver_type"] = \
            OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    if isinstance(model, (bytes, bytearray)):
        interpreter = Interpreter(model_content=bytes(model), **kwargs)
    else:
        path = os.fspath(model)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no TFLite model at {path}")
        interpreter = Interpreter(model_path=path, **kwargs)
    interpreter.allocate_tensors()
    return interpreter


def random_input(shape, dtype, rng: np.random.Generator) -> np.ndarray:
    """Random data of the given shape and dtype (full range for integer types)."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min, int(info.max) + 1, size=shape, dtype=dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    return rng.uniform(-1.0, 1.0, size=shape).astype(dtype)


def measure_tflite(model: ModelSource, *, threads: int = 1, use_xnnpack: bool = True,
                   warmup: int = DEFAULT_WARMUP, runs: int = DEFAULT_RUNS,
                   min_time_s: float = DEFAULT_MIN_TIME_S,
                   max_time_s: float = DEFAULT_MAX_TIME_S, seed: int = 0,
                   clock: str = "auto") -> LatencyResult:
    """Time `interpreter.invoke()` of a TFLite model (path or bytes), batch 1, random input.

    `warmup` untimed invocations first; then at least `runs` timed ones and, when
    `min_time_s` > 0, more until that much time was spent timing (stopping after
    `max_time_s` once `runs` were done; both in wall time). Each invocation is timed alone;
    inputs are set once before timing. `clock`: 'auto' (thread CPU time with 1 thread, else
    wall), 'cpu' or 'wall'.
    """
    if clock == "auto":
        clock = "cpu" if threads == 1 else "wall"
    if clock not in ("cpu", "wall"):
        raise ValueError(f"clock must be 'auto', 'cpu' or 'wall', got {clock!r}")
    if clock == "cpu" and threads != 1:
        raise ValueError("clock='cpu' measures the calling thread only: use threads=1")
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    interpreter = make_interpreter(model, threads=threads, use_xnnpack=use_xnnpack)
    rng = np.random.default_rng(seed)
    details = interpreter.get_input_details()
    for d in details:
        shape = [int(s) if s > 0 else 1 for s in d["shape"]]
        interpreter.set_tensor(d["index"], random_input(shape, d["dtype"], rng))
    first = details[0] if details else {"shape": (), "dtype": np.float32}
    for _ in range(warmup):
        interpreter.invoke()
    samples, wall = [], []
    started = time.perf_counter()
    while True:
        c0 = time.thread_time()
        t0 = time.perf_counter()
        interpreter.invoke()
        t1 = time.perf_counter()
        c1 = time.thread_time()
        wall.append((t1 - t0) * 1e3)
        samples.append((c1 - c0) * 1e3 if clock == "cpu" else (t1 - t0) * 1e3)
        spent = t1 - started
        if len(samples) >= runs and (spent >= min_time_s or spent >= max_time_s):
            break
    arr = np.asarray(samples)
    return LatencyResult(
        median_ms=float(np.median(arr)), mean_ms=float(arr.mean()),
        p10_ms=float(np.percentile(arr, 10)), p90_ms=float(np.percentile(arr, 90)),
        min_ms=float(arr.min()), std_ms=float(arr.std()), runs=len(samples), warmup=warmup,
        threads=threads, use_xnnpack=use_xnnpack,
        input_shape=tuple(int(s) for s in first["shape"]),
        input_dtype=np.dtype(first["dtype"]).name, clock=clock,
        wall_median_ms=float(np.median(wall)), samples_ms=tuple(float(s) for s in arr))


def measure_interleaved(models: dict, *, rounds: int = 3, **kwargs) -> dict:
    """Measure several models alternately (`rounds` passes over all of them) and combine.

    Interleaving spreads slow drifts of a shared machine evenly over the models, so their
    ratios measured in one call are more trustworthy than back-to-back measurements.
    Returns {name: LatencyResult} whose samples are the union over rounds.
    """
    if rounds < 1:
        raise ValueError("rounds must be >= 1")
    parts: dict = {name: [] for name in models}
    for r in range(rounds):
        for name, model in models.items():
            parts[name].append(measure_tflite(model, **dict(kwargs, seed=r)))
    out = {}
    for name, results in parts.items():
        samples = np.concatenate([np.asarray(x.samples_ms) for x in results])
        x0 = results[0]
        out[name] = LatencyResult(
            median_ms=float(np.median(samples)), mean_ms=float(samples.mean()),
            p10_ms=float(np.percentile(samples, 10)), p90_ms=float(np.percentile(samples, 90)),
            min_ms=float(samples.min()), std_ms=float(samples.std()), runs=len(samples),
            warmup=x0.warmup, threads=x0.threads, use_xnnpack=x0.use_xnnpack,
            input_shape=x0.input_shape, input_dtype=x0.input_dtype, clock=x0.clock,
            wall_median_ms=float(np.median([x.wall_median_ms for x in results])),
            samples_ms=tuple(float(s) for s in samples))
    return out
