"""What every benchmark does with its results: --json, one file written atomically.

Importing this module defines the shared ``--json`` flag.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from absl import flags

flags.DEFINE_string("json", None, "Also write the results to this JSON file.")


def write_json(results: dict[str, Any]) -> None:
    """Write ``results`` to --json (nothing without it), via a temporary file + rename."""
    if not flags.FLAGS.json:
        return
    path = Path(flags.FLAGS.json)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(results, indent=2))
    os.replace(tmp, path)
