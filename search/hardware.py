"""Hardware the search optimises for: how a model's latency is obtained, and its normaliser.

A `Hardware` is a name plus a way to get latency:
  * LiteRT on this machine's CPU (`cpu_float`, `cpu_int8`, `cpu_ref_float`): the model is
    exported with `mhmodels.export.export_tflite` in the hardware's quantization and timed
    with `mhmodels.latency.measure_tflite` (the same path `python -m mhmodels benchmark` uses);
  * `csv:<path>`: latencies measured elsewhere (e.g. on a phone), one row per architecture
    keyed by `space.encode(space.canonical(choices))`: columns `arch,latency_ms`. A row whose
    arch is `mobilenet_v1` gives the normaliser.

The normaliser C of a hardware is the latency of MobileNetV1 width 1.0 measured the same way
(paper section 6.2); the cost model stores the value it was fitted with (`normalizer_ms`).

    hw = get_hardware('cpu_float')
    hw.measure_model(keras_model).median_ms      # export + measure
    hw.latency_ms(hw.measure_model(keras_model)) # the statistic the cost models are fit on
    hw.normalizer_ms(image_size=224)
"""
from __future__ import annotations

import csv
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from mhmodels.latency import LatencyResult, measure_tflite

# The per-model statistic the cost models are fitted on: the minimum over the timed runs of the
# calling thread's CPU time per invocation (mhmodels.latency, 1 thread). CPU time does not
# count time spent pre-empted by other jobs on a shared machine (wall-clock medians and minima
# moved by 2x here); its minimum also drops runs slowed by a busy sibling core / cache. On the
# collected data it fitted better than the median (5-fold CV MAPE 4.9% vs 7.3% on cpu_float).
STATISTIC = "min_ms"
NORMALIZER_MODEL = "mobilenet_v1"
CSV_PREFIX = "csv:"


def representative_data(image_size: int, num_batches: int = 3, seed: int = 0):
    """A few random batches: enough calibration for *latency* purposes (not accuracy)."""
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1.0, 1.0, size=(1, image_size, image_size, 3)).astype(np.float32)
            for _ in range(num_batches)]


def export_bytes(model, quantization: str, image_size: int | None = None) -> bytes:
    """Export a Keras model to TFLite bytes with the project's one exporter."""
    from mhmodels.export import export_tflite
    kwargs = {}
    if quantization in ("int8", "uint8"):
        size = image_size or int(model.input_shape[1])
        kwargs["representative_data"] = representative_data(size)
    with tempfile.TemporaryDirectory(prefix="mhmodels_hw_") as tmp:
        path = os.path.join(tmp, "model.tflite")
        export_tflite(model, path, quantization=quantization, **kwargs)
        return Path(path).read_bytes()


@dataclass(frozen=True)
class Hardware:
    """A latency source. `quantization` is None for hardware measured elsewhere (CSV)."""

    name: str
    description: str
    quantization: str | None = "float"
    use_xnnpack: bool = True
    threads: int = 1
    warmup: int = 3
    runs: int = 15
    min_time_s: float = 0.5
    statistic: str = STATISTIC
    csv_path: str | None = None
    _table: Mapping[str, float] | None = field(default=None, compare=False, repr=False)

    @property
    def measurable(self) -> bool:
        return self.csv_path is None

    # -- LiteRT measurement --------------------------------------------------------------------
    def measure_tflite(self, model: bytes | str | os.PathLike, **overrides) -> LatencyResult:
        """Time a TFLite model already in this hardware's format."""
        self._need_measurable()
        kwargs = dict(threads=self.threads, use_xnnpack=self.use_xnnpack, warmup=self.warmup,
                      runs=self.runs, min_time_s=self.min_time_s)
        kwargs.update(overrides)
        return measure_tflite(model, **kwargs)

    def export(self, keras_model, image_size: int | None = None) -> bytes:
        self._need_measurable()
        return export_bytes(keras_model, self.quantization, image_size)

    def measure_model(self, keras_model, **overrides) -> LatencyResult:
        """Export `keras_model` in this hardware's format and time it."""
        return self.measure_tflite(self.export(keras_model), **overrides)

    def latency_ms(self, result: LatencyResult) -> float:
        return float(getattr(result, self.statistic))

    def measure_choices(self, space, choices, image_size: int = 224, **overrides) -> float:
        """Latency (ms, `statistic`) of an architecture of `space`: measured or looked up."""
        if not self.measurable:
            return self.lookup(space, choices)
        import mhmodels
        model = mhmodels.build(space.decode(choices), input_shape=(image_size, image_size, 3))
        return self.latency_ms(self.measure_model(model, **overrides))

    def normalizer_ms(self, image_size: int = 224, **overrides) -> float:
        """C: the latency of MobileNetV1 width 1.0 on this hardware, measured the same way."""
        if not self.measurable:
            table = self.table()
            if NORMALIZER_MODEL not in table:
                raise KeyError(f"{self.csv_path}: no '{NORMALIZER_MODEL}' row, so hardware "
                               f"{self.name!r} has no normaliser (add a row "
                               f"'{NORMALIZER_MODEL},<ms>')")
            return table[NORMALIZER_MODEL]
        import mhmodels
        model = mhmodels.build(NORMALIZER_MODEL, 1.0, input_shape=(image_size, image_size, 3))
        return self.latency_ms(self.measure_model(model, **overrides))

    # -- CSV ---------------------------------------------------------------------------------
    def table(self) -> Mapping[str, float]:
        if self._table is None:
            object.__setattr__(self, "_table", read_latency_csv(self.csv_path))
        return self._table

    def lookup(self, space, choices) -> float:
        key = space.encode(space.canonical(choices))
        table = self.table()
        if key not in table:
            raise KeyError(f"architecture {key} has no latency in {self.csv_path} (hardware "
                           f"{self.name!r}, {len(table)} rows); keys are "
                           "space.encode(space.canonical(choices))")
        return table[key]

    def _need_measurable(self):
        if not self.measurable:
            raise ValueError(f"hardware {self.name!r} reads latencies from {self.csv_path}; "
                             "it cannot measure models here")


def read_latency_csv(path: str | os.PathLike) -> dict[str, float]:
    """{arch key: latency ms} from a CSV with columns `arch` and `latency_ms`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"latency CSV {path} does not exist")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        if "arch" not in fields or "latency_ms" not in fields:
            raise ValueError(f"latency CSV {path}: needs columns 'arch' and 'latency_ms', "
                             f"found {fields}")
        table: dict[str, float] = {}
        for line, row in enumerate(reader, start=2):
            key = (row.get("arch") or "").strip()
            try:
                value = float(row["latency_ms"])
            except (TypeError, ValueError):
                raise ValueError(f"latency CSV {path} line {line}: latency_ms "
                                 f"{row.get('latency_ms')!r} is not a number") from None
            if not key:
                raise ValueError(f"latency CSV {path} line {line}: empty arch")
            if not np.isfinite(value) or value <= 0:
                raise ValueError(f"latency CSV {path} line {line}: latency {value} must be "
                                 "positive")
            if key in table and table[key] != value:
                raise ValueError(f"latency CSV {path} line {line}: arch {key} appears twice "
                                 "with different latencies")
            table[key] = value
    if not table:
        raise ValueError(f"latency CSV {path} has no rows")
    return table


BUILTIN: dict[str, Hardware] = {
    "cpu_float": Hardware("cpu_float", "this CPU, LiteRT + XNNPACK, float32 model, 1 thread",
                          quantization="float", use_xnnpack=True),
    "cpu_int8": Hardware("cpu_int8", "this CPU, LiteRT + XNNPACK, full-int8 model, 1 thread",
                         quantization="int8", use_xnnpack=True),
    "cpu_ref_float": Hardware("cpu_ref_float", "this CPU, LiteRT builtin kernels without "
                              "default delegates, float32 model, 1 thread",
                              quantization="float", use_xnnpack=False, warmup=1, runs=5),
}


def list_hardware() -> list[str]:
    return sorted(BUILTIN) + [f"{CSV_PREFIX}<path>"]


def get_hardware(name: str) -> Hardware:
    """`cpu_float` | `cpu_int8` | `cpu_ref_float` | `csv:<path>`."""
    if not isinstance(name, str):
        raise TypeError(f"hardware name must be a string, got {type(name).__name__}")
    if name.startswith(CSV_PREFIX):
        path = name[len(CSV_PREFIX):]
        if not path:
            raise ValueError("csv hardware needs a path: csv:<path>")
        return Hardware(name=hardware_id(name), description=f"latencies read from {path}",
                        quantization=None, csv_path=path)
    if name not in BUILTIN:
        import difflib
        close = difflib.get_close_matches(name, list(BUILTIN), n=2)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown hardware {name!r}{hint}; known: {', '.join(list_hardware())}")
    return BUILTIN[name]


def hardware_id(name: str) -> str:
    """A file-name-safe id: `cpu_float` stays, `csv:/x/pixel4_gpu.csv` -> `pixel4_gpu`."""
    if name.startswith(CSV_PREFIX):
        return Path(name[len(CSV_PREFIX):]).stem
    return name


def parse_hardware_list(names: str | Sequence[str]) -> list[Hardware]:
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    hws = [get_hardware(n.strip()) for n in names]
    seen = set()
    for hw in hws:
        if hw.name in seen:
            raise ValueError(f"hardware {hw.name!r} listed twice")
        seen.add(hw.name)
    return hws
