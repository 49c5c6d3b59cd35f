"""Who the current Prefect worker is: the flow run and task run, from ``prefect.runtime``.

The keyless worker context (``{job_id} {task_id} {run_id} ...`` in session names, session
policies and tags) is filled from Prefect like this:

==========  ==================================================================
``job_id``  the flow run's name (``crimson-fox``; unique per run, searchable in the UI)
``run_id``  the flow run's id (a UUID)
``task_id`` the task run's name (``read_shard-3``: task name + per-run dynamic key)
``rank``    ``RANK``/``KEYLESS_RANK`` as everywhere (torchrun inside a task)
``pid``     this process; ``host`` this host
==========  ==================================================================

Outside a task run ``task_id`` is empty; outside a flow run the ``KEYLESS_*`` variables apply
as they do without Prefect (:meth:`keyless.WorkerContext.from_environment`).
"""

from __future__ import annotations

from collections.abc import Mapping

from prefect.runtime import flow_run, task_run

from keyless import WorkerContext

__all__ = ["RunKey", "current_run_key", "prefect_worker_context"]

#: (flow run id, task run id) of the caller; ``None`` where there is no such run.
RunKey = tuple[str | None, str | None]


def _text(value: object) -> str | None:
    return None if value is None or value == "" else str(value)


def current_run_key() -> RunKey:
    """The flow run id and task run id the caller runs in (cheap: context lookups only)."""
    return _text(flow_run.id), _text(task_run.id)


def prefect_worker_context(environ: Mapping[str, str] | None = None) -> WorkerContext:
    """The worker context of the caller (see the module docstring for the mapping).

    In a task that runs in another process (``ProcessPoolTaskRunner``, Dask, Ray) without the
    flow run's context, the flow run's name is read from the Prefect API once per task run.
    """
    values = {"job_id": _text(flow_run.name), "run_id": _text(flow_run.id),
              "task_id": _text(task_run.name)}
    return WorkerContext.from_environment(
        environ, **{key: value for key, value in values.items() if value is not None})
