"""The `rsg-fast` dispatcher: help, unknown commands, and routing to each subcommand."""
import pytest

from rsg_fast import cli


def test_help_exits_zero_and_lists_commands(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("bench", "train", "evaluate"):
        assert command in out


def test_no_command_is_an_error(capsys):
    assert cli.main([]) == 2


def test_unknown_command_names_it(capsys):
    assert cli.main(["benchmark"]) == 2
    assert "unknown command 'benchmark'" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["bench", "train", "evaluate"])
def test_subcommand_help_is_routed(command, capsys):
    try:
        code = cli.main([command, "--help"])
    except SystemExit as exc:  # argparse's --help exits
        code = exc.code
    assert code == 0
    assert f"rsg-fast {command}" in capsys.readouterr().out
