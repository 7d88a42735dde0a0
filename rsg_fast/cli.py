"""The ``rsg-fast`` command line: ``rsg-fast COMMAND [options]``, one entry of ``COMMANDS`` per command.

Each command is a ``main(argv) -> int`` function, imported only when its command runs (so
``rsg-fast train`` does not import the bench, nor ``--help`` torch). Names match exactly: no prefixes.
"""
from __future__ import annotations

import importlib
import sys

PROG = "rsg-fast"

# command: ("module:function", one line for --help)
COMMANDS: dict[str, tuple[str, str]] = {
    "bench": ("rsg_fast.bench:main", "time RSG against the reference (the main job)"),
    "train": ("rsg_fast.train:main", "train a model on long-tailed data with RSG"),
    "evaluate": ("rsg_fast.train:evaluate_main", "evaluate a checkpoint of a training run"),
    "check": ("rsg_fast.check:main", "check RSG's values and gradients against float64 references on this machine"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"usage: {PROG} {{{','.join(COMMANDS)}}} [options]", ""]
    lines += [f"  {name:<{width}}  {summary} (`{PROG} {name} --help`)" for name, (_, summary) in COMMANDS.items()]
    lines += ["", f"  {PROG} --version  prints the version"]
    return "\n".join(lines)


def load_command(name: str):
    """The ``main`` function of command ``name`` (a key of ``COMMANDS``)."""
    module, function = COMMANDS[name][0].split(":")
    return getattr(importlib.import_module(module), function)


def _error(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    print(f"run `{PROG} --help` for the commands", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        return _error(f"a command is needed: {', '.join(COMMANDS)}")
    command, rest = argv[0], argv[1:]
    if command in ("-h", "--help"):
        print(usage())
        return 0
    if command == "--version":
        from rsg_fast import __version__

        print(f"{PROG} {__version__}")
        return 0
    if command not in COMMANDS:
        return _error(f"unknown command {command!r}; choose from {', '.join(COMMANDS)}")
    return int(load_command(command)(rest) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
