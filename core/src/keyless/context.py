"""Who this worker is: the context that per-worker templates are filled from.

Templates use ``str.format`` placeholders over :data:`TEMPLATE_FIELDS`; an unknown placeholder
is a config error. An unknown value renders as an empty string, except that a template the
config writes with a rank field (:data:`RANK_FIELDS`) is refused for a worker that has no rank
(:func:`unresolved_rank_fields`): a per-rank policy must never be rendered for "no rank".

Under ``torchrun`` the rank lives in each rank's own process (``RANK``, ``LOCAL_RANK``,
``GROUP_RANK``, ``TORCHELASTIC_RUN_ID``): :meth:`WorkerContext.for_process` builds the context
of another process from its environment (the loopback credential endpoint serves each calling
rank its own identity that way), never from the launcher's.
"""

from __future__ import annotations

import dataclasses
import hashlib
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
    "RANK_FIELDS",
    "STS_SESSION_NAME_MAX",
    "fields_used",
    "render_session_name",
    "require_ranks",
    "unresolved_rank_fields",
]

TEMPLATE_FIELDS: tuple[str, ...] = (
    "job_id", "task_id", "run_id", "rank", "local_rank", "node", "pid", "host",
)
#: Fields a template cannot do without once it names them: a per-rank policy rendered for an
#: empty rank would be another policy (:func:`unresolved_rank_fields`).
RANK_FIELDS: tuple[str, ...] = ("rank", "local_rank")
#: STS's limit on RoleSessionName.
STS_SESSION_NAME_MAX = 64


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
        """The context this process can see: ``KEYLESS_*`` overrides (``KEYLESS_JOB_ID`` ...),
        else torchrun's ``RANK``, ``LOCAL_RANK``, ``GROUP_RANK`` (node) and
        ``TORCHELASTIC_RUN_ID`` (run id); the pid and the host name."""
        env = os.environ if environ is None else environ
        values = {
            "job_id": env.get("KEYLESS_JOB_ID", ""),
            "task_id": env.get("KEYLESS_TASK_ID", ""),
            "host": socket.gethostname(),
            "pid": str(os.getpid()),
            **_process_values(env),
        }
        values.update({k: str(v) for k, v in overrides.items() if v is not None})
        return cls(**values)

    def for_process(self, environ: Mapping[str, str]) -> WorkerContext:
        """The context of another process of this launch (a rank ``torchrun`` started), from
        that process's own environment: its rank, local rank and node (``GROUP_RANK``); the
        run id is this context's (the host's run) or else the process's
        (``TORCHELASTIC_RUN_ID``). Job, task, host and pid stay this context's (the pid is the
        launch's, so a restarted rank, or a CLI its rank runs, keeps the rank's session).
        torchrun's own per-rank variables win over a ``KEYLESS_RANK`` inherited from the
        launcher. A rank field the process does not have is empty, never the launcher's."""
        values = _process_values(environ, launcher_first=True)
        return dataclasses.replace(
            self, rank=values["rank"], local_rank=values["local_rank"],
            node=values["node"] or self.node, run_id=self.run_id or values["run_id"])

    def with_values(self, **values: object) -> WorkerContext:
        """A copy with some fields replaced (values are turned into strings)."""
        return dataclasses.replace(self, **{k: "" if v is None else str(v)
                                            for k, v in values.items()})

    def as_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


#: Per field: keyless's override variable and the variable torchrun sets for each rank.
_PROCESS_VARIABLES = {"rank": ("KEYLESS_RANK", "RANK"),
                      "local_rank": ("KEYLESS_LOCAL_RANK", "LOCAL_RANK"),
                      "node": ("KEYLESS_NODE", "GROUP_RANK"),
                      "run_id": ("KEYLESS_RUN_ID", "TORCHELASTIC_RUN_ID")}


def _process_values(env: Mapping[str, str], *, launcher_first: bool = False,
                    ) -> dict[str, str]:
    """rank, local_rank, node and run_id as a process's environment gives them: the
    ``KEYLESS_*`` override, else torchrun's variable; with ``launcher_first`` (another process
    of a launch) torchrun's, which it sets per rank, over a ``KEYLESS_*`` the process may have
    inherited from the launcher."""
    values = {}
    for name, (override, launcher) in _PROCESS_VARIABLES.items():
        first, second = (launcher, override) if launcher_first else (override, launcher)
        values[name] = env.get(first, env.get(second, ""))
    return values


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


def fields_used(template: str | Mapping[str, Any]) -> set[str]:
    """The context fields a (checked) template or JSON template names."""
    document = _as_json_document(template)
    leaves = [str(template)] if document is None else \
        [leaf for _, leaf in _string_leaves(document, "")]
    return {name for leaf in leaves for _, name, _, _ in string.Formatter().parse(leaf)
            if name}


def unresolved_rank_fields(templates: Mapping[str, str | Mapping[str, Any]],
                           context: WorkerContext) -> list[tuple[str, str]]:
    """``(config field, context field)`` for each template (config field -> template) that
    names a :data:`RANK_FIELDS` field this context has no value for."""
    values = context.as_dict()
    return [(field, name) for field, template in templates.items()
            for name in RANK_FIELDS if name in fields_used(template) and not values[name]]


def require_ranks(templates: Mapping[str, str | Mapping[str, Any]],
                  context: WorkerContext) -> None:
    """Raise :class:`ConfigError` naming the field when a template (config field -> template)
    names ``{rank}``/``{local_rank}`` and ``context`` has no value for it: such a template is
    never rendered with an empty rank (nor, by a per-process endpoint, the launcher's)."""
    unresolved = unresolved_rank_fields(templates, context)
    if not unresolved:
        return
    field, name = unresolved[0]
    process = f"process {context.pid}" if context.pid else "this process"
    variable = {"rank": "RANK", "local_rank": "LOCAL_RANK"}[name]
    target = field.split(".")[1] if field.count(".") >= 1 else "config"
    raise ConfigError(
        f"{target}: {field} uses {{{name}}}, but {process} has no {name} (no {variable} or "
        f"KEYLESS_{variable} in its environment), and a per-rank template is never rendered "
        f"for another rank or for none; fix: start the ranks with torchrun (under `keyless exec "
        f"-- torchrun ...` each rank asks the loopback endpoint for its own credentials), "
        f"Ray Train or KEYLESS_{variable} set per worker, or remove {{{name}}} from {field}",
        field=field)


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


def _clean_session_name(name: str) -> str:
    cleaned = _INVALID.sub("-", name)
    return re.sub(r"-{2,}", "-", cleaned).strip("-.")


def sanitize_session_name(name: str) -> str:
    """Make ``name`` a valid STS RoleSessionName: 2-64 chars of ``[\\w+=,.@-]``.

    Invalid characters become ``-``, runs of separators left by empty placeholders collapse,
    the result is padded to 2. A longer name keeps its first 55 characters and ends with ``-``
    and 8 hex of the sha256 of the whole name, so two long names that differ anywhere (say
    only in the rank at their end) stay distinct. :func:`session_name` does better for a
    template: it shortens the long values and keeps the rank itself.
    """
    cleaned = _clean_session_name(name)
    if len(cleaned) > STS_SESSION_NAME_MAX:
        digest = hashlib.sha256(cleaned.encode()).hexdigest()[:8]
        cleaned = cleaned[:STS_SESSION_NAME_MAX - 9].rstrip("-.") + "-" + digest
    if len(cleaned) < 2:
        cleaned = (cleaned + "-keyless")[:64] if cleaned else "keyless"
    return cleaned


#: Fields shortened first when a rendered session name is too long (the per-process fields
#: are kept whole: they are what tells the ranks apart).
_SHORTENED_FIRST = ("run_id", "task_id", "job_id", "host")


def render_session_name(template: str, context: WorkerContext) -> tuple[str, str]:
    """``(name sent to STS, full name)`` for a session-name template; the full name is the
    rendered one, sanitised but not shortened (the same as the sent one when it fits).

    When the sanitised name is over STS's 64 characters, the longest of the run, task, job and
    host values is shortened, one character at a time, until the name plus ``-`` and 8 hex of
    the sha256 of the full name fits: the rank, local rank, node and pid stay whole, so
    CloudTrail still names the rank, and the hash keeps any two full names apart. (A template
    whose own text is too long falls back to :func:`sanitize_session_name`'s cut.)
    """
    full = _clean_session_name(render_template(template, context))
    sent = sanitize_session_name(full)
    if len(full) <= STS_SESSION_NAME_MAX:
        return sent, sent
    digest = hashlib.sha256(full.encode()).hexdigest()[:8]
    values = context.as_dict()
    budget = STS_SESSION_NAME_MAX - 9
    while True:
        candidate = _clean_session_name(render_template(template, WorkerContext(**values)))
        if len(candidate) <= budget:
            return f"{candidate}-{digest}", full
        longest = max(_SHORTENED_FIRST, key=lambda name: len(values[name]))
        if not values[longest]:
            return sent, full
        values[longest] = values[longest][:-1]
