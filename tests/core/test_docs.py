"""The documentation stays true: README.md and docs/ are checked against the code.

1. ``docs/reference/config.md`` equals what ``docs/generate_config_reference.py`` renders from
   ``keyless.config_json_schema()`` (stale: run ``python docs/generate_config_reference.py``);
2. every ``sh`` fenced command line that is ``keyless schema``, ``keyless --help`` or
   ``keyless <cmd> --help`` runs with exit status 0 (so documented commands exist);
3. every ``yaml`` fenced block with top-level ``source:`` and ``target:`` loads with
   :func:`keyless.load_config` (documented configs are valid);
4. every relative link in README.md and docs/ points to a file that exists, and a ``#anchor``
   into a Markdown page names one of its headings.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from keyless import load_config

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = sorted([ROOT / "README.md", *DOCS.glob("**/*.md")])
KEYLESS = str(Path(sys.executable).with_name("keyless"))

_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```",
                    re.MULTILINE | re.DOTALL)
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\((?P<target>[^)\s]+)\)")


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate_config_reference",
                                                  DOCS / "generate_config_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _blocks(lang: str) -> list[tuple[str, str]]:
    """(where, dedented body) of every fenced block of ``lang`` in README.md and docs/."""
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for match in _FENCE.finditer(text):
            if match["lang"] == lang:
                line = text.count("\n", 0, match.start()) + 1
                found.append((f"{page.relative_to(ROOT)}:{line}",
                              textwrap.dedent(match["body"])))
    return found


def _command_lines(body: str) -> list[str]:
    return [line for line in body.replace("\\\n", " ").splitlines() if line.strip()]


def _runnable(line: str) -> list[str] | None:
    """The argv of a ``keyless schema`` / ``keyless --help`` / ``keyless CMD --help`` line."""
    try:
        argv = shlex.split(line, comments=True)
    except ValueError:
        return None
    if argv in (["keyless", "schema"], ["keyless", "--help"]):
        return argv
    if len(argv) == 3 and argv[0] == "keyless" and argv[2] == "--help":
        return argv
    return None


COMMANDS = [(where, argv) for where, body in _blocks("sh") for line in _command_lines(body)
            if (argv := _runnable(line)) is not None]
CONFIGS = [(where, body) for where, body in _blocks("yaml")
           if isinstance(doc := yaml.safe_load(body), dict) and "source" in doc and "target" in doc]


def test_config_reference_is_current() -> None:
    generated = _generator().render()
    written = (DOCS / "reference" / "config.md").read_text(encoding="utf-8")
    assert generated == written, ("docs/reference/config.md is stale; fix: run "
                                  "`python docs/generate_config_reference.py`")


def test_config_reference_is_deterministic_and_complete() -> None:
    generator = _generator()
    page = generator.render()
    assert page == generator.render()
    for heading in ("### source: file", "### source: client_credentials", "### target: aws",
                    "### target: gcp", "### target: azure", "### target: databricks",
                    "### target: huggingface", "### target: oauth2", "## refresh", "## audit"):
        assert heading in page.splitlines(), heading
    secret_rows = [row for row in page.splitlines() if "**secret**" in row and row.startswith("|")]
    assert sorted({row.split("`")[1] for row in secret_rows}) == ["client_secret", "private_key"]


def test_docs_have_commands_and_configs_to_check() -> None:
    assert len(COMMANDS) >= 3, COMMANDS
    assert len(CONFIGS) >= 8, [where for where, _ in CONFIGS]


@pytest.mark.parametrize(("where", "argv"), COMMANDS, ids=[w for w, _ in COMMANDS])
def test_documented_command_runs(where: str, argv: list[str]) -> None:
    done = subprocess.run([KEYLESS, *argv[1:]], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, f"{where}: `{' '.join(argv)}` exited {done.returncode}: " \
                                 f"{done.stderr[-2000:]}"
    assert done.stdout.strip(), f"{where}: `{' '.join(argv)}` printed nothing"


@pytest.mark.parametrize(("where", "body"), CONFIGS, ids=[w for w, _ in CONFIGS])
def test_documented_config_loads(where: str, body: str) -> None:
    load_config(yaml.safe_load(body))


def _slug(heading: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = _FENCE.sub("", page.read_text(encoding="utf-8"))
    return {_slug(m[1]) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", text, re.MULTILINE)}


def _links() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        text = _FENCE.sub("", page.read_text(encoding="utf-8"))
        for match in _LINK.finditer(text):
            target = match["target"]
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
                continue
            found.append((str(page.relative_to(ROOT)), target))
    return found


LINKS = _links()


def test_docs_have_links_to_check() -> None:
    assert len(LINKS) >= 10, LINKS


@pytest.mark.parametrize(("page", "target"), LINKS, ids=[f"{p}->{t}" for p, t in LINKS])
def test_relative_link_resolves(page: str, target: str) -> None:
    path, _, anchor = target.partition("#")
    destination = (ROOT / page).parent / path if path else ROOT / page
    assert destination.exists(), f"{page}: link {target!r}: {destination} does not exist"
    if anchor and destination.suffix == ".md":
        assert anchor in _anchors(destination), \
            f"{page}: link {target!r}: no heading with anchor #{anchor} in {path or page}"
