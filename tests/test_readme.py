"""The README's Python examples run as written, its training commands parse, and its set-up commands
are the ones CI runs."""
import pathlib
import re
import shlex

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_usage_example_runs_as_written(capsys):
    blocks = [b for b in python_blocks() if "from rsg_fast import RSG" in b and "rsg(" in b]
    assert blocks, "README lost its usage example"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("0 (128, 32, 16, 16)")
    assert printed[1].startswith("160 (") and not printed[1].startswith("160 (128,")   # new samples added


def test_drop_in_snippet_imports():
    snippet = next(b for b in python_blocks() if "from RSG import RSG" in b)
    exec(compile(snippet, "README.md", "exec"), {})


def test_ci_runs_the_readme_commands():
    ci = (ROOT / ".ci" / "run").read_text()
    for command in ('pip install -e ".[dev]"', "pytest"):
        assert command in README and command in ci


def test_training_commands_parse_and_resolve():
    """Every ``rsg-fast train`` / ``-m rsg_fast.train`` command in a bash block takes its flags as
    written (a renamed or mistyped flag fails here rather than for the reader)."""
    from rsg_fast.cli_args import parse_args
    from rsg_fast.train import build_parser, resolve_config

    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line.split(" #")[0])
            for start in ("train", "rsg_fast.train"):
                if start in words and (start != "train" or words[:2] == ["rsg-fast", "train"]):
                    commands.append([w for w in words[words.index(start) + 1:] if w != "..."])
    assert len(commands) >= 6, commands
    for argv in commands:
        argv = [a.replace("cuda", "cpu") for a in argv]
        args = parse_args(build_parser(), argv)
        resolve_config(args, 1)
