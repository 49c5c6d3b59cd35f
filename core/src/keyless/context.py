"""Who this worker is: the context that per-worker templates are filled from.

Templates use ``str.format`` placeholders over :data:`TEMPLATE_FIELDS`; an unknown placeholder
is a config error, an unknown value renders as an empty string.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import string
from collections.abc import Iterator, Mapping
from typing import Any

from .errors import ConfigError

__all__ = [
    "TEMPLATE_FIELDS",
    "WorkerContext",
    "check_json_template",
    "check_template",
    "render_json_template",
    "render_template",
    "sanitize_session_name",
]

TEMPLATE_FIELDS: tuple[str, ...] = (
    "job_id", "task_id", "run_id", "rank", "local_rank", "node", "pid", "host",
)


@dataclasses.dataclass(frozen=True)
class WorkerContext:
    """The worker's identity. Hosts fill what they know (Airflow: dag/task/run/map index;
    Prefect: flow run/task run; Ray: job/node/worker/rank); the rest stays empty."""

    job_id: str = ""
    task_id: str = ""
    run_id: str = ""
    rank: str = ""
    local_rank: str = ""
    node: str = ""
    pid: str = ""
    host: str = ""

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None,
                         **overrides: str) -> WorkerContext:
        """The context this process can see: torchrun's ``RANK``/``LOCAL_RANK``, ``KEYLESS_*``
        overrides (``KEYLESS_JOB_ID`` ...), the pid and the host name."""
        env = os.environ if environ is None else environ
        values = {
            "job_id": env.get("KEYLESS_JOB_ID", ""),
            "task_id": env.get("KEYLESS_TASK_ID", ""),
            "run_id": env.get("KEYLESS_RUN_ID", ""),
            "rank": env.get("KEYLESS_RANK", env.get("RANK", "")),
            "local_rank": env.get("KEYLESS_LOCAL_RANK", env.get("LOCAL_RANK", "")),
            "node": env.get("KEYLESS_NODE", ""),
            "pid": str(os.getpid()),
            "host": socket.gethostname(),
        }
        values.update({k: str(v) for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_values(self, **values: object) -> WorkerContext:
        """A copy with some fields replaced (values are turned into strings)."""
        return dataclasses.replace(self, **{k: "" if v is None else str(v)
                                            for k, v in values.items()})

    def as_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


def check_template(template: str, field: str) -> None:
    """Raise ConfigError if ``template`` is malformed or names an unknown placeholder."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError(f"config: {field}: malformed template ({exc}); "
                          "fix: double literal braces as {{ and }}", field=field) from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in TEMPLATE_FIELDS or spec or conversion:
            allowed = " ".join("{" + f + "}" for f in TEMPLATE_FIELDS)
            raise ConfigError(f"config: {field}: unknown placeholder {{{name}}}; allowed: "
                              f"{allowed}", field=field)


def render_template(template: str, context: WorkerContext) -> str:
    """Fill a template (already checked) from the context."""
    return template.format(**context.as_dict())


def _as_json_document(value: str | Mapping[str, Any]) -> Any:
    """A mapping as is; a string that parses as a JSON object or array, parsed; else None."""
    if not isinstance(value, str):
        return value
    try:
        parsed = json.loads(value)
    except ValueError:
        return None
    return parsed if isinstance(parsed, (dict, list)) else None


def _string_leaves(node: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(node, str):
        yield path, node
    elif isinstance(node, Mapping):
        for key, child in node.items():
            yield from _string_leaves(child, f"{path}.{key}")
    elif isinstance(node, list):
        for index, child in enumerate(node):
            yield from _string_leaves(child, f"{path}.{index}")


def _render_leaves(node: Any, context: WorkerContext) -> Any:
    if isinstance(node, str):
        return render_template(node, context)
    if isinstance(node, Mapping):
        return {key: _render_leaves(child, context) for key, child in node.items()}
    if isinstance(node, list):
        return [_render_leaves(child, context) for child in node]
    return node


def check_json_template(value: str | Mapping[str, Any], field: str) -> None:
    """Check a JSON template (a session policy, an access boundary).

    A mapping, or a string holding a JSON object/array, is a template in its string values
    only (JSON's own braces need no escaping): ``"Resource": "arn:aws:s3:::b/{rank}/*"``.
    Any other string is one :func:`check_template` template. Raises ConfigError naming
    ``field`` and the path inside the document.
    """
    document = _as_json_document(value)
    if document is None:
        check_template(str(value), field)
        return
    for path, leaf in _string_leaves(document, field):
        check_template(leaf, path)


def render_json_template(value: str | Mapping[str, Any], context: WorkerContext) -> str:
    """Fill a template checked by :func:`check_json_template`; returns compact JSON text.

    Values are substituted inside JSON strings and re-encoded, so a context value holding a
    quote cannot change the document's structure.
    """
    document = _as_json_document(value)
    if document is None:
        return render_template(str(value), context)
    return json.dumps(_render_leaves(document, context), separators=(",", ":"))


_INVALID = re.compile(r"[^\w+=,.@-]", re.ASCII)


def sanitize_session_name(name: str) -> str:
    """Make ``name`` a valid STS RoleSessionName: 2-64 chars of ``[\\w+=,.@-]``.

    Invalid characters become ``-``, runs of separators left by empty placeholders collapse,
    the result is cut to 64 and padded to 2.
    """
    cleaned = _INVALID.sub("-", name)
    cleaned = re.sub(r"-{2,}", "-", cleaned).strip("-.")
    cleaned = cleaned[:64].rstrip("-")
    if len(cleaned) < 2:
        cleaned = (cleaned + "-keyless")[:64] if cleaned else "keyless"
    return cleaned
