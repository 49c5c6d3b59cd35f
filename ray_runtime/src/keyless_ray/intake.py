"""What the node agent takes in and hands on: a ``runtime_env["keyless"]`` value validated
(the keyless config schema, minus inline secrets: Ray writes runtime envs in plaintext to the
agent's log and the dashboard, so a secret there is refused with a
:class:`~keyless.ConfigError` naming the field, its value never echoed), a stable id per config
(the sha256 prefix of its canonical JSON, which holds no secret) and the manifest a worker
builds its own identity from."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from keyless import (
    ConfigError,
    ExchangeFailed,
    Keyless,
    KeylessConfig,
    SourceUnavailable,
    load_config,
)
from keyless.host import secret_fields, secret_paths

from .names import PLUGIN_NAME

__all__ = ["MANIFEST_NAME", "SECRET_FIELDS", "config_id", "is_transient",
           "parse_runtime_env_value", "worker_manifest"]

#: Config fields that hold a secret (the schema's ``secret`` flag): refused inline in a runtime env.
SECRET_FIELDS = tuple(sorted(secret_fields()))
MANIFEST_NAME = "worker-manifest.json"


def parse_runtime_env_value(value: Any) -> KeylessConfig:
    """Validate a ``runtime_env["keyless"]`` value; raises ConfigError naming the field."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"ray-keyless: runtime_env['{PLUGIN_NAME}'] must be a mapping (the "
                          f"keyless config: source, target, ...), got {type(value).__name__}; "
                          "fix: see `keyless schema`")
    secrets = secret_paths(value)
    if secrets:
        raise ConfigError(
            f"ray-keyless: {secrets[0]}: a secret inline in a runtime env is refused: Ray writes "
            "runtime envs in plaintext to the runtime-env agent's log and the dashboard; fix: "
            "use a source with no secret on the cluster (`file` with a projected "
            "service-account token, or `command` running `python -m keyless token --config "
            "FILE --raw` with FILE private to the node), and rotate that secret",
            field=secrets[0])
    try:
        return load_config(dict(value))
    except ConfigError as exc:
        raise ConfigError(f"ray-keyless: runtime_env['{PLUGIN_NAME}']: {exc.message}",
                          field=exc.field) from None


def config_id(config: KeylessConfig) -> str:
    """A stable id for a validated config: 16 hex chars of sha256 over its canonical JSON."""
    document = json.dumps(config.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(document.encode()).hexdigest()[:16]


def is_transient(error: BaseException) -> bool:
    """True for errors a later attempt may cure (IdP down, throttling, timeouts)."""
    return isinstance(error, SourceUnavailable) or (
        isinstance(error, ExchangeFailed) and error.retryable)


def _target_audiences(identity: Keyless) -> dict[str, str]:
    """Target name -> the audience of its subject tokens (keyless's one rule for all)."""
    return {name: identity.target_audience(name) for name in identity.config.target.configured()}


def worker_manifest(identity: Keyless, ident: str, files: Mapping[str, Path]) -> dict[str, Any]:
    """What a worker needs to build its own identity: the config without its source (so no
    secret), the token file of each audience and of each target that has one."""
    audiences = {audience: str(path) for audience, path in files.items()}
    targets = {name: audiences[aud] for name, aud in _target_audiences(identity).items()
               if aud in audiences}
    default = identity.resolve_audience()
    return {"version": 1, "id": ident,
            "config": identity.config.model_dump(mode="json", exclude={"source"}),
            "audiences": audiences, "targets": targets,
            "default_file": audiences.get(default, next(iter(audiences.values()), ""))}
