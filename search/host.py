"""The host CPU latencies belong to: `current_host()` and its short `host_id`.

Kept apart from search.cost_model (which reads collected data) so that the collector
(search.collect_latency) can record the host without importing the cost models.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

# CPU features that change what LiteRT's XNNPACK kernels can do (x86: AVX2 / AVX-512 and the
# int8 dot products VNNI / AMX; Arm: the dot-product and int8 matrix-multiply extensions).
# An int8 model runs ~3x faster than float on an AVX-512 VNNI host and no faster on an
# AVX2-only one (SPEC section 7): a CPU cost model is a description of one host.
ISA_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimd", "asimddp",
                "i8mm", "sve")
UNKNOWN_CPU = "unknown"


def _cpuinfo() -> tuple[str | None, set[str]]:
    """(CPU model name, feature flags) from /proc/cpuinfo; (None, empty) where there is none."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None, set()
    name, flags = None, set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and name is None:
            name = value.strip()
        elif key in ("flags", "features") and not flags:  # x86 "flags", Arm "Features"
            flags = set(value.split())
    return name, flags


def current_host(threads: int = 1) -> dict:
    """What CPU latencies measured here belong to: CPU model, the ISA features in
    `ISA_FEATURES` it has, machine, LiteRT version and the number of threads timed."""
    import platform
    from importlib.metadata import PackageNotFoundError, version
    name, flags = _cpuinfo()
    try:
        litert = version("ai-edge-litert")
    except PackageNotFoundError:
        litert = None
    return {"cpu_model": name or platform.processor() or UNKNOWN_CPU,
            "machine": platform.machine(),
            "isa": sorted(f for f in ISA_FEATURES if f in flags),
            "litert_version": litert, "threads": int(threads)}


def host_id(host: Mapping[str, Any]) -> str:
    """A short stable id of a host record (the file-name suffix of calibrated cost models)."""
    import hashlib
    key = json.dumps({k: host.get(k) for k in ("cpu_model", "machine", "isa", "litert_version",
                                               "threads")}, sort_keys=True)
    return hashlib.sha1(key.encode()).hexdigest()[:10]
