"""The README's Python examples run as written, and its commands are the ones CI runs."""
import pathlib
import re

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
