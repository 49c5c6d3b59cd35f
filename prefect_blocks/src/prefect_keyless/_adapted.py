"""What the keyless blocks that stand in for another collection's credentials block share
(:class:`~prefect_keyless.aws.KeylessAwsCredentials` for ``AwsCredentials``,
:class:`~prefect_keyless.gcp.KeylessGcpCredentials` for ``GcpCredentials``).

Such a block subclasses the collection's block, so it fits every field typed by it
(``S3Bucket.credentials``, ``GcsBucket.gcp_credentials``), and holds a ``keyless`` field: a
:class:`~prefect_keyless.KeylessCredentials` block (a reference to a saved one, or inline),
which owns the config and the per-process, per-run identity cache. Three things make it safe:

- the parent's static-credential fields (keys, key files, profiles) are refused when set
  (:func:`refuse_static_fields`: a :class:`keyless.ConfigError` naming the field) and hidden
  from the block's schema, so the UI form and the saved document never show them;
- its saved data carries its own ``block_type_slug``, as a field of the block
  (:func:`block_type_field`): Prefect hydrates a referenced block's data into its parent, and
  ``S3Bucket``/``GcsBucket`` build the class the data's ``block_type_slug`` names, else the
  *parent* class (plain ``AwsCredentials``/``GcpCredentials``, which would run on the ambient
  credential chain). Being a field of the block's schema, it is in what ``save()`` stores and
  in what Prefect's UI form posts (a required one-value choice, preset: the form fills a
  property's ``default`` and posts it), so a block made in the UI dispatches as well. Data
  written to the API by hand must carry it too (``"block_type_slug": "<slug>"``);
- nothing secret is in the block itself (the nested block's secrets are ``SecretStr``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, Field

from keyless import ConfigError

from .fields import humanise_form

__all__ = ["block_type_field", "form_schema", "refuse_static_fields"]

_SLUG = "block_type_slug"


def _is_set(value: Any) -> bool:
    """Whether a field holds anything (a model or mapping of ``None`` s counts as unset: the
    parent's nested parameter models serialize that way)."""
    if isinstance(value, BaseModel):
        value = value.model_dump()
    if isinstance(value, Mapping):
        return any(_is_set(item) for item in value.values())
    return value is not None and value != ""


def refuse_static_fields(data: Any, *, slug: str, fields: Iterable[str], fix: str) -> Any:
    """A block's incoming ``data``, unchanged; raises :class:`keyless.ConfigError` (field: the
    name) when one of ``fields`` is set."""
    if not isinstance(data, Mapping):
        return data
    values = dict(data)
    for name in fields:
        if _is_set(values.get(name)):
            raise ConfigError(
                f"prefect block {slug}: {name} is a static credential, which this block never "
                f"uses; fix: remove {name}: {fix}", field=name)
    return values


def block_type_field(slug: str) -> Any:
    """The ``block_type_slug`` field of a block whose type is ``slug`` (declare it
    ``Literal[slug]``): preset to ``slug``, a one-value choice in the UI form."""
    return Field(
        default=slug, title="Block Type", json_schema_extra={"enum": [slug]},
        description=(
            "Keeps this block keyless where another block (S3Bucket, GcsBucket, result "
            "storage) uses it: Prefect builds a referenced block by its saved type. Leave "
            "it as it is."))


def form_schema(schema: dict[str, Any], hidden: Iterable[str]) -> dict[str, Any]:
    """A block's JSON ``schema`` with ``hidden`` fields removed (properties, required, secret
    fields: the UI form does not render them and ``save()`` does not store them),
    ``block_type_slug`` required (the form posts it; left out, the form refuses to save), and
    optional scalars as plain boxes (:func:`~prefect_keyless.fields.humanise_form`)."""
    gone = set(hidden)
    properties = schema.get("properties", {})
    for name in gone:
        properties.pop(name, None)
    required = [name for name in schema.get("required", []) if name not in gone]
    if _SLUG in properties and _SLUG not in required:
        required.append(_SLUG)
    schema["required"] = required
    if "secret_fields" in schema:
        schema["secret_fields"] = [path for path in schema["secret_fields"]
                                   if path.split(".", 1)[0] not in gone]
    return humanise_form(schema)
