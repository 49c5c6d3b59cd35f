"""The built archives (issue 22): what each wheel and sdist in .envs/dist holds, read as an
index and an installer read them (zip listing, METADATA, entry_points.txt, the sdist's
members), and twine's metadata check. Built by dev.py's release step from a clean clone's files.
"""

from __future__ import annotations

import configparser
import subprocess
import sys
import tarfile
import zipfile
from email.message import Message
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from trove_classifiers import classifiers as KNOWN_CLASSIFIERS

from tests.release.release_artifacts import (
    BY_DIRECTORY,
    DIST,
    DISTRIBUTIONS,
    ROOT,
    Distribution,
    source_version,
)

WHEEL = "-py3-none-any.whl"
IDS = [d.directory for d in DISTRIBUTIONS]
#: entry points the README and the docs promise: (distribution dir, group, name, object)
PROMISED_ENTRY_POINTS = [
    ("core", "console_scripts", "keyless", "keyless.cli:main"),
    ("airflow_provider", "apache_airflow_provider", "provider_info",
     "keyless_airflow.provider_info:get_provider_info"),
    ("prefect_blocks", "prefect.collections", "prefect_keyless", "prefect_keyless"),
]


def _wheel(distribution: Distribution) -> zipfile.ZipFile:
    return zipfile.ZipFile(distribution.archive(WHEEL))


def _dist_info(distribution: Distribution) -> str:
    return f"{distribution.stem}-{source_version(distribution)}.dist-info"


def _metadata(distribution: Distribution) -> Message:
    with _wheel(distribution) as wheel:
        text = wheel.read(f"{_dist_info(distribution)}/METADATA").decode()
    return Parser().parsestr(text)


def _entry_points(distribution: Distribution) -> dict[str, dict[str, str]]:
    with _wheel(distribution) as wheel:
        name = f"{_dist_info(distribution)}/entry_points.txt"
        text = wheel.read(name).decode() if name in wheel.namelist() else ""
    parser = configparser.ConfigParser(delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return {group: dict(parser[group]) for group in parser.sections()}


def _source_modules(distribution: Distribution) -> set[str]:
    src = ROOT / distribution.directory / "src"
    return {p.relative_to(src).as_posix() for p in (src / distribution.package).rglob("*.py")
            if "__pycache__" not in p.parts}


def test_every_distribution_was_built() -> None:
    built = sorted(p.name for p in DIST.glob("*") if p.is_file() and p.suffix in (".whl", ".gz"))
    assert len(built) == 2 * len(DISTRIBUTIONS), built


def test_twine_check_passes_for_every_archive() -> None:
    archives = sorted(str(p) for p in DIST.glob("*") if p.name.endswith((".whl", ".tar.gz")))
    assert len(archives) == 2 * len(DISTRIBUTIONS)
    done = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *archives],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("PASSED") == len(archives), done.stdout


@pytest.mark.parametrize("distribution", DISTRIBUTIONS, ids=IDS)
def test_wheel_metadata_is_the_source_trees(distribution: Distribution) -> None:
    meta = _metadata(distribution)
    project = distribution.config["project"]
    assert meta["Name"] == distribution.name
    assert meta["Version"] == source_version(distribution)
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta.get_all("License-File") == ["LICENSE"]
    assert meta["Requires-Python"] == project["requires-python"]
    assert meta["Description-Content-Type"] == "text/markdown"
    readme = (ROOT / distribution.directory / "README.md").read_text(encoding="utf-8")
    payload = meta.get_payload()
    assert isinstance(payload, str)
    assert payload.strip() == readme.strip(), "the long description is the README"
    unknown = set(meta.get_all("Classifier") or []) - KNOWN_CLASSIFIERS
    assert not unknown, f"not trove classifiers (PyPI refuses them): {unknown}"


@pytest.mark.parametrize("distribution", DISTRIBUTIONS[1:], ids=IDS[1:])
def test_host_wheel_requires_keyless_of_the_same_release(distribution: Distribution) -> None:
    pins = [Requirement(r) for r in _metadata(distribution).get_all("Requires-Dist") or []]
    keyless = [r for r in pins if r.name == "keyless" and r.marker is None]
    assert len(keyless) == 1, pins
    assert str(keyless[0].specifier) == f"=={source_version(BY_DIRECTORY['core'])}"


@pytest.mark.parametrize("distribution", DISTRIBUTIONS, ids=IDS)
def test_wheel_holds_the_package_license_and_data(distribution: Distribution) -> None:
    with _wheel(distribution) as wheel:
        names = set(wheel.namelist())
        license_text = wheel.read(f"{_dist_info(distribution)}/licenses/LICENSE")
    assert license_text == (ROOT / "LICENSE").read_bytes()
    package_data = distribution.config["tool"]["setuptools"]["package-data"]
    declared = [f"{package}/{pattern}" for package, patterns in package_data.items()
                for pattern in patterns]
    assert f"{distribution.package}/py.typed" in declared
    assert not [name for name in declared if name not in names], \
        f"declared package data missing from the wheel: {sorted(set(declared) - names)}"
    modules = {name for name in names if name.endswith(".py")}
    assert modules == _source_modules(distribution), \
        "the wheel's modules differ from the source tree's (a package without __init__.py?)"
    stray = [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".egg-info"))
             or n.startswith(("tests/", "build/"))]
    assert not stray, stray


def test_ray_wheel_ships_the_worker_sitecustomize() -> None:
    with _wheel(BY_DIRECTORY["ray_runtime"]) as wheel:
        site = wheel.read("keyless_ray/site/sitecustomize.py").decode()
    source = ROOT / "ray_runtime" / "src" / "keyless_ray" / "site" / "sitecustomize.py"
    assert site == source.read_text()


@pytest.mark.parametrize("distribution", DISTRIBUTIONS, ids=IDS)
def test_wheel_entry_points_are_the_declared_ones(distribution: Distribution) -> None:
    project = distribution.config["project"]
    declared = {group: dict(points) for group, points in
                project.get("entry-points", {}).items()}
    if "scripts" in project:
        declared["console_scripts"] = dict(project["scripts"])
    found = _entry_points(distribution)
    assert found == declared
    with _wheel(distribution) as wheel:
        names = set(wheel.namelist())
    for points in found.values():
        for target in points.values():
            module = target.split(":")[0].replace(".", "/")
            assert {f"{module}.py", f"{module}/__init__.py"} & names, target


@pytest.mark.parametrize(("directory", "group", "name", "target"), PROMISED_ENTRY_POINTS,
                         ids=[g for _, g, _, _ in PROMISED_ENTRY_POINTS])
def test_promised_entry_point_is_in_the_wheel(directory: str, group: str, name: str,
                                              target: str) -> None:
    assert _entry_points(BY_DIRECTORY[directory]).get(group, {}).get(name) == target


@pytest.mark.parametrize("distribution", DISTRIBUTIONS, ids=IDS)
def test_sdist_builds_alone(distribution: Distribution) -> None:
    """The sdist holds what a build from it needs (dev.py built the wheel from it)."""
    top = f"{distribution.stem}-{source_version(distribution)}"
    with tarfile.open(distribution.archive(".tar.gz")) as sdist:
        members = {m.name.removeprefix(f"{top}/"): m for m in sdist.getmembers()}
        license_file = sdist.extractfile(members["LICENSE"])
        assert license_file is not None
        assert license_file.read() == (ROOT / "LICENSE").read_bytes()
    for needed in ("README.md", "pyproject.toml", "PKG-INFO"):
        assert needed in members, needed
    modules = {name.removeprefix("src/") for name in members
               if name.startswith("src/") and name.endswith(".py")}
    assert modules == _source_modules(distribution)
    assert not [n for n in members if "__pycache__" in n or n.endswith(".pyc")]
    assert not [n for n in members if Path(n).parts[:1] in (("tests",), ("build",))]
