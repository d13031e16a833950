"""Arm Ethos-U NPU latency: Arm's own compiler, vela (`pip install ethos-u-vela`), estimates it.

    est = estimate_tflite(int8_bytes, VelaConfig('ethos-u55-256',
                          'Ethos_U55_High_End_Embedded', 'Shared_Sram'))
    est.latency_ms, est.cpu_ops, est.npu_ops

Vela compiles a full-integer TFLite graph for one accelerator configuration, system
configuration (clocks, memory bandwidths and latencies) and memory mode (where weights and the
tensor arena live), all from its bundled `config_files/Arm/vela.ini`, and writes a summary CSV
whose `inference_time` is its performance model's estimate in seconds (deterministic: the same
graph and configuration always give the same number). Ops vela cannot map to the NPU run on the
host CPU; vela prices them at zero, so `cpu_ops` counts them and callers must not ignore it.

This is the one Ethos-U latency path: `search.hardware` (search, cost-model collection) and
`python -m mhmodels benchmark` both call `estimate_tflite`.
"""
from __future__ import annotations

import contextlib
import csv
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

INSTALL_HINT = "pip install 'ethos-u-vela>=5.2'"
ACCELERATORS = ("ethos-u55-32", "ethos-u55-64", "ethos-u55-128", "ethos-u55-256",
                "ethos-u65-256", "ethos-u65-512", "ethos-u85-128", "ethos-u85-256",
                "ethos-u85-512", "ethos-u85-1024", "ethos-u85-2048")


class VelaError(RuntimeError):
    """vela is missing, rejected the configuration, or could not compile the graph."""


class VelaCompileError(VelaError):
    """vela could not compile this graph for this target (e.g. its tensors do not fit the
    SRAM): a property of the model, not of the set-up, so a collection skips the model."""


@dataclass(frozen=True)
class VelaConfig:
    """One Ethos-U target: accelerator, a `System_Config` and a `Memory_Mode` of vela.ini."""

    accelerator: str
    system: str
    memory_mode: str
    optimise: str = "Performance"

    def __post_init__(self):
        if self.accelerator not in ACCELERATORS:
            raise ValueError(f"unknown Ethos-U accelerator {self.accelerator!r}; known: "
                             f"{', '.join(ACCELERATORS)}")
        if self.optimise not in ("Performance", "Size"):
            raise ValueError(f"optimise must be 'Performance' or 'Size', not {self.optimise!r}")
        family = self.accelerator.split("-")[1]  # u55 / u65 / u85
        if f"_{family.upper()}_" not in self.system:
            raise ValueError(f"system config {self.system!r} is not for {self.accelerator} "
                             f"(known: {', '.join(system_configs(family))})")
        sections = _ini_sections()
        if self.system not in sections["System_Config"]:
            raise ValueError(f"unknown vela system config {self.system!r}; known: "
                             f"{', '.join(sections['System_Config'])}")
        if self.memory_mode not in sections["Memory_Mode"]:
            raise ValueError(f"unknown vela memory mode {self.memory_mode!r}; known: "
                             f"{', '.join(sections['Memory_Mode'])}")

    def to_dict(self) -> dict:
        """The configuration with vela's version: recorded with every estimate."""
        return {"tool": "vela", "vela_version": vela_version(), **asdict(self)}


@dataclass(frozen=True)
class VelaEstimate:
    """vela's summary of one compiled graph."""

    latency_ms: float
    cycles: int
    npu_ops: int
    cpu_ops: int
    macs: int
    sram_kib: float
    off_chip_kib: float


# Named Ethos-U targets: (accelerator, vela.ini system config, memory mode). The search's
# hardware of the same names (search.hardware) and the benchmark's NPU columns use these.
PRESETS = {
    "ethos_u55": ("ethos-u55-256", "Ethos_U55_High_End_Embedded", "Shared_Sram"),
    "ethos_u65": ("ethos-u65-512", "Ethos_U65_High_End", "Dedicated_Sram"),
    "ethos_u85": ("ethos-u85-2048", "Ethos_U85_SYS_DRAM_High", "Dedicated_Sram_384KB"),
}


def preset(name: str) -> VelaConfig:
    """The `VelaConfig` of a named preset (`ethos_u55`, `ethos_u65`, `ethos_u85`)."""
    if name not in PRESETS:
        raise ValueError(f"unknown Ethos-U preset {name!r}; known: {', '.join(PRESETS)}")
    return VelaConfig(*PRESETS[name])


def vela_version() -> str:
    try:
        from importlib.metadata import version
        return version("ethos-u-vela")
    except Exception:  # noqa: BLE001 - not installed: say how to install
        raise VelaError(f"Arm's NPU compiler vela is not installed: {INSTALL_HINT}") from None


def _vela_main():
    try:
        from ethosu.vela.vela import main
    except ImportError as err:
        raise VelaError(f"Arm's NPU compiler vela is not installed ({err}): "
                        f"{INSTALL_HINT}") from None
    return main


def _ini_path() -> Path:
    import importlib.util
    spec = importlib.util.find_spec("ethosu.vela") if importlib.util.find_spec("ethosu") \
        else None
    if spec is None or not spec.origin:
        raise VelaError(f"Arm's NPU compiler vela is not installed: {INSTALL_HINT}")
    # ethosu is a namespace package; the configs sit beside its vela package.
    return Path(spec.origin).resolve().parent.parent / "config_files" / "Arm" / "vela.ini"


_SECTIONS: dict | None = None


def _ini_sections() -> dict[str, list[str]]:
    """{'System_Config': [...], 'Memory_Mode': [...]} from vela's bundled vela.ini."""
    global _SECTIONS
    if _SECTIONS is None:
        out: dict[str, list[str]] = {"System_Config": [], "Memory_Mode": []}
        for line in _ini_path().read_text().splitlines():
            m = re.match(r"\[(System_Config|Memory_Mode)\.(\w+)\]", line.strip())
            if m:
                out[m.group(1)].append(m.group(2))
        _SECTIONS = out
    return _SECTIONS


def system_configs(family: str | None = None) -> list[str]:
    """vela.ini's system configurations, optionally only those of 'u55' / 'u65' / 'u85'."""
    names = _ini_sections()["System_Config"]
    return [n for n in names if family is None or f"_{family.upper()}_" in n]


def estimate_tflite(model: bytes | str | os.PathLike, config: VelaConfig) -> VelaEstimate:
    """Compile a full-integer TFLite model with vela for `config`; its performance estimate.

    Raises VelaError for a float graph (vela runs only integer ops on the NPU: every op of a
    float model would fall back to the CPU), a missing vela, or a failed compilation.
    """
    data = Path(model).read_bytes() if not isinstance(model, (bytes, bytearray)) else bytes(model)
    _require_integer(data)
    main = _vela_main()
    with tempfile.TemporaryDirectory(prefix="mhmodels_vela_") as tmp:
        src = os.path.join(tmp, "model.tflite")
        Path(src).write_bytes(data)
        args = [src, "--accelerator-config", config.accelerator, "--config", "Arm/vela.ini",
                "--system-config", config.system, "--memory-mode", config.memory_mode,
                "--optimise", config.optimise, "--output-dir", tmp]
        log_path = os.path.join(tmp, "vela.log")
        try:
            with _captured_output(log_path):
                rc = main(args)
        except SystemExit as exit_:  # argparse errors
            rc = exit_.code
        except Exception as err:  # noqa: BLE001 - vela raises many types; keep its words
            raise VelaCompileError(f"vela failed for {config.accelerator} / {config.system}: "
                            f"{type(err).__name__}: {err}\n{_tail(_read(log_path))}") from err
        text = _read(log_path)
        summary = os.path.join(tmp, f"model_summary_{config.system}.csv")
        if rc not in (0, None) or not os.path.isfile(summary):
            raise VelaError(f"vela failed for {config.accelerator} / {config.system} (exit "
                            f"{rc}):\n{_tail(text)}")
        with open(summary, newline="") as f:
            row = next(csv.DictReader(f))
    return VelaEstimate(
        latency_ms=float(row["inference_time"]) * 1000.0,
        cycles=int(float(row["cycles_total"])),
        npu_ops=_count(text, "NPU operators"),
        cpu_ops=_count(text, "CPU operators"),
        macs=int(float(row["nn_macs"])),
        sram_kib=float(row["sram_memory_used"]),
        off_chip_kib=float(row["off_chip_flash_memory_used"]) + float(row["dram_memory_used"]),
    )


@contextlib.contextmanager
def _captured_output(path: str):
    """Send stdout / stderr, Python's and the native compiler's, to `path` (vela's C++ back
    end prints a line per tensor straight to the file descriptors, its Python part prints the
    report through sys.stdout, which test runners and notebooks replace)."""
    import sys
    sys.stdout.flush()
    sys.stderr.flush()
    with open(path, "ab", buffering=0) as native, open(path, "a") as python:
        saved = [os.dup(1), os.dup(2)]
        os.dup2(native.fileno(), 1)
        os.dup2(native.fileno(), 2)
        try:
            with contextlib.redirect_stdout(python), contextlib.redirect_stderr(python):
                yield
        finally:
            python.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def _require_integer(data: bytes) -> None:
    from mhmodels.export import float_ops
    bad = float_ops(data)
    if bad:
        names = sorted({op.name for op in bad})
        raise VelaError(f"an Ethos-U NPU runs full-integer models only; this graph has {len(bad)}"
                        f" op(s) on float tensors ({', '.join(names[:6])}): export it with "
                        "quantization='int8'")


def _count(text: str, label: str) -> int:
    m = re.search(rf"{label}\s*=\s*(\d+)", text)
    if m is None:
        raise VelaError(f"vela's report has no '{label} = N' line:\n{_tail(text)}")
    return int(m.group(1))


def _tail(text: str, lines: int = 12) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
