"""Hardware the search optimises for: one interface, one latency path per kind of hardware.

Every `Hardware` has a name, the export format it runs (`quantization`), a `config()` that is
recorded with every measurement and cost model, and `measure_tflite` / `latency_ms`:

  * `LiteRTHardware`: this machine's CPU through LiteRT (`cpu_float`, `cpu_int8`,
    `cpu_ref_float`); timed with `mhmodels.latency.measure_tflite`, the path
    `python -m mhmodels benchmark` uses;
  * `VelaHardware`: an Arm Ethos-U NPU, priced by Arm's compiler vela on the full-int8 export
    (`mhmodels.vela.estimate_tflite`): presets `ethos_u55` (U55-256, High-End Embedded, shared
    SRAM), `ethos_u65` (U65-512, High-End, dedicated SRAM), `ethos_u85` (U85-2048, SYS_DRAM_High,
    384 KB dedicated SRAM) and any configuration vela accepts as
    `vela:<accelerator>:<system config>:<memory mode>`. Ops vela leaves on the host CPU are
    counted (`cpu_ops`), never priced silently at zero;
  * `CsvHardware` (`csv:<path>`): latencies measured elsewhere (e.g. on a phone), one row per
    architecture keyed by `space.encode(space.canonical(choices))`: columns `arch,latency_ms`.
    A row whose arch is `mobilenet_v1` gives the normaliser.

One int8 export serves every int8 hardware (`measure_all` exports once per format). A model
with grouped convolutions (`LayerSpec.group_size`) is written in the form each hardware runs
faster (`mhmodels.export.grouped_conv_form`): the format `int8+split` for the Ethos-U55 and
U65, `int8+auto:u85` (each grouped conv native or split by a measured per-layer rule,
`mhmodels.grouped_forms`) for the U85, `int8` (native) for the CPU; without grouped
convolutions they are one file.

The normaliser C of a hardware is the latency of MobileNetV1 width 1.0 measured the same way
(paper section 6.2); the cost model stores the value it was fitted with (`normalizer_ms`).

    hw = get_hardware('ethos_u55')
    hw.latency_ms(hw.measure_model(keras_model))   # export + measure, the fitted statistic
    measure_all(keras_model, [get_hardware('cpu_int8'), hw])   # one int8 export for both
    hw.normalizer_ms(image_size=224)
"""
from __future__ import annotations

import csv
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from mhmodels.latency import LatencyResult, measure_tflite
from mhmodels.vela import PRESETS as NPU_PRESETS  # name -> (accelerator, system, memory mode)
from mhmodels.vela import VelaConfig, VelaEstimate

from .host import current_host

# The per-model statistic the CPU cost models are fitted on: the minimum over the timed runs
# of the calling thread's CPU time per invocation (mhmodels.latency, 1 thread). CPU time does
# not count time spent pre-empted by other jobs on a shared machine (wall-clock medians and
# minima moved by 2x here); its minimum also drops runs slowed by a busy sibling core / cache.
# On the collected data it fitted better than the median (5-fold CV MAPE 4.9% vs 7.3%).
STATISTIC = "min_ms"
NORMALIZER_MODEL = "mobilenet_v1"
CSV_PREFIX = "csv:"
VELA_PREFIX = "vela:"
# Keys of `config()` that describe the host rather than the measurement: informative only.
INFORMATIVE_KEYS = ("host",)
# Keys added to `config()` after files were recorded without them: a record that lacks one
# is read as matching (it predates the key); a record that holds another value does not.
LATER_KEYS = ("grouped_conv_form",)


def representative_data(image_size: int, num_batches: int = 1, seed: int = 0):
    """Random calibration batches: enough for *latency* purposes (not accuracy).

    Latency does not depend on the calibrated ranges, and each batch costs a full float
    inference inside the converter, so one batch is the default."""
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1.0, 1.0, size=(1, image_size, image_size, 3)).astype(np.float32)
            for _ in range(num_batches)]


FORM_SEPARATOR = "+"


def split_format(fmt: str) -> tuple[str, str]:
    """An export format -> (quantization, grouped-conv form): 'int8+split' -> ('int8',
    'split'), 'int8+auto:u85' -> ('int8', 'auto:u85'), 'float' -> ('float', 'native')."""
    quantization, sep, form = fmt.partition(FORM_SEPARATOR)
    return (quantization, form) if sep else (fmt, "native")


def format_of(quantization: str, form: str) -> str:
    """The export format of a quantization and a grouped-conv form (native: no suffix)."""
    return quantization if form == "native" else f"{quantization}{FORM_SEPARATOR}{form}"


def _has_grouped_conv(model) -> bool:
    return any(getattr(layer, "groups", 1) > 1 for layer in model.layers)


def export_bytes(model, quantization: str, image_size: int | None = None) -> bytes:
    """Export a Keras model to TFLite bytes with the project's one exporter. `quantization`
    is an export format: with '+<form>' the grouped convolutions are written in that form
    ('+split', '+auto:u85')."""
    from mhmodels.export import export_tflite
    quantization, form = split_format(quantization)
    kwargs = {"grouped_conv": form} if form != "native" and _has_grouped_conv(model) else {}
    if quantization in ("int8", "uint8"):
        size = image_size or int(model.input_shape[1])
        kwargs["representative_data"] = representative_data(size)
    with tempfile.TemporaryDirectory(prefix="mhmodels_hw_") as tmp:
        path = os.path.join(tmp, "model.tflite")
        export_tflite(model, path, quantization=quantization, **kwargs)
        return Path(path).read_bytes()


@dataclass(frozen=True)
class Hardware:
    """A latency source. `quantization` is the export format it runs; None: measured elsewhere."""

    name: str
    description: str
    quantization: str | None = "float"

    @property
    def measurable(self) -> bool:
        """True when this machine can produce the latency of a model (export + measure)."""
        return self.quantization is not None

    @property
    def export_format(self) -> str | None:
        """The file this hardware runs: its quantization, + '+<form>' where grouped convs run
        faster in another form than native (`mhmodels.export.grouped_conv_form`): '+split'
        on the U55 / U65, '+auto:u85' (per layer) on the U85."""
        if self.quantization is None:
            return None
        return format_of(self.quantization, self.grouped_conv_form)

    @property
    def grouped_conv_target(self) -> str:
        """The target name `grouped_conv_form` knows this hardware by."""
        return self.name

    @property
    def grouped_conv_form(self) -> str:
        """How this hardware's files write grouped convs ('native', 'split', 'auto:u85'):
        recorded in `config()`, since the same network prices differently in each form."""
        from mhmodels.export import grouped_conv_form
        return grouped_conv_form(self.grouped_conv_target)

    @property
    def statistic(self) -> str:
        return "latency_ms"

    @property
    def deterministic(self) -> bool:
        """True when measuring a model twice gives the same number (a performance model, a
        table); False for timings, which a comparison should repeat and take the minimum of."""
        return True

    def config(self) -> dict:
        """What the numbers depend on (tool, versions, settings): kept with every measurement."""
        return {"tool": "csv"}

    def same_config(self, other: Mapping[str, Any] | None) -> bool:
        """Whether a recorded `config()` describes the same measurement as this hardware's."""
        return same_config(self.config(), other)

    # CSV columns this hardware contributes to a collect_latency file: `<name>_<suffix>`.
    def column_suffixes(self) -> tuple[str, ...]:
        return ("ms",)

    def row_values(self, result) -> dict[str, float | int]:
        return {"ms": self.latency_ms(result)}

    # -- measuring ------------------------------------------------------------------------------
    def measure_tflite(self, model: bytes | str | os.PathLike, **overrides):
        """Latency of a TFLite model already in this hardware's format (`quantization`)."""
        raise ValueError(f"hardware {self.name!r} ({self.description}) cannot measure models "
                         "here")

    def latency_ms(self, result) -> float:
        """The statistic the cost models are fitted on, from a `measure_tflite` result."""
        return float(getattr(result, self.statistic))

    def export(self, keras_model, image_size: int | None = None) -> bytes:
        self._need_measurable()
        return export_bytes(keras_model, self.export_format, image_size)

    def measure_model(self, keras_model, **overrides):
        """Export `keras_model` in this hardware's format and measure it."""
        return self.measure_tflite(self.export(keras_model), **overrides)

    def measure_choices(self, space, choices, image_size: int = 224, **overrides) -> float:
        """Latency (ms, `statistic`) of an architecture of `space`: measured (its file written
        directly from the spec, `write_formats`: no Keras model, no converter) or looked up."""
        return self._measure_spec(space.decode(choices), image_size, **overrides)

    def normalizer_ms(self, image_size: int = 224, **overrides) -> float:
        """C: the latency of MobileNetV1 width 1.0 on this hardware, measured the same way."""
        import mhmodels
        return self._measure_spec(mhmodels.get_spec(NORMALIZER_MODEL), image_size, **overrides)

    def _measure_spec(self, spec, image_size: int, **overrides) -> float:
        self._need_measurable()
        files, _ = write_formats(spec, [self.export_format], image_size)
        return self.latency_ms(self.measure_tflite(files[self.export_format], **overrides))

    def _need_measurable(self):
        if not self.measurable:
            raise ValueError(f"hardware {self.name!r} ({self.description}) cannot measure "
                             "models here")


@dataclass(frozen=True)
class LiteRTHardware(Hardware):
    """This machine's CPU through LiteRT, batch 1, timed by `mhmodels.latency.measure_tflite`."""

    use_xnnpack: bool = True
    threads: int = 1
    warmup: int = 3
    runs: int = 15
    min_time_s: float = 0.5

    @property
    def statistic(self) -> str:
        return STATISTIC

    @property
    def deterministic(self) -> bool:
        return False  # CPU timings: other processes, caches and clocks move them

    def config(self) -> dict:
        from importlib.metadata import version
        return {"tool": "litert", "litert_version": version("ai-edge-litert"),
                "quantization": self.quantization, "use_xnnpack": self.use_xnnpack,
                "grouped_conv_form": self.grouped_conv_form,
                "threads": self.threads, "statistic": self.statistic,
                "host": current_host(self.threads)["cpu_model"]}

    def column_suffixes(self) -> tuple[str, ...]:
        return ("ms", "median_ms", "min_ms")

    def row_values(self, result: LatencyResult) -> dict[str, float | int]:
        return {"ms": self.latency_ms(result), "median_ms": result.median_ms,
                "min_ms": result.min_ms}

    def measure_tflite(self, model, **overrides) -> LatencyResult:
        kwargs = dict(threads=self.threads, use_xnnpack=self.use_xnnpack, warmup=self.warmup,
                      runs=self.runs, min_time_s=self.min_time_s)
        kwargs.update({k: v for k, v in overrides.items() if v is not None})
        return measure_tflite(model, **kwargs)


@dataclass(frozen=True)
class VelaHardware(Hardware):
    """An Arm Ethos-U NPU: vela's performance estimate of the full-int8 export (deterministic)."""

    vela: VelaConfig | None = None

    @property
    def grouped_conv_target(self) -> str:
        # by accelerator, whatever the configuration (e.g. vela:ethos-u55-128:...)
        return "ethos-u85" if self.vela.accelerator.startswith("ethos-u85") else "ethos-u"

    def config(self) -> dict:
        return {**self.vela.to_dict(), "quantization": self.quantization,
                "grouped_conv_form": self.grouped_conv_form}

    def column_suffixes(self) -> tuple[str, ...]:
        return ("ms", "cpu_ops")

    def row_values(self, result: VelaEstimate) -> dict[str, float | int]:
        return {"ms": result.latency_ms, "cpu_ops": result.cpu_ops}

    def measure_tflite(self, model, **overrides) -> VelaEstimate:
        """vela's estimate; `overrides` (runs, warmup of the CPU hardware) do not apply."""
        from mhmodels.vela import estimate_tflite
        return estimate_tflite(model, self.vela)


@dataclass(frozen=True)
class CsvHardware(Hardware):
    """Latencies measured elsewhere, read from `csv_path` (columns `arch,latency_ms`)."""

    csv_path: str = ""
    _table: Mapping[str, float] | None = field(default=None, compare=False, repr=False)

    def config(self) -> dict:
        return {"tool": "csv", "path": self.csv_path}

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

    def measure_choices(self, space, choices, image_size: int = 224, **overrides) -> float:
        return self.lookup(space, choices)

    def normalizer_ms(self, image_size: int = 224, **overrides) -> float:
        table = self.table()
        if NORMALIZER_MODEL not in table:
            raise KeyError(f"{self.csv_path}: no '{NORMALIZER_MODEL}' row, so hardware "
                           f"{self.name!r} has no normaliser (add a row "
                           f"'{NORMALIZER_MODEL},<ms>')")
        return table[NORMALIZER_MODEL]


def uncompared_keys(a: Mapping[str, Any], b: Mapping[str, Any]) -> set[str]:
    """Keys two recorded `config()`s are not compared on: the informative ones, and a
    LATER_KEYS key that one of them predates."""
    return set(INFORMATIVE_KEYS) | {k for k in LATER_KEYS if k not in a or k not in b}


def same_config(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    """Two recorded `config()`s describe the same measurement (the host is informative)."""
    if a is None or b is None:
        return False
    skip = uncompared_keys(a, b)
    strip = lambda c: {k: v for k, v in c.items() if k not in skip}  # noqa: E731
    return strip(a) == strip(b)


def export_formats(model, formats: Sequence[str], image_size: int | None = None
                   ) -> dict[str, bytes]:
    """{format: TFLite bytes} of a Keras model, one export per distinct file (one int8
    export serves cpu_int8 and every NPU; 'int8+split' is the 'int8' file for a model without
    grouped convolutions)."""
    grouped = _has_grouped_conv(model)
    files: dict[str, bytes] = {}
    out = {}
    for fmt in dict.fromkeys(formats):
        key = fmt if grouped else split_format(fmt)[0]
        if key not in files:
            files[key] = export_bytes(model, key, image_size)
        out[fmt] = files[key]
    return out


# How collection makes the .tflite it measures: 'direct' writes it from the spec
# (mhmodels.tflite_writer: milliseconds, no Keras model, no converter; the same graph, vela
# estimates equal and CPU timings within noise, tests/test_tflite_writer.py), 'converter'
# builds the Keras model and exports it (mhmodels.export, seconds).
EXPORTS = ("direct", "converter")


def write_formats(spec, formats: Sequence[str], image_size: int = 224, width: float = 1.0):
    """({format: TFLite bytes}, Profile) of a spec at `width` written directly, one file per
    distinct file (as `export_formats`); the profile is its params / MAdds."""
    from mhmodels.tflite_writer import write_graph
    grouped = any(b.group_size for b in spec.blocks)
    files, out, profile = {}, {}, None
    for fmt in dict.fromkeys(formats):
        key = fmt if grouped else split_format(fmt)[0]
        if key not in files:
            q, form = split_format(key)
            graph = write_graph(spec, width, quantization=q,
                                input_shape=(image_size, image_size, 3), grouped_conv=form)
            files[key], profile = graph.to_bytes(), graph.profile
        out[fmt] = files[key]
    return out, profile


def measure_all(model, hardware: Sequence[Hardware], image_size: int | None = None,
                overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """{hardware name: measure_tflite result}, exporting `model` once per format needed."""
    for hw in hardware:
        hw._need_measurable()
    exported = export_formats(model, [hw.export_format for hw in hardware], image_size)
    return {hw.name: hw.measure_tflite(exported[hw.export_format], **dict(overrides or {}))
            for hw in hardware}


def worker_init() -> None:
    """Initializer of export / measurement worker processes: one core each, and TensorFlow's
    import as quiet as in the command that started them."""
    from mhmodels import cli
    cli.quiet_native_logs()
    cli.quiet_tensorflow_import()
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)


def _export_zoo_model(name: str, build_kwargs: Mapping[str, Any], formats: Sequence[str],
                      image_size: int) -> dict[str, bytes]:
    import mhmodels
    model = mhmodels.build(name, input_shape=(image_size, image_size, 3), **build_kwargs)
    return export_formats(model, formats, image_size)


def export_zoo_models(models: Mapping[str, Mapping[str, Any]], formats: Sequence[str],
                      image_size: int, workers: int = 1) -> dict[str, Any]:
    """{zoo name: {format: TFLite bytes}, or the exception its build / export raised}.

    `models`: {zoo name: extra `mhmodels.build` arguments}. Exports run in `workers` spawned
    processes (one core each); export is the slow part of a measurement, and timing the
    bytes afterwards in one process keeps CPU timings free of the other exports' load.
    (Started in the background during a search instead, a low-priority export process cost
    the search 39 s of its 269 s and saved 23 s in all: not done.)
    """
    formats = list(dict.fromkeys(formats))
    out: dict[str, Any] = {}
    if workers <= 1 or len(models) <= 1:
        for name, kwargs in models.items():
            try:
                out[name] = _export_zoo_model(name, kwargs, formats, image_size)
            except Exception as err:  # reported per model by the caller
                out[name] = err
        return out
    import concurrent.futures as cf
    import multiprocessing
    context = multiprocessing.get_context("spawn")  # TensorFlow does not survive fork
    with cf.ProcessPoolExecutor(min(workers, len(models)), mp_context=context,
                                initializer=worker_init) as pool:
        futures = {name: pool.submit(_export_zoo_model, name, dict(kwargs), formats,
                                     image_size) for name, kwargs in models.items()}
        for name, future in futures.items():
            try:
                out[name] = future.result()
            except Exception as err:
                out[name] = err
    return out


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
    "cpu_float": LiteRTHardware("cpu_float", "this CPU, LiteRT + XNNPACK, float32 model, "
                                "1 thread", quantization="float", use_xnnpack=True),
    "cpu_int8": LiteRTHardware("cpu_int8", "this CPU, LiteRT + XNNPACK, full-int8 model, "
                               "1 thread", quantization="int8", use_xnnpack=True),
    "cpu_ref_float": LiteRTHardware("cpu_ref_float", "this CPU, LiteRT builtin kernels "
                                    "without default delegates, float32 model, 1 thread",
                                    quantization="float", use_xnnpack=False, warmup=1, runs=5),
}
_NPU_CACHE: dict[str, VelaHardware] = {}


def _vela_hardware(name: str, accelerator: str, system: str, memory_mode: str) -> VelaHardware:
    if name not in _NPU_CACHE:
        config = VelaConfig(accelerator, system, memory_mode)  # validates against vela.ini
        _NPU_CACHE[name] = VelaHardware(
            name, f"Arm {accelerator} NPU ({system}, {memory_mode}), vela estimate of the "
            "full-int8 model", quantization="int8", vela=config)
    return _NPU_CACHE[name]


def list_hardware() -> list[str]:
    return sorted(BUILTIN) + sorted(NPU_PRESETS) + \
        [f"{VELA_PREFIX}<accelerator>:<system>:<memory_mode>", f"{CSV_PREFIX}<path>"]


def get_hardware(name: str) -> Hardware:
    """`cpu_float` | `cpu_int8` | `cpu_ref_float` | `ethos_u55` | `ethos_u65` | `ethos_u85` |
    `vela:<accelerator>:<system>:<memory_mode>` | `csv:<path>`."""
    if not isinstance(name, str):
        raise TypeError(f"hardware name must be a string, got {type(name).__name__}")
    if name.startswith(CSV_PREFIX):
        path = name[len(CSV_PREFIX):]
        if not path:
            raise ValueError("csv hardware needs a path: csv:<path>")
        return CsvHardware(name=hardware_id(name), description=f"latencies read from {path}",
                           quantization=None, csv_path=path)
    if name.startswith(VELA_PREFIX):
        parts = name[len(VELA_PREFIX):].split(":")
        if len(parts) != 3 or not all(parts):
            raise ValueError(f"vela hardware is vela:<accelerator>:<system>:<memory_mode>, e.g. "
                             f"vela:ethos-u55-128:Ethos_U55_Deep_Embedded:Shared_Sram; got "
                             f"{name!r}")
        return _vela_hardware(hardware_id(name), *parts)
    if name in NPU_PRESETS:
        return _vela_hardware(name, *NPU_PRESETS[name])
    if name not in BUILTIN:
        import difflib
        close = difflib.get_close_matches(name, list(BUILTIN) + list(NPU_PRESETS), n=2)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown hardware {name!r}{hint}; known: {', '.join(list_hardware())}")
    return BUILTIN[name]


def hardware_id(name: str) -> str:
    """A file-name-safe id: `cpu_float` stays, `csv:/x/pixel4_gpu.csv` -> `pixel4_gpu`,
    `vela:ethos-u55-128:Ethos_U55_Deep_Embedded:Shared_Sram` ->
    `vela_ethos-u55-128_Ethos_U55_Deep_Embedded_Shared_Sram`."""
    if name.startswith(CSV_PREFIX):
        return Path(name[len(CSV_PREFIX):]).stem
    if name.startswith(VELA_PREFIX):
        return "vela_" + name[len(VELA_PREFIX):].replace(":", "_")
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
