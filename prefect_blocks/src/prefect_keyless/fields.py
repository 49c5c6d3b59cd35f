"""The block's field types: keyless's config schema, made finite for Prefect.

The block's fields are the fields of :class:`keyless.KeylessConfig` with the same spec types,
with one difference: in the config schema a ``token_exchange`` source nests any source as its
``subject``/``actor``, including another ``token_exchange`` (a recursive type). Prefect walks a
block's field types to list its secret fields and recurses without a cycle guard, so a
recursive type cannot be a block field. Here a ``token_exchange`` source nests any source
*except* ``token_exchange``: one level of exchange, which covers subject + actor. A deeper
chain stays available through a keyless config file (``keyless --config``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import BaseModel, ConfigDict, Field

from keyless import ConfigError, KeylessConfig, load_config
from keyless.config import SOURCE_SPECS, TokenExchangeSource

__all__ = ["CONFIG_FIELDS", "LEAF_SPECS", "TARGET_TITLES", "BlockSourceSpec",
           "BlockTokenExchangeSource", "LeafSourceSpec", "humanise_form", "label_targets"]

#: keyless's source specs (its one list) less ``token_exchange``: what the block nests.
LEAF_SPECS: tuple[type[Any], ...] = tuple(s for s in SOURCE_SPECS if s is not TokenExchangeSource)

if TYPE_CHECKING:  # unions built from the list at run time; the checker sees them as Any
    LeafSourceSpec = Any
    ActorSpec = Any
else:
    #: Every source type except ``token_exchange`` (discriminated by ``type``).
    LeafSourceSpec = Annotated[Union[LEAF_SPECS], Field(discriminator="type")]
    # A flat Optional union, not ``LeafSourceSpec | None``: Prefect does not look inside an
    # ``Annotated`` nested in a union, and would miss the actor's secret fields.
    ActorSpec = Union[(*LEAF_SPECS, None)]


class BlockTokenExchangeSource(TokenExchangeSource):
    """RFC 8693: exchange the token of a nested ``subject`` source (and optional ``actor``);
    in the block, neither of them is itself a ``token_exchange``."""

    model_config = ConfigDict(title="TokenExchangeSource")

    subject: LeafSourceSpec
    actor: ActorSpec = Field(default=None, discriminator="type")


#: The block's ``source`` field: every source type, ``token_exchange`` one level deep.
if TYPE_CHECKING:
    BlockSourceSpec = Any
else:
    BlockSourceSpec = Annotated[Union[tuple(
        BlockTokenExchangeSource if spec is TokenExchangeSource else spec
        for spec in SOURCE_SPECS)], Field(discriminator="type")]


#: The label the block's form shows on each target of ``target`` (by field name).
TARGET_TITLES: dict[str, str] = {
    "aws": "AWS", "gcp": "GCP", "azure": "Azure", "databricks": "Databricks",
    "huggingface": "Hugging Face", "oauth2": "OAuth 2.0 token exchange (RFC 8693)"}


def label_targets(schema: dict[str, Any]) -> dict[str, Any]:
    """Give each property of the ``TargetsSpec`` definition in a block's JSON ``schema`` a
    title from :data:`TARGET_TITLES` (one it already has is kept); returns ``schema``."""
    definitions = schema.get("definitions") or schema.get("$defs") or {}
    properties = definitions.get("TargetsSpec", {}).get("properties", {})
    for name, title in TARGET_TITLES.items():
        if name in properties:
            properties[name].setdefault("title", title)
    return schema


_SCALARS = ("string", "integer", "number", "boolean")
#: The tab of a target left out (the null member of ``target.<cloud>``).
NOT_USED = "Not used"


def _plain_optional(prop: dict[str, Any]) -> dict[str, Any]:
    """``anyOf: [<one scalar>, null]`` as the scalar (the form's text box leaves an empty
    value out, so the field keeps its default None); any other property as is."""
    options = prop.get("anyOf")
    if not isinstance(options, list) or len(options) != 2:
        return prop
    scalars = [o for o in options if o.get("type") in _SCALARS and "$ref" not in o]
    if len(scalars) != 1 or {"type": "null"} not in options:
        return prop
    plain = {key: value for key, value in prop.items() if key != "anyOf"}
    return {**scalars[0], **plain}


def humanise_form(schema: dict[str, Any]) -> dict[str, Any]:
    """The block schema as Prefect's form should render it for a person; returns ``schema``.

    Prefect 3.9's form renders a union as a row of tabs labelled by each member's title
    (else its type: ``str``, ``None``). So: an optional scalar (``anyOf: [string, null]``)
    becomes the plain scalar (one text box, no "str"/"None" tabs; left empty it is left out
    and keeps its default); each source type's tab is labelled by its ``type`` value
    (``file``, ``client_credentials`` ...), the common ones first (:data:`FIRST_SOURCES`);
    each target's tabs read "Use AWS" / "Not used".
    Only the rendering changes: the block's values are validated by the Python model."""
    definitions = schema.get("definitions") or schema.get("$defs") or {}
    top = schema.get("properties", {})
    for name, prop in top.items():  # the block's own fields (KeylessAwsCredentials' region)
        top[name] = _plain_optional(prop)
    for definition in definitions.values():
        properties = definition.get("properties", {})
        for name, prop in properties.items():
            properties[name] = _plain_optional(prop)
        kind = properties.get("type", {}).get("const")
        if isinstance(kind, str) and definition.get("title", "").endswith("Source"):
            definition["title"] = kind
    targets = definitions.get("TargetsSpec", {}).get("properties", {})
    for name, prop in targets.items():
        for option in prop.get("anyOf", []):
            if option.get("type") == "null":
                option["title"] = NOT_USED
            elif "$ref" in option:
                ref = option["$ref"].rsplit("/", 1)[1]
                definitions[ref]["title"] = f"Use {TARGET_TITLES.get(name, name)}"
    _common_sources_first(schema.get("properties", {}).get("source", {}), definitions)
    return schema


#: The source tabs shown first, in this order (the rest follow in keyless's order): the
#: model's default first (a form left alone posts it), then the common ones. Prefect's tab
#: row does not wrap, so on a narrow window the last tabs sit under the block's card.
FIRST_SOURCES = ("ambient", "file", "client_credentials")


def _common_sources_first(prop: dict[str, Any], definitions: dict[str, Any]) -> None:
    """Reorder the members of the ``source`` union (``prop``) by :data:`FIRST_SOURCES`, and
    make each member's fresh value tell it apart where its required boxes can.

    Prefect 3.9's form decides which tab a union's value belongs to by the names of the
    value's keys: the first member whose properties hold most of them. A freshly chosen tab's
    value holds ``type`` and the member's defaults, so ``file`` (``{type}``) would be taken
    for ``ambient`` and its Path box never shown. A member whose fresh keys an earlier member
    also has gets its required text boxes preset empty (``path``: ``""``), which only it has.
    Members with no required box and the same field names as an earlier one (``github_actions``
    as ``ambient``, ``gitlab`` as ``env``) keep their own ``type`` but show the earlier tab."""
    members = prop.get("oneOf") or prop.get("anyOf") or []

    def definition(member: dict[str, Any]) -> dict[str, Any]:
        found: dict[str, Any] = definitions.get(
            str(member.get("$ref", "")).rsplit("/", 1)[-1], {})
        return found

    def rank(member: dict[str, Any]) -> int:
        kind = definition(member).get("properties", {}).get("type", {}).get("const")
        return FIRST_SOURCES.index(kind) if kind in FIRST_SOURCES else len(FIRST_SOURCES)

    members.sort(key=rank)
    earlier: list[set[str]] = []
    for member in members:
        spec = definition(member)
        properties = spec.get("properties", {})
        fresh = {name for name, field in properties.items() if field.get("default") is not None}
        if any(fresh <= names for names in earlier):
            for name in spec.get("required", []):
                field = properties.get(name, {})
                if field.get("type") == "string" and "default" not in field:
                    field["default"] = ""
        earlier.append(set(properties))


#: The block fields that make up the keyless config (everything the block stores).
CONFIG_FIELDS: tuple[str, ...] = ("source", "target", "refresh", "audit", "delivery",
                                  "allow_insecure_http")
#: Keys Prefect adds to a block's serialized data; they are not config fields.
_PREFECT_KEYS = ("_block_document_id", "_block_document_name", "_is_anonymous")


def _plain(value: Any) -> Any:
    """A spec model as a mapping (secrets stay ``SecretStr``), anything else as is."""
    return value.model_dump() if isinstance(value, BaseModel) else value


def _validate(values: Mapping[str, Any]) -> KeylessConfig:
    """keyless's checks, plus the block's one limit (token_exchange one level deep)."""
    config = load_config(values)
    source = config.source
    if source.type == "token_exchange":
        for role in ("subject", "actor"):
            nested = getattr(source, role)
            if nested is not None and nested.type == "token_exchange":
                raise ConfigError(
                    f"config: source.{role}.type: a token_exchange inside a token_exchange is "
                    "not offered by the Prefect block; fix: give the inner token's source "
                    "directly, or use a keyless config file", field=f"source.{role}.type")
    return config
