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


def test_usage_errors_are_short_and_point_at_help(capsys):
    assert cli.main(["benchmark"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rsg-fast: error: unknown command 'benchmark'; choose from bench, train, evaluate")
    assert "rsg-fast --help" in err and "usage:" not in err
    assert cli.main(["ben"]) == 2                      # no prefix matching
    assert "unknown command 'ben'" in capsys.readouterr().err


def test_every_command_loads_and_version(capsys):
    for name in cli.COMMANDS:
        assert callable(cli.load_command(name))
    from rsg_fast import __version__
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"rsg-fast {__version__}"


def _fake_check(argv):
    print("check ran with", argv)
    return 3


def test_a_command_is_one_table_entry(monkeypatch, capsys):
    monkeypatch.setitem(cli.COMMANDS, "check", (f"{__name__}:_fake_check", "check the kernels"))
    assert cli.main(["check", "--quick"]) == 3
    assert capsys.readouterr().out == "check ran with ['--quick']\n"
    assert cli.main(["--help"]) == 0
    assert "check the kernels" in capsys.readouterr().out


def test_bench_prints_no_cuda_runtime_warning():
    """`rsg-fast bench` on a CPU machine: torch.utils.benchmark's import of cpp_extension logged "No
    CUDA runtime is found" on every run; nothing here compiles C++, so it is silenced at the import."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "import rsg_fast.bench.timers"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "No CUDA runtime" not in done.stderr, done.stderr
