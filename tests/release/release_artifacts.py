"""Where dev.py's release step (``build_release``) leaves its results, for tests/release.

``.envs/dist`` holds the sdist and wheel of each distribution; ``.envs/wheels/NAME`` an
environment made from those wheels and the package index only (nothing editable, nothing from
the source tree), one per host. These tests run in ``.envs/release`` (pytest, twine, no
keyless) and run the wheel environments' own interpreters. A missing archive or environment
fails the test (the step failed or did not run), never skips it.
"""

from __future__ import annotations

import os
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DIST = ROOT / ".envs" / "dist"
WHEELS = ROOT / ".envs" / "wheels"
HOW = "run `python3 dev.py test` (its release step builds .envs/dist and .envs/wheels)"


@dataclass(frozen=True)
class Distribution:
    """One distribution of the release, as its source tree declares it."""

    directory: str
    package: str

    @property
    def config(self) -> dict[str, Any]:
        """The distribution's pyproject.toml."""
        return tomllib.loads((ROOT / self.directory / "pyproject.toml").read_text())

    @property
    def name(self) -> str:
        return str(self.config["project"]["name"])

    @property
    def stem(self) -> str:
        """The archive file name's distribution part (``airflow_provider_keyless``)."""
        return self.name.replace("-", "_")

    def archive(self, suffix: str) -> Path:
        """The one built archive ending in ``suffix`` (``-py3-none-any.whl``, ``.tar.gz``)."""
        found = sorted(DIST.glob(f"{self.stem}-*{suffix}"))
        assert len(found) == 1, f"expected one {self.stem}-*{suffix} in {DIST}, found " \
                                f"{[p.name for p in found]}; {HOW}"
        return found[0]


DISTRIBUTIONS = [Distribution("core", "keyless"),
                 Distribution("airflow_provider", "keyless_airflow"),
                 Distribution("prefect_blocks", "prefect_keyless"),
                 Distribution("ray_runtime", "keyless_ray")]
BY_DIRECTORY = {d.directory: d for d in DISTRIBUTIONS}


def source_version(distribution: Distribution) -> str:
    """The ``__version__`` the package's source assigns (its one version source)."""
    init = ROOT / distribution.directory / "src" / distribution.package / "__init__.py"
    for line in init.read_text().splitlines():
        if line.startswith("__version__ = "):
            return line.split("=", 1)[1].strip().strip("\"'")
    raise AssertionError(f"{init} assigns no __version__")


def wheel_env(name: str) -> Path:
    """``.envs/wheels/NAME``'s interpreter."""
    python = WHEELS / name / "bin" / "python"
    assert python.exists(), f"no wheel environment {python.parent.parent}; {HOW}"
    return python


def run_in(name: str, argv: list[str], cwd: Path, extra_env: dict[str, str] | None = None,
           timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` (its first word a script of that environment's bin/, or ``python``) in the
    wheel environment ``name``, with a private HOME/TMPDIR under ``cwd`` and no AWS settings
    of this machine."""
    python = wheel_env(name)
    exe = str(python.with_name(argv[0]))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "VIRTUAL_ENV", "PYTHONPATH", "AIRFLOW_", "PREFECT_",
                                "RAY_"))}
    env.update({"HOME": str(cwd), "TMPDIR": str(cwd), "PATH": f"{python.parent}:{env['PATH']}",
                **(extra_env or {})})
    return subprocess.run([exe, *argv[1:]], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
