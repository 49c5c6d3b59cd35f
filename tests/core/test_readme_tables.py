"""README.md's table of sources and targets stays true to the config schema.

Every ``source.type`` of :func:`keyless.config_json_schema` (the discriminator of ``source``) and
every key of ``target`` has exactly one row in README.md's ``| kind | name | for |`` table, and
the table names nothing the schema does not have. Adding a source or a target without a README
row (or removing one and leaving its row) fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

from keyless import config_json_schema

README = Path(__file__).resolve().parents[2] / "README.md"
_ROW = re.compile(r"^\| (?P<kind>source|target) \| `(?P<name>[\w-]+)` \| (?P<what>.+?) \|\s*$",
                  re.MULTILINE)


def _schema_names() -> dict[str, set[str]]:
    schema = config_json_schema()
    sources = set(schema["properties"]["source"]["discriminator"]["mapping"])
    targets_ref = schema["properties"]["target"]["$ref"].rsplit("/", 1)[-1]
    targets = set(schema["$defs"][targets_ref]["properties"])
    return {"source": sources, "target": targets}


def _readme_rows() -> list[tuple[str, str, str]]:
    text = README.read_text(encoding="utf-8")
    return [(m["kind"], m["name"], m["what"]) for m in _ROW.finditer(text)]


def test_schema_has_sources_and_targets() -> None:
    names = _schema_names()
    assert {"file", "github_actions", "client_credentials"} <= names["source"]
    assert {"aws", "gcp", "azure", "databricks", "huggingface", "oauth2"} <= names["target"]


def test_readme_table_lists_every_source_and_target_once() -> None:
    rows = _readme_rows()
    for kind, wanted in _schema_names().items():
        listed = [name for k, name, _ in rows if k == kind]
        assert len(listed) == len(set(listed)), f"README.md: a {kind} row appears twice: {listed}"
        missing = sorted(wanted - set(listed))
        extra = sorted(set(listed) - wanted)
        assert not missing, (f"README.md's table misses {kind}(s) {missing}; fix: add a row "
                             f"`| {kind} | `NAME` | what it is for |`")
        assert not extra, f"README.md's table names {kind}(s) the schema lacks: {extra}"


def test_readme_rows_say_what_each_is_for() -> None:
    for kind, name, what in _readme_rows():
        assert len(what.split()) >= 4, f"README.md: the {kind} `{name}` row says too little"
