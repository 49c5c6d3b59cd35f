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
- its saved document carries its own ``block_type_slug`` (:func:`stamp_block_type_slug`):
  Prefect hydrates a referenced block's data into its parent without a slug, and
  ``S3Bucket``/``GcsBucket`` then build the *parent* class from it (plain ``AwsCredentials``
  on the ambient credential chain); with the slug they dispatch to the keyless block;
- nothing secret is in the block itself (the nested block's secrets are ``SecretStr``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from keyless import ConfigError

if TYPE_CHECKING:
    from prefect.client.schemas.objects import BlockDocument

__all__ = ["hide_fields", "refuse_static_fields", "stamp_block_type_slug"]

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
    """A block's incoming ``data`` with its own ``block_type_slug`` dropped; raises
    :class:`keyless.ConfigError` (field: the name) when one of ``fields`` is set."""
    if not isinstance(data, Mapping):
        return data
    values = dict(data)
    if values.get(_SLUG) == slug:
        values.pop(_SLUG)
    for name in fields:
        if _is_set(values.get(name)):
            raise ConfigError(
                f"prefect block {slug}: {name} is a static credential, which this block never "
                f"uses; fix: remove {name}: {fix}", field=name)
    return values


def hide_fields(schema: dict[str, Any], fields: Iterable[str]) -> dict[str, Any]:
    """Remove ``fields`` from a block's JSON ``schema`` (properties, required, secret fields):
    the UI form does not render them and ``save()`` does not store them."""
    hidden = set(fields)
    properties = schema.get("properties", {})
    for name in hidden:
        properties.pop(name, None)
    if "required" in schema:
        schema["required"] = [name for name in schema["required"] if name not in hidden]
    if "secret_fields" in schema:
        schema["secret_fields"] = [path for path in schema["secret_fields"]
                                   if path.split(".", 1)[0] not in hidden]
    return schema


def stamp_block_type_slug(document: BlockDocument, slug: str) -> BlockDocument:
    """``document`` (about to be saved) with ``block_type_slug`` in its data, so that a parent
    block that references it is built with this block's class (see the module docstring)."""
    document.data[_SLUG] = slug
    return document
