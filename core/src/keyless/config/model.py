"""The whole configuration (:class:`KeylessConfig`: source, targets, refresh, audit,
delivery), :func:`load_config` (a mapping, JSON/YAML text or a file; a
:class:`~keyless.errors.ConfigError` naming the field path and what is allowed) and
:func:`config_json_schema`."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import pydantic
from pydantic import Field, model_validator

from ..errors import ConfigError
from .base import _check_strings, _FieldProblem, _Spec, pseudo_filesystem
from .sources import SOURCE_TYPES, AmbientSource, SourceSpec
from .targets import _AUDIENCE_FIELD, TargetsSpec

__all__ = ["AuditSpec", "DeliverySpec", "KeylessConfig", "RefreshSpec", "config_json_schema",
           "load_config"]


# ----------------------------------------------------------------------------- the rest

class RefreshSpec(_Spec):
    """When and how tokens and credentials are refreshed."""

    at_fraction: float = Field(default=0.5, gt=0.0, lt=1.0,
                               description="Refresh after this fraction of the lifetime.")
    jitter_fraction: float = Field(default=0.1, ge=0.0, le=0.5,
                                   description="± this fraction of the lifetime, at random.")
    max_backoff_seconds: float = Field(default=60.0, gt=0.0, le=3600.0)
    initial_backoff_seconds: float = Field(default=1.0, gt=0.0, le=600.0)
    first_refresh_spread: float = Field(
        default=0.25, ge=0.0, le=0.5,
        description="The first refresh (no previous value) is drawn from at_fraction ± this "
                    "fraction of the lifetime, so a fleet that started together spreads out "
                    "(not with jitter_fraction 0: a deterministic schedule).")
    keep_phase: bool = Field(
        default=False,
        description="Refresh every value after the first at exactly at_fraction of its "
                    "lifetime, so each refresher keeps the random phase its first value drew "
                    "(jitter_fraction then only widens that first window); the first value "
                    "after a failed refresh draws a new phase, so a fleet that recovered from "
                    "an outage together spreads out again. The lowest peak load for a large "
                    "fleet with equal lifetimes (see benchmarks/ 3).")


def _default_sinks() -> list[Literal["log", "jsonl", "mlflow", "otel"]]:
    return ["log"]


class AuditSpec(_Spec):
    """Where audit events go."""

    sinks: list[Literal["log", "jsonl", "mlflow", "otel"]] = Field(
        default_factory=lambda: _default_sinks(),
        description="log: JSON lines on the keyless.audit logger; jsonl: a file; mlflow: tags "
                    "and an identity-timeline artifact on an MLflow run (keyless[mlflow]); otel: "
                    "span events and metrics through OpenTelemetry (keyless[otel]).")
    jsonl_path: str | None = None
    jsonl_max_bytes: int | None = Field(
        default=None, ge=1024, description="Rotate the jsonl file past this size (FILE.1 ...).")
    jsonl_backups: int = Field(default=5, ge=1, le=100,
                               description="How many rotated jsonl files to keep.")
    mlflow_run_id: str | None = Field(
        default=None, description="The MLflow run to write to (default: MLFLOW_RUN_ID, else "
                                  "the active run).")
    mlflow_tracking_uri: str | None = Field(
        default=None, description="MLflow tracking URI (default: MLflow's own resolution, "
                                  "MLFLOW_TRACKING_URI).")

    @model_validator(mode="after")
    def _jsonl_needs_path(self) -> AuditSpec:
        if "jsonl" in self.sinks and not self.jsonl_path:
            raise _FieldProblem("jsonl_path", "the jsonl sink needs jsonl_path; "
                                "fix: set audit.jsonl_path to a file path")
        return self


class DeliverySpec(_Spec):
    """Token files and loopback endpoints for unmodified code and subprocesses."""

    token_dir: str | None = Field(
        default=None, description="0700 directory for token files (default: a private temp dir).")
    azure: Literal["endpoint", "token_file"] = Field(
        default="endpoint",
        description="How a child (keyless exec, worker_env(), a Ray worker) gets target.azure. "
                    "endpoint: a loopback managed-identity endpoint (IDENTITY_ENDPOINT, "
                    "IDENTITY_HEADER) that exchanges fresh subject tokens itself, at any "
                    "lifetime. token_file: AZURE_FEDERATED_TOKEN_FILE, which azure-identity "
                    "re-reads only every 600 s: subject tokens living less than 10 minutes "
                    "then fail with AADSTS700024.")

    @model_validator(mode="after")
    def _token_dir_on_a_real_filesystem(self) -> DeliverySpec:
        root = pseudo_filesystem(self.token_dir) if self.token_dir else None
        if root is not None:
            raise _FieldProblem("token_dir", f"is under {root}, a kernel pseudo-filesystem; fix: "
                                "choose a directory on a real filesystem (e.g. under /tmp or "
                                "$XDG_RUNTIME_DIR), or leave it out for a private temp dir")
        return self


class KeylessConfig(_Spec):
    """The whole keyless configuration."""

    source: SourceSpec = Field(default_factory=AmbientSource)
    target: TargetsSpec
    refresh: RefreshSpec = Field(default_factory=RefreshSpec)
    audit: AuditSpec = Field(default_factory=AuditSpec)
    delivery: DeliverySpec = Field(default_factory=DeliverySpec)
    allow_insecure_http: bool = Field(
        default=False, description="Allow http:// URLs, and only to loopback addresses.")

    @model_validator(mode="after")
    def _check_strings(self) -> KeylessConfig:
        """Every string: no NUL byte, no user-info in a URL, URL and host fields well formed
        (:func:`~keyless.config.base._check_strings`)."""
        _check_strings(self, self.allow_insecure_http)
        return self

    @model_validator(mode="after")
    def _check_audiences(self) -> KeylessConfig:
        """``source.audience`` is requested for every target that does not set its own; it
        cannot serve two such targets that need different audiences."""
        if not self.source.audience:
            return self
        defaults = {name: spec.token_audience()[0]
                    for name, spec in self.target.configured().items()
                    if not spec.token_audience()[1]}
        if len(set(defaults.values())) > 1:
            needs = ", ".join(f"target.{name} needs {aud!r}" for name, aud in defaults.items())
            fields = " and ".join(f"target.{name}.{_AUDIENCE_FIELD[name]}" for name in defaults)
            raise _FieldProblem("source.audience", (
                f"{self.source.audience!r} would be requested for every target, but {needs}; "
                f"fix: remove source.audience, or set {fields} (each target then gets a token "
                "for its own audience)"))
        return self



# ----------------------------------------------------------------------------- loading

def _locate(error: Mapping[str, Any]) -> tuple[str, str]:
    """The dotted field path and the problem of one pydantic error."""
    parts = [str(part) for part in error.get("loc", ()) if not _is_union_tag(part)]
    msg = str(error.get("msg", "invalid"))
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, _FieldProblem):
        parts.append(cause.path)
        msg = cause.problem
    elif error.get("type") == "value_error":
        msg = msg.removeprefix("Value error, ")
    if error.get("type") == "extra_forbidden":
        msg = "unknown field; remove it or check its spelling against `keyless schema`"
    elif error.get("type") == "union_tag_invalid":
        parts.append("type")
        msg = "unknown source type; allowed: " + ", ".join(SOURCE_TYPES)
    elif error.get("type") == "union_tag_not_found":
        parts.append("type")
        msg = "missing; fix: give `type`, one of " + ", ".join(SOURCE_TYPES)
    elif error.get("type") == "missing":
        msg = "missing; fix: add it (`keyless schema` describes every field)"
    elif error.get("type") != "value_error" and "fix" not in msg:  # pydantic's own words
        msg += "; fix: set it as `keyless schema` describes"
    return ".".join(parts), msg


def _describe(error: Mapping[str, Any]) -> str:
    loc, msg = _locate(error)
    return f"{loc or '(top level)'}: {msg}"


def _is_union_tag(part: object) -> bool:
    return isinstance(part, str) and (part in SOURCE_TYPES or part.startswith("function-"))





def _validation_error(exc: pydantic.ValidationError) -> ConfigError:
    errors = exc.errors(include_input=False, include_url=False)
    lines = [_describe(e) for e in errors]
    field = (_locate(errors[0])[0] or None) if errors else None
    return ConfigError("config: " + "; ".join(lines), field=field)


def load_config(value: KeylessConfig | Mapping[str, Any] | str | Path) -> KeylessConfig:
    """Validate a config from a model, a mapping, a JSON/YAML document or a file path.

    A ``str`` that names an existing file is read as a file; any other ``str`` is parsed as
    JSON or YAML. Raises :class:`ConfigError` naming the field path at fault.
    """
    if isinstance(value, KeylessConfig):
        return value
    if isinstance(value, Path) or (isinstance(value, str) and _looks_like_path(value)):
        value = _read_file(Path(value))
    if isinstance(value, str):
        value = _parse_document(value)
    if not isinstance(value, Mapping):
        raise ConfigError("config: the document must be a mapping with `source` and `target`")
    try:
        return KeylessConfig.model_validate(dict(value))
    except pydantic.ValidationError as exc:
        raise _validation_error(exc) from None
    except ValueError as exc:  # a validator raising outside pydantic's wrapping
        raise ConfigError(f"config: {exc}") from None
    except RecursionError:
        raise ConfigError("config: the document is nested too deeply; fix: flatten it") from None


def _looks_like_path(text: str) -> bool:
    """Whether a ``str`` given to :func:`load_config` is a file path rather than a document:
    one line naming an existing file or directory, a ``.yaml``/``.yml``/``.json`` name, or
    holding a NUL byte (never in a document; reading it says so)."""
    if "\n" in text or text.lstrip().startswith(("{", "[")) or len(text) > 4096:
        return False
    if "\x00" in text or text.strip().lower().endswith((".yaml", ".yml", ".json")):
        return True  # a file name, even a missing one: reading it names the file
    try:
        return Path(text).exists()
    except (OSError, ValueError):
        return False


def _read_file(path: Path) -> str:
    """The text of the config file at ``path``; a :class:`ConfigError` naming the path and
    the fix for a NUL byte in it, a directory, a missing or unreadable file."""
    shown = repr(str(path))
    if "\x00" in str(path):
        raise ConfigError(f"config: the path {shown} contains a NUL byte; fix: pass the config "
                          "file's path without it")
    try:
        if path.is_dir():
            raise IsADirectoryError
        return path.read_text(encoding="utf-8")
    except IsADirectoryError:
        raise ConfigError(f"config: cannot read {shown}: it is a directory; fix: pass the "
                          "YAML or JSON file inside it (e.g. keyless.yaml)") from None
    except FileNotFoundError:
        raise ConfigError(f"config: cannot read {shown}: it does not exist; fix: pass the path "
                          "of a YAML or JSON config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config: cannot read {shown}: {exc.__class__.__name__}; "
                          "fix: pass a readable YAML or JSON file") from None


class _DuplicateKey(ValueError):
    def __init__(self, key: object) -> None:
        super().__init__(f"duplicate key {key!r}")
        self.key = key


def _unique_pairs(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    """A JSON object or YAML mapping that names no key twice (the last would win unseen)."""
    found: dict[Any, Any] = {}
    for key, value in pairs:
        if key in found:
            raise _DuplicateKey(key)
        found[key] = value
    return found


def _yaml_loader() -> Any:
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
            self.flatten_mapping(node)
            return _unique_pairs([(self.construct_object(k, deep=deep),
                                   self.construct_object(v, deep=deep))
                                  for k, v in node.value])

    UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                                    UniqueKeyLoader.construct_mapping)
    return UniqueKeyLoader


def _parse_document(text: str) -> Any:
    import yaml

    try:
        try:
            return json.loads(text, object_pairs_hook=_unique_pairs)
        except _DuplicateKey:
            raise
        except (ValueError, RecursionError):  # ValueError: also ints over the digit limit
            pass
        try:
            return yaml.load(text, Loader=_yaml_loader())  # noqa: S506 - a SafeLoader
        except (yaml.YAMLError, RecursionError, ValueError) as exc:
            if isinstance(exc, _DuplicateKey):
                raise
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"config: not valid YAML or JSON{where}; fix the document's "
                              "syntax") from None
    except _DuplicateKey as exc:
        raise ConfigError(f"config: the key {str(exc.key)!r} is given twice in one mapping "
                          "(the last would silently win); fix: keep one", field=str(exc.key)) \
            from None


def config_json_schema() -> dict[str, Any]:
    """The JSON schema every host uses (Airflow conn-fields, Ray, Prefect, `keyless schema`)."""
    return KeylessConfig.model_json_schema()
