"""The ``rsg-fast`` command line: ``rsg-fast bench | train | evaluate``."""
from __future__ import annotations

import sys

USAGE = """usage: rsg-fast {bench,train,evaluate} [options]

  bench      time RSG against the reference (the main job; `rsg-fast bench --help`)
  train      train a model on long-tailed data with RSG (`rsg-fast train --help`)
  evaluate   evaluate a checkpoint (`rsg-fast evaluate --help`)
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "bench":
        from rsg_fast.bench import main as run
    elif command == "train":
        from rsg_fast.train import main as run
    elif command == "evaluate":
        from rsg_fast.train import evaluate_main as run
    else:
        print(f"rsg-fast: unknown command {command!r}; expected one of bench, train, evaluate\n", file=sys.stderr)
        print(USAGE, file=sys.stderr)
        return 2
    return int(run(rest) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
