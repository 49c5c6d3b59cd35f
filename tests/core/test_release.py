"""The release's files agree with each other (issue 22), read from the source tree:

1. LICENSE at the root is the Apache License 2.0 text the pyprojects declare, and every
   distribution ships an identical copy (``license-files``);
2. every distribution has a README.md as its long description, with an install line, a quick
   start of at most five lines that parses, and links to the docs;
3. one version source per distribution (``__version__`` read by setuptools), the same version
   in all four, the host packages' ``keyless==`` pins equal to it, and a CHANGELOG entry;
4. docs/compatibility.md lists exactly the requirements the pyprojects declare, and its
   "tested with" pins are the test environments' own.

The built archives are checked in tests/release (what the wheels hold, installed alone).
"""

from __future__ import annotations

import ast
import hashlib
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
#: distribution directory -> its import package
DISTRIBUTIONS = {"core": "keyless", "airflow_provider": "keyless_airflow",
                 "prefect_blocks": "prefect_keyless", "ray_runtime": "keyless_ray"}
#: sha256 of https://www.apache.org/licenses/LICENSE-2.0.txt, unmodified
APACHE_2_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"
COMPATIBILITY = ROOT / "docs" / "compatibility.md"


def _project(directory: str) -> dict[str, Any]:
    return tomllib.loads((ROOT / directory / "pyproject.toml").read_text())


def _version(directory: str) -> str:
    """``__version__`` of the distribution's package, read as setuptools reads it (statically)."""
    init = ROOT / directory / "src" / DISTRIBUTIONS[directory] / "__init__.py"
    for node in ast.parse(init.read_text()).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__version__"
                                                for t in node.targets):
            return str(ast.literal_eval(node.value))
    raise AssertionError(f"{init.relative_to(ROOT)} assigns no __version__")


def _requirements(project: dict[str, Any]) -> list[tuple[str | None, Requirement]]:
    """(extra or None, requirement) for every dependency of a [project] table."""
    found: list[tuple[str | None, Requirement]] = [
        (None, Requirement(r)) for r in project.get("dependencies", [])]
    for extra, requirements in project.get("optional-dependencies", {}).items():
        found += [(extra, Requirement(r)) for r in requirements]
    return found


# ----------------------------------------------------------------------------- 1. license
def test_root_license_is_the_apache_2_text() -> None:
    text = (ROOT / "LICENSE").read_bytes()
    assert hashlib.sha256(text).hexdigest() == APACHE_2_SHA256, \
        "LICENSE is not the unmodified Apache License 2.0 text the pyprojects declare"


@pytest.mark.parametrize("directory", sorted(DISTRIBUTIONS))
def test_distribution_ships_the_root_license(directory: str) -> None:
    project = _project(directory)["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    copy = ROOT / directory / "LICENSE"
    assert copy.is_file() and copy.read_bytes() == (ROOT / "LICENSE").read_bytes(), \
        f"{directory}/LICENSE differs from the root LICENSE; fix: cp LICENSE {directory}/"


# ----------------------------------------------------------------------------- 2. READMEs
def _section(text: str, heading: str) -> str:
    match = re.search(rf"^## {heading}\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert match is not None, f"no '## {heading}' section"
    return match[1]


@pytest.mark.parametrize("directory", sorted(DISTRIBUTIONS))
def test_distribution_readme_is_its_long_description(directory: str) -> None:
    project = _project(directory)["project"]
    assert project["readme"] == "README.md"
    text = (ROOT / directory / "README.md").read_text(encoding="utf-8")
    assert text.startswith(f"# {project['name']}\n")
    install = _section(text, "Install")
    assert re.search(rf"pip install [^\n]*\b{re.escape(project['name'])}\b", install)
    quick = re.findall(r"```python\n(.*?)```", _section(text, "Quick start"), re.DOTALL)
    assert len(quick) == 1, "the quick start is one python block"
    ast.parse(quick[0])
    lines = [line for line in quick[0].splitlines() if line.strip()]
    assert len(lines) <= 5, f"the quick start has {len(lines)} lines: keep it to five"
    docs = _section(text, "Documentation")
    assert "](../docs/" in docs and "](../CHANGELOG.md)" in docs


# ----------------------------------------------------------------------------- 3. versions
@pytest.mark.parametrize("directory", sorted(DISTRIBUTIONS))
def test_one_version_source_per_distribution(directory: str) -> None:
    config = _project(directory)
    assert "version" not in config["project"], "the version is written once, in the package"
    assert "version" in config["project"]["dynamic"]
    attr = config["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == f"{DISTRIBUTIONS[directory]}.__version__"
    Version(_version(directory))


def test_the_distributions_share_one_version_and_pin_it() -> None:
    versions = {directory: _version(directory) for directory in DISTRIBUTIONS}
    assert len(set(versions.values())) == 1, versions
    version = versions["core"]
    pins = [(directory, extra, str(req)) for directory in DISTRIBUTIONS
            for extra, req in _requirements(_project(directory)["project"])
            if canonicalize_name(req.name) == "keyless"]
    assert len(pins) >= 3
    for directory, extra, pin in pins:
        assert str(Requirement(pin).specifier) == f"=={version}", \
            f"{directory} pins {pin!r} (extra {extra}); keyless is {version}"


def test_changelog_has_this_release() -> None:
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert "## [Unreleased]" in text
    version = _version("core")
    assert re.search(rf"^## \[{re.escape(version)}\] - \d{{4}}-\d{{2}}-\d{{2}}$", text,
                     re.MULTILINE), f"CHANGELOG.md has no '## [{version}] - YYYY-MM-DD' entry"


# ----------------------------------------------------------------------------- 4. compatibility
_ROW = re.compile(r"^\| (?P<component>[^|]+) \| (?P<where>[^|]+) \| (?P<requirement>[^|]+) "
                  r"\| (?P<tested>[^|]+) \|$", re.MULTILINE)


def _rows() -> list[dict[str, str]]:
    rows = [m.groupdict() for m in _ROW.finditer(COMPATIBILITY.read_text(encoding="utf-8"))]
    return [r for r in rows if r["component"] != "component" and not r["where"].startswith("-")]


def _key(where: Requirement, requirement: Requirement) -> tuple[str, str, str, str]:
    extra = next(iter(where.extras), "")
    return (canonicalize_name(where.name), extra, canonicalize_name(requirement.name),
            f"{sorted(requirement.extras)}{requirement.specifier}")


def _declared() -> set[tuple[str, str, str, str]]:
    found = set()
    for directory in DISTRIBUTIONS:
        project = _project(directory)["project"]
        for extra, req in _requirements(project):
            if canonicalize_name(req.name) != "keyless":  # the version pins: test above
                where = Requirement(f"{project['name']}[{extra}]" if extra else project["name"])
                found.add(_key(where, req))
    return found


def _documented() -> set[tuple[str, str, str, str]]:
    found = set()
    for row in _rows():
        requirement = re.fullmatch(r"`([^`]+)`", row["requirement"].strip())
        if requirement is None or requirement[1].startswith("requires-python"):
            continue
        for where in re.findall(r"`([^`]+)`", row["where"]):
            found.add(_key(Requirement(where), Requirement(requirement[1])))
    return found


def test_compatibility_matrix_is_the_pyprojects_requirements() -> None:
    declared, documented = _declared(), _documented()
    assert len(declared) >= 12
    missing = sorted(declared - documented)
    stale = sorted(documented - declared)
    assert not missing and not stale, (
        "docs/compatibility.md and the pyprojects disagree; fix the table's rows "
        f"(distribution[extra], requirement). In a pyproject, not in the table: {missing}; "
        f"in the table, not in any pyproject: {stale}")


def test_compatibility_python_row_is_every_requires_python() -> None:
    [row] = [r for r in _rows() if r["requirement"].startswith("`requires-python ")]
    floor = row["requirement"].strip("` ").removeprefix("requires-python ")
    for directory in DISTRIBUTIONS:
        assert _project(directory)["project"]["requires-python"] == floor, directory
    assert Version(row["tested"].strip()) in Requirement(f"python{floor}").specifier


def test_compatibility_tested_pins_are_the_test_environments() -> None:
    lines = {line.strip() for path in (ROOT / "tests" / "requirements").glob("*.txt")
             for line in path.read_text().splitlines()}
    pins = [(row, m[1]) for row in _rows() for m in re.finditer(r"`([^`]+)`", row["tested"])]
    assert len(pins) >= 5, pins
    for row, pin in pins:
        assert pin in lines, f"compatibility.md: {pin!r} is no pin of tests/requirements/*.txt"
        requirement = re.fullmatch(r"`([^`]+)`", row["requirement"].strip())
        tested = Requirement(pin)
        if requirement is None or canonicalize_name(Requirement(requirement[1]).name) != \
                canonicalize_name(tested.name):
            continue
        [spec] = tested.specifier
        assert Version(spec.version.removesuffix(".*")) in Requirement(requirement[1]).specifier, \
            f"compatibility.md: the tested {pin!r} is outside {requirement[1]!r}"
