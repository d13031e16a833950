"""What every benchmark shares: --json (one file, written atomically), quiet logs, and the
checkout on sys.path.

Importing this module defines the shared ``--json`` flag. Benchmarks run from a checkout
(`python benchmarks/x.py`, where sys.path[0] is benchmarks/): the repository root goes first on
sys.path so that `search` (installed as `mhmodels.search`) and `mhmodels` are this checkout's.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from absl import flags
from absl import logging as absl_logging

flags.DEFINE_string("json", None, "Also write the results to this JSON file.")


def write_json(results: dict[str, Any]) -> None:
    """Write ``results`` to --json (nothing without it), via a temporary file + rename."""
    if not flags.FLAGS.json:
        return
    path = Path(flags.FLAGS.json)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(results, indent=2))
    os.replace(tmp, path)


def quiet_logs() -> None:
    """absl INFO off unless --verbosity was given: TensorFlow's converter logs pages there."""
    if not flags.FLAGS["verbosity"].present:
        absl_logging.set_verbosity(absl_logging.WARNING)
