"""The JSON schema Ray validates ``runtime_env["keyless"]`` with at submit time.

Ray loads it from ``RAY_RUNTIME_ENV_PLUGIN_SCHEMAS`` (files or directories of ``*.json``)
and matches a schema to a runtime-env key by its ``title`` (Ray 2.60 applies it when the key
is set on a ``RuntimeEnv`` with ``.set()`` or ``[...] =``; a plain dict is checked by the
plugin on the node instead): so this is
:func:`keyless.config_json_schema` titled ``keyless``. Write it with::

    python -m keyless_ray.schema /etc/ray/schemas/keyless.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from keyless import config_json_schema

from .names import PLUGIN_NAME

__all__ = ["SCHEMA_FILE_NAME", "main", "ray_schema", "write_schema"]

SCHEMA_FILE_NAME = f"{PLUGIN_NAME}.json"


def ray_schema() -> dict[str, Any]:
    """The keyless config schema, titled for Ray's schema manager."""
    schema = config_json_schema()
    schema["title"] = PLUGIN_NAME
    return schema


def write_schema(path: str | Path) -> Path:
    """Write :func:`ray_schema` to ``path`` (a directory gets ``keyless.json``)."""
    target = Path(path)
    if target.is_dir():
        target = target / SCHEMA_FILE_NAME
    target.write_text(json.dumps(ray_schema(), indent=2, sort_keys=True) + "\n",
                      encoding="utf-8")
    return target


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m keyless_ray.schema PATH (a .json file or a directory)",
              file=sys.stderr)
        return 2
    print(write_schema(args[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
