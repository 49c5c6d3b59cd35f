"""The documentation site mirrors the repository (a mkdocs hook, named in ``mkdocs.yml``).

The pages link to each other and to the examples by their paths in the repository
(``docs/clouds.md`` -> ``../examples/aws/spec.yaml``), as GitHub renders them. So the site's
files are the repository's own, at their repository paths: README.md (the home page),
SECURITY.md, CHANGELOG.md, LICENSE, mkdocs.yml, docs/, examples/ and each distribution's
README.md. Every relative link then resolves on the site exactly as in the repository, and
``mkdocs build --strict`` fails on one that does not.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
FILES = ["README.md", "SECURITY.md", "CHANGELOG.md", "LICENSE", "mkdocs.yml", "core/README.md",
         "airflow_provider/README.md", "prefect_blocks/README.md", "ray_runtime/README.md"]
#: folders published whole (docs/: its Markdown only; the Python beside it builds the site)
FOLDERS = {"docs": ("*.md",), "examples": ("*",)}
SKIPPED = {"__pycache__", ".pytest_cache", "node_modules"}


def site_sources() -> list[str]:
    """The repository paths the site is built from."""
    found = [name for name in FILES if (ROOT / name).is_file()]
    for folder, patterns in FOLDERS.items():
        for pattern in patterns:
            found += [path.relative_to(ROOT).as_posix() for path in (ROOT / folder).rglob(pattern)
                      if path.is_file() and not SKIPPED & set(path.parts)]
    return sorted(set(found))


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Replace the docs_dir listing by the repository's files at their repository paths."""
    return Files([File.generated(config, path, abs_src_path=str(ROOT / path))
                  for path in site_sources()])
