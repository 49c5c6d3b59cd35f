"""The core's layout is its architecture (issue 17): packages by pipeline stage, no import
circle, at most about ten top-level modules, small modules, and every module path of the
previous release still importing (as the same module object) for one release."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import keyless

PACKAGE = Path(keyless.__file__).parent
STAGES = {"config", "sources", "targets", "refresher", "delivery", "audit", "verify", "host",
          "cli", "dev", "testing"}


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(p): p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}


def _imports(name: str, path: Path) -> set[str]:
    """The keyless modules ``name`` imports, at any depth (lazy imports too), outside
    ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(path.read_text())
    typing_only = {id(sub) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and "TYPE_CHECKING" in ast.unparse(node.test) for sub in ast.walk(node)}
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only or not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif node.level:
            base = ".".join([*package[:len(package) - node.level + 1],
                             *([node.module] if node.module else [])])
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            base = node.module or ""
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        found |= {t for t in targets if t in MODULES and t not in (name, "keyless")}
    return found


def test_no_import_circle() -> None:
    graph = {name: _imports(name, path) for name, path in MODULES.items()}
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                pytest.fail("import circle: " + " -> ".join([*trail[trail.index(nxt):], nxt])
                            if nxt in trail else f"import circle through {nxt}")
            if nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_top_level_is_the_shared_modules_and_the_stage_packages() -> None:
    modules = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__",
                                                                               "__main__"))
    assert len(modules) <= 10, modules
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert packages == STAGES


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_stay_small(name: str) -> None:
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= 420, f"{name} has {lines} lines: split it by what it does"


@pytest.mark.parametrize(("old", "new"), sorted(keyless.MOVED.items()))
def test_old_module_paths_still_import_as_the_same_module(old: str, new: str) -> None:
    assert importlib.import_module(old) is importlib.import_module(new)


def test_the_public_api_imports() -> None:
    for name in keyless.__all__:
        assert getattr(keyless, name) is not None


HOSTS = Path(__file__).resolve().parents[2]
HOST_MODULES = sorted(p for folder in ("airflow_provider", "prefect_blocks", "ray_runtime")
                      for p in (HOSTS / folder / "src").rglob("*.py"))


@pytest.mark.parametrize("path", HOST_MODULES, ids=[p.name for p in HOST_MODULES])
def test_host_modules_only_translate(path: Path) -> None:
    """A host module translates host config and context into keyless's: small, or it is
    doing core work (which belongs in keyless.host or the core)."""
    lines = len(path.read_text().splitlines())
    assert lines < 200, f"{path.relative_to(HOSTS)} has {lines} lines"
