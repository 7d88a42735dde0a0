"""The argument parsing every command shares (rsg_fast.cli_args)."""
import argparse
import re

import pytest

from rsg_fast import cli_args


def _parser():
    p = cli_args.Parser(prog="rsg-fast demo")
    p.add_argument("--shapes", type=cli_args.name_list("--shapes", ["a", "b"]), default=["a"], help="which")
    p.add_argument("--epochs", type=cli_args.positive_int("--epochs"), default=200, help="how many")
    p.add_argument("--lr", type=cli_args.positive_float("--lr"), default=None, help="rate (default: from the recipe)")
    p.add_argument("--flag", action="store_true", help="a switch")
    p.add_argument("--batch", type=cli_args.positive_int("--batch"), default=128)
    return p


def test_no_prefix_matching():
    with pytest.raises(cli_args.UsageError, match="unrecognized arguments: --shape"):
        cli_args.parse_args(_parser(), ["--shape", "a"])


def test_help_shows_real_defaults_once():
    text = _parser().format_help()
    assert "how many (default: 200)" in text
    assert "which (default: a)" in text
    assert "(default: None)" not in text and "from the recipe) (default" not in text
    assert "a switch (default" not in text
    assert re.search(r"--batch BATCH +\(default: 128\)", text)      # a flag without help text shows its default too


def test_value_errors_name_the_flag_and_exit_2(capsys):
    with pytest.raises(cli_args.UsageError) as info:
        cli_args.parse_args(_parser(), ["--epochs", "0"])
    assert "--epochs must be a positive integer, got '0'" in str(info.value)
    assert cli_args.usage_error_exit(info.value) == 2
    err = capsys.readouterr().err
    assert err.startswith("rsg-fast demo: error: ") and "run `rsg-fast demo --help`" in err
    assert "usage:" not in err


@pytest.mark.parametrize("parse, text", [
    (cli_args.fraction("--x"), "1.5"), (cli_args.nonneg_int("--x"), "-1"), (cli_args.positive_float("--x"), "nan"),
    (cli_args.nonneg_float("--x"), "inf"), (cli_args.positive_int("--x"), "2.5"),
])
def test_number_parsers_reject(parse, text):
    with pytest.raises(argparse.ArgumentTypeError, match="--x must be"):
        parse(text)


def test_resolve_device():
    import torch
    assert cli_args.resolve_device("cpu").type == "cpu"
    assert cli_args.resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="--device must be auto, cpu, cuda or cuda:N, got 'tpu'"):
        cli_args.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device cuda but no CUDA device"):
            cli_args.resolve_device("cuda")


def test_zero_default_is_shown_and_flag_named_once(capsys):
    p = cli_args.Parser(prog="rsg-fast demo")
    p.add_argument("--seed", type=cli_args.in_range("--seed", 0, 2**32 - 1, integer=True), default=0, help="seed")
    assert "seed (default: 0)" in p.format_help()          # 0 == False, but it is a real default
    with pytest.raises(cli_args.UsageError) as info:
        cli_args.parse_args(p, ["--seed", "-1"])
    assert str(info.value) == "--seed must be an integer in [0, 4294967295], got '-1'"   # no "argument --seed:"
    with pytest.raises(argparse.ArgumentTypeError, match=r"in \[0, 1\), got '1'"):
        cli_args.in_range("--x", 0, 1, high_open=True)("1")
