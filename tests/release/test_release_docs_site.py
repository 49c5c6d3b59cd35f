"""The documentation site builds with warnings as errors (issue 22): ``mkdocs build --strict``
over mkdocs.yml in .envs/docs (tests/requirements/docs.txt), as a user or a docs host runs it.
The site mirrors the repository (docs/mkdocs_hooks.py), so a broken relative link or anchor in
any page, a page missing from the nav or an unknown option fails the build."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from tests.release.release_artifacts import HOW, ROOT

MKDOCS = ROOT / ".envs" / "docs" / "bin" / "mkdocs"


def test_docs_site_builds_strict(tmp_path: Path) -> None:
    assert MKDOCS.exists(), f"no {MKDOCS}; {HOW}"
    site = tmp_path / "site"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["NO_MKDOCS_2_WARNING"] = "1"  # Material's banner about its end of life, not a warning
    done = subprocess.run([str(MKDOCS), "build", "--strict", "--config-file",
                           str(ROOT / "mkdocs.yml"), "--site-dir", str(site)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=180, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-5000:]
    assert not re.search(r"^(WARNING|ERROR)\b", output, re.MULTILINE), output[-5000:]
    assert "Documentation built" in output
    for page in ("index.html", "docs/security/index.html", "docs/compatibility/index.html",
                 "SECURITY/index.html", "CHANGELOG/index.html", "ray_runtime/index.html"):
        assert (site / page).is_file(), page
    clouds = (site / "docs" / "clouds" / "index.html").read_text(encoding="utf-8")
    assert 'href="../../examples/aws/spec.yaml"' in clouds  # a link to an example, rewritten
    assert (site / "examples" / "aws" / "spec.yaml").read_bytes() == \
        (ROOT / "examples" / "aws" / "spec.yaml").read_bytes()
