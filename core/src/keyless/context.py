"""Who this worker is: the context that per-worker templates are filled from.

Templates use ``str.format`` placeholders over :data:`TEMPLATE_FIELDS`; an unknown placeholder
is a config error, an unknown value renders as an empty string.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import string
from collections.abc import Mapping

from .errors import ConfigError

__all__ = [
    "TEMPLATE_FIELDS",
    "WorkerContext",
    "check_template",
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
