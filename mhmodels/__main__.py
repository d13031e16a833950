"""`python -m mhmodels <command> [flags]`: summary | benchmark | train.

Each command lives in its own module that defines its absl flags; only the chosen one is
imported, and `--help` after the command lists exactly its flags (`mhmodels.cli`).
"""
from __future__ import annotations

import importlib
import sys

from mhmodels import cli

cli.quiet_native_logs()  # before any command imports TensorFlow

COMMANDS = {
    "summary": ("mhmodels.summary", "params / MAdds of zoo models beside the paper's Table 1"),
    "benchmark": ("mhmodels.benchmark", "LiteRT latency of zoo models (Table 1 shape) + plot"),
    "train": ("mhmodels.train", "train / evaluate a zoo model (same as python -m mhmodels.train)"),
    "weights": ("mhmodels.weights_cli", "published ImageNet checkpoints: list | fetch <model>"),
}


def usage() -> str:
    lines = ["usage: python -m mhmodels <command> [flags]   (--help after a command lists its "
             "flags)", "", "commands:"]
    lines += [f"  {name:10s} {doc}" for name, (_, doc) in COMMANDS.items()]
    return "\n".join(lines)


def run(argv: list[str] | None = None) -> None:
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(usage())
        sys.exit(0 if len(argv) >= 2 else 2)
    command = argv[1]
    if command not in COMMANDS:
        print(f"unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        sys.exit(2)
    module = importlib.import_module(COMMANDS[command][0])
    cli.run(module.main, module=module, groups=getattr(module, "FLAG_GROUPS", None),
            argv=[f"{argv[0]} {command}"] + argv[2:])


if __name__ == "__main__":
    run()
