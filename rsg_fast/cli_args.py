"""Argument parsing shared by every ``rsg-fast`` command (bench, train, evaluate, check).

One behaviour for all of them:

- no prefix matching (``--shape`` is an error, not ``--shapes``);
- ``--help`` shows each flag's real default, once (flags whose default is ``None`` or already
  stated in their help text show none);
- a usage error prints ``PROG: error: MESSAGE`` and ``run `PROG --help` for the options`` on stderr
  and gives exit status 2, without the whole usage block;
- value parsers (``positive_int``, ``fraction``, ``device`` ...) name the flag in their messages.

Use ``parse_args(parser, argv)``: it returns the namespace, or raises ``UsageError`` (``main``
functions catch it with ``usage_error_exit``).
"""
from __future__ import annotations

import argparse
import copy
import math
import re
import sys
from collections.abc import Callable, Sequence

__all__ = [
    "Parser", "UsageError", "parse_args", "usage_error_exit", "positive_int", "nonneg_int", "int_at_least",
    "positive_float", "nonneg_float", "fraction", "in_range", "name_list", "device_name", "resolve_device",
    "lacks_bf16",
]


class UsageError(Exception):
    """A bad command line: printed as ``PROG: error: ...`` with exit status 2."""

    def __init__(self, prog: str, message: str):
        super().__init__(message)
        self.prog = prog


class _DefaultsFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` where a default exists and the help text does not state one."""

    def _default_note(self, action) -> str:
        """``(default: X)``, or ``""`` where none is shown (no value, a switch, --help, stated in the help)."""
        if action.help is argparse.SUPPRESS or "default" in (action.help or "").lower():
            return ""
        # `is`, not `in`: a default of 0 equals False but is a real default (e.g. --seed 0)
        if action.default is None or action.default is argparse.SUPPRESS or action.default is False \
                or isinstance(action, argparse._HelpAction):
            return ""
        if action.option_strings and action.nargs != 0 or isinstance(action, argparse.BooleanOptionalAction):
            default = action.default
            shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
            return f"(default: {shown.replace('%', '%%')})"   # help text is %-formatted by argparse
        return ""

    def _get_help_string(self, action):
        text, note = action.help or "", self._default_note(action)
        return f"{text} {note}" if text and note else text or note

    def _format_action(self, action):
        # argparse leaves the help column empty for an action without help text: give it the default alone
        if not action.help:
            note = self._default_note(action)
            if note:
                action = copy.copy(action)
                action.help = note
        return super()._format_action(action)


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with the shared behaviour (see the module docstring)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", _DefaultsFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):  # argparse would print the usage block and sys.exit(2)
        # "argument --epochs: --epochs must be ..." -> "--epochs must be ...": the value parsers name the flag
        match = re.fullmatch(r"argument ([^:]+): (.*)", message, flags=re.S)
        if match and any(match.group(2).startswith(flag) for flag in match.group(1).split("/")):
            message = match.group(2)
        raise UsageError(self.prog, message)


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None):
    """``parser.parse_args(argv)``; ``--help`` still exits 0 through ``SystemExit``."""
    return parser.parse_args(list(sys.argv[1:] if argv is None else argv))


def usage_error_exit(error: UsageError) -> int:
    """Print a usage error the shared way and return exit status 2."""
    print(f"{error.prog}: error: {error}", file=sys.stderr)
    print(f"run `{error.prog} --help` for the options", file=sys.stderr)
    return 2


# ----------------------------------------------------------------------------- value parsers

def _number(flag: str, convert: Callable[[str], float], what: str, ok: Callable[[float], bool]):
    def parse(text: str):
        try:
            value = convert(text)
        except (TypeError, ValueError):
            value = None
        if value is None or not math.isfinite(value) or not ok(value):
            raise argparse.ArgumentTypeError(f"{flag} must be {what}, got {text!r}")
        return value
    parse.__name__ = what  # argparse names the type in some messages
    return parse


def positive_int(flag: str):
    return _number(flag, int, "a positive integer", lambda v: v >= 1)


def nonneg_int(flag: str):
    return _number(flag, int, "an integer >= 0", lambda v: v >= 0)


def int_at_least(flag: str, low: int):
    return _number(flag, int, f"an integer >= {low}", lambda v: v >= low)


def positive_float(flag: str):
    return _number(flag, float, "a positive number", lambda v: v > 0)


def nonneg_float(flag: str):
    return _number(flag, float, "a number >= 0", lambda v: v >= 0)


def fraction(flag: str):
    return _number(flag, float, "a number in (0, 1]", lambda v: 0 < v <= 1)


def in_range(flag: str, low: float, high: float, *, integer: bool = False, high_open: bool = False):
    """A number with ``low <= value <= high`` (``< high`` when ``high_open``); whole numbers when ``integer``."""
    what = f"{'an integer' if integer else 'a number'} in [{low}, {high}{')' if high_open else ']'}"
    return _number(flag, int if integer else float, what,
                   lambda v: low <= v < high if high_open else low <= v <= high)


def name_list(flag: str, choices: Sequence[str], hidden: Sequence[str] = ()):
    """Comma-separated names from ``choices`` (``hidden`` are accepted but not advertised); repeats dropped."""
    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        if not names:
            raise argparse.ArgumentTypeError(f"{flag} must name at least one of {', '.join(choices)}")
        bad = [n for n in names if n not in choices and n not in hidden]
        if bad:
            raise argparse.ArgumentTypeError(f"{flag}: unknown {', '.join(map(repr, bad))}; choose from "
                                             f"{', '.join(choices)} (comma-separated)")
        return list(dict.fromkeys(names))
    return parse


def device_name(flag: str = "--device"):
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``, checked against this machine (see ``resolve_device``)."""
    def parse(text: str) -> str:
        try:
            resolve_device(text, flag)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text
    return parse


def resolve_device(name: str | None, flag: str = "--device"):
    """The ``torch.device`` a command runs on: ``None``/``auto`` is CUDA when present, else the CPU.

    Raises ``ValueError`` naming ``flag`` for an unknown device or CUDA on a machine without it.
    """
    import torch

    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"{flag} must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"{flag} must be auto, cpu, cuda or cuda:N, got {name!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{flag} {name} but no CUDA device is available (torch.cuda.is_available() is False)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{flag} {name} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def lacks_bf16(device) -> bool:
    """Whether ``device`` is a CUDA GPU without bf16 arithmetic (before Ampere, sm_80: V100, T4, RTX 20),
    where torch and Triton emulate it: train refuses ``--amp bf16`` there, bench and check leave bf16
    out, rather than train on, time or check the emulation."""
    import torch

    device = torch.device(device)
    return device.type == "cuda" and torch.version.hip is None and torch.cuda.get_device_capability(device) < (8, 0)
