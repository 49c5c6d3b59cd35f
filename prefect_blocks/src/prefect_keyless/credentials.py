"""``KeylessCredentials``: the Prefect credentials block for keyless.

The block's fields are keyless's config schema (``source``, ``target``, ``refresh``,
``audit``, ``delivery``, ``allow_insecure_http``; see :mod:`prefect_keyless.fields`); secrets
are ``SecretStr`` so Prefect stores them as secret fields and shows ``**********``. Unknown
fields are refused, and every config check keyless makes runs when the block is built or
loaded and again at ``save()``: a bad block raises :class:`keyless.ConfigError` naming the field
at fault (``target.aws.role_arn``, ``source.type``) before anything reaches the API.

Credentials are built lazily, in the process that uses them, once per flow run/task run
(:mod:`prefect_keyless.runtime`), so each task's session name names its task run. The cache
is never pickled: a block sent to a process pool, Dask or Ray arrives with an empty cache and
builds its own credentials there; a forked child starts a new cache as well.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal
from uuid import UUID

from prefect.blocks.abstract import CredentialsBlock
from pydantic import ConfigDict, Field, HttpUrl, PrivateAttr, model_validator
from pydantic.json_schema import GenerateJsonSchema

from keyless import Keyless, KeylessConfig, WorkerContext
from keyless.config import AmbientSource, AuditSpec, DeliverySpec, RefreshSpec, TargetsSpec
from keyless.host import ProcessCache

from .clients import Clients
from .fields import (
    _PREFECT_KEYS,
    CONFIG_FIELDS,
    BlockSourceSpec,
    _plain,
    _validate,
    humanise_form,
    label_targets,
)
from .runtime import RunKey, current_run_key, prefect_worker_context

if TYPE_CHECKING:
    from prefect.client.schemas.objects import BlockDocument

__all__ = ["CONFIG_FIELDS", "KeylessCredentials"]  # CONFIG_FIELDS: see .fields

#: At most this many identities (flow run/task run pairs) are kept per process.
_MAX_IDENTITIES = 64
_CONFIG = "config"


class KeylessCredentials(Clients, CredentialsBlock):
    """Short-lived, per-task cloud identity through OIDC workload identity federation:
    no long-lived key is stored, copied or logged.

    The fields are keyless's config schema (``keyless schema``). In a flow::

        creds = KeylessCredentials.load("training")
        s3 = creds.get_s3_client()      # refreshed for as long as it lives

    Each task run gets its own credentials, named after it (``{job_id}`` = flow run name,
    ``{task_id}`` = task run name, ``{run_id}`` = flow run id in ``session_name``, tags and
    session policies).
    """

    model_config = ConfigDict(extra="forbid")

    _block_type_name: ClassVar[str | None] = "Keyless Credentials"
    _block_type_slug: ClassVar[str | None] = "keyless-credentials"
    _description: ClassVar[str | None] = (
        "Short-lived, per-task cloud identity (AWS, GCP, Azure, Databricks, Hugging Face, "
        "RFC 8693) through OIDC workload identity federation, refreshed for as long as a task "
        "runs. Stores no long-lived cloud key.")
    _documentation_url: ClassVar[HttpUrl | None] = HttpUrl(
        "https://pypi.org/project/prefect-keyless/")

    source: BlockSourceSpec = Field(
        default_factory=AmbientSource, title="Source",
        description="Where the OIDC token comes from (`type` picks the kind).")
    target: TargetsSpec = Field(
        title="Target", description="What the token is exchanged for (one or more).")
    refresh: RefreshSpec = Field(default_factory=RefreshSpec, title="Refresh",
                                 description="When tokens and credentials are refreshed.")
    audit: AuditSpec = Field(default_factory=AuditSpec, title="Audit",
                             description="Where audit events go.")
    delivery: DeliverySpec = Field(default_factory=DeliverySpec, title="Delivery",
                                   description="Token files for subprocesses (worker_env).")
    allow_insecure_http: bool = Field(
        default=False, description="Allow http:// URLs, and only to loopback addresses.")

    # this process's credentials, one per (flow run, task run); never pickled (keyless.host)
    _cache: ProcessCache[RunKey, Keyless] = PrivateAttr(
        default_factory=lambda: ProcessCache(_MAX_IDENTITIES))
    _config: ProcessCache[str, KeylessConfig] = PrivateAttr(
        default_factory=lambda: ProcessCache(1))

    @classmethod
    def model_json_schema(  # type: ignore[override]  # Block's own (narrower) signature
        cls,
        by_alias: bool = True,
        ref_template: str = "#/definitions/{model}",
        schema_generator: type[GenerateJsonSchema] = GenerateJsonSchema,
        mode: Literal["validation", "serialization"] = "validation",
    ) -> dict[str, Any]:
        """Prefect's block schema (what the server stores and the UI's form renders), with a
        label on each target (pydantic gives a field typed by a model no title of its own,
        so the form would call every target "Field") and the form made for a person
        (:func:`~prefect_keyless.fields.humanise_form`: no "str"/"None" tabs, source types by
        their ``type``, "Use AWS" / "Not used" on each target)."""
        schema = super().model_json_schema(by_alias, ref_template, schema_generator, mode)
        return humanise_form(label_targets(schema))

    # ------------------------------------------------------------------ validation
    @model_validator(mode="before")
    @classmethod
    def _check_config(cls, data: Any) -> Any:
        """Run keyless's own config checks on the incoming values; raise ConfigError naming
        the field at fault (not a ValueError, so pydantic lets it through unwrapped)."""
        if not isinstance(data, Mapping):
            return data
        values = {key: _plain(value) for key, value in data.items() if key not in _PREFECT_KEYS}
        if values.get("block_type_slug") == cls.get_block_type_slug():
            values.pop("block_type_slug")
        _validate(values)
        return values

    def keyless_config(self) -> KeylessConfig:
        """The block's fields as a validated :class:`~keyless.KeylessConfig` (cached in this
        process). Raises :class:`~keyless.ConfigError` naming the field at fault."""
        config, _ = self._config.get(_CONFIG, lambda: _validate(
            {name: _plain(getattr(self, name)) for name in CONFIG_FIELDS}))
        return config

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name in CONFIG_FIELDS:  # a changed field: rebuild config and credentials
            self._config.clear()
            self._cache.clear()

    def _to_block_document(
        self,
        name: str | None = None,
        block_schema_id: UUID | None = None,
        block_type_id: UUID | None = None,
        is_anonymous: bool | None = None,
        include_secrets: bool = False,
    ) -> BlockDocument:
        """Every ``save()`` goes through here: refuse a block that fails keyless's checks
        (changed after it was built, or built with ``model_construct``)."""
        self.keyless_config()
        return super()._to_block_document(
            name=name, block_schema_id=block_schema_id, block_type_id=block_type_id,
            is_anonymous=is_anonymous, include_secrets=include_secrets)

    # ------------------------------------------------------------------ identity
    def worker_context(self) -> WorkerContext:
        """This worker's context: flow run and task run (see :mod:`prefect_keyless.runtime`)."""
        return prefect_worker_context()

    def identity(self) -> Keyless:
        """The :class:`~keyless.Keyless` pipeline of the calling flow run/task run in this
        process: built on first use, then reused (tokens and credentials refresh inside)."""
        config = self.keyless_config()
        key = current_run_key()
        identity, built = self._cache.get(
            key, lambda: Keyless(config, context=self.worker_context()))
        if built:
            context = identity.context
            self.logger.info(
                "keyless: credentials for flow run %r, task run %r in process %s (%r)",
                context.job_id, context.task_id or None, context.pid, identity)
        return identity
