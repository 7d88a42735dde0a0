"""Project hygiene: one version, the licence in PEP 639 form, py.typed shipped, every package listed."""
import pathlib
import re

import rsg_fast

ROOT = pathlib.Path(__file__).resolve().parents[1]
PYPROJECT = (ROOT / "pyproject.toml").read_text()


def test_one_version_source_and_a_changelog_entry_for_it():
    project = PYPROJECT.split("[project]", 1)[1].split("\n[", 1)[0]
    assert not re.search(r"^version\s*=", project, flags=re.M)          # not written twice
    assert 'dynamic = ["version"]' in project
    assert 'version = { attr = "rsg_fast.__version__" }' in PYPROJECT
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert "## Unreleased" in changelog
    released = re.findall(r"^## (\d+\.\d+\.\d+) ", changelog, flags=re.M)
    version = rsg_fast.__version__
    if version in released:
        return
    # a development build says so (PEP 440 .devN) and names the next release, past the last one, so
    # `rsg-fast --version` tells it apart from the release before the Unreleased changes
    match = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)\.dev\d+", version)
    assert match, f"__version__ {version!r} is neither a released version in CHANGELOG.md nor X.Y.Z.devN"
    assert tuple(map(int, match.groups())) > tuple(map(int, released[0].split("."))), (version, released[0])


def test_licence_is_mit_in_pep_639_form():
    assert (ROOT / "LICENSE").read_text().startswith("MIT License\n")
    assert 'license = "MIT"' in PYPROJECT and 'license-files = ["LICENSE"]' in PYPROJECT
    setuptools_floor = int(re.search(r'"setuptools>=(\d+)', PYPROJECT).group(1))
    assert setuptools_floor >= 77        # the first setuptools that reads PEP 639 licence expressions


def test_py_typed_and_every_package_are_shipped():
    assert (ROOT / "rsg_fast" / "py.typed").is_file()
    assert re.search(r'\[tool\.setuptools\.package-data\]\nrsg_fast = \["py\.typed"\]', PYPROJECT)
    listed = set(re.findall(r'"(rsg_fast[\w.]*)"', PYPROJECT.split("packages = ", 1)[1].split("]", 1)[0]))
    packages = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "rsg_fast").rglob("__init__.py")}
    assert packages <= listed, f"packages missing from pyproject (a wheel would lack them): {packages - listed}"
