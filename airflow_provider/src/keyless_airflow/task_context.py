"""Who the running Airflow task is, as a :class:`keyless.WorkerContext`.

Read through the Task SDK's public ``airflow.sdk.get_current_context()`` (set while an operator
executes): ``job_id`` = dag id, ``task_id`` = task id, ``run_id`` = dag run id, ``rank`` = map
index of a mapped task instance (empty when not mapped). The try number has no template field
in keyless; it is in :func:`task_identity` (and so in the hook's audit events' context). Outside
a task the process context (``WorkerContext.from_environment()``) is returned unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from keyless import WorkerContext

__all__ = ["task_identity", "task_worker_context", "worker_context_for"]


def task_identity() -> dict[str, Any] | None:
    """dag_id, task_id, run_id, map_index and try_number of the running task, or None."""
    from airflow.sdk import get_current_context

    try:
        context = get_current_context()
    except RuntimeError:  # "no context was found": not inside a running task
        return None
    ti = context.get("ti")
    if ti is None:
        return None
    map_index = getattr(ti, "map_index", None)
    return {
        "dag_id": str(ti.dag_id),
        "task_id": str(ti.task_id),
        "run_id": str(ti.run_id),
        "map_index": -1 if map_index is None else int(map_index),
        "try_number": int(getattr(ti, "try_number", 0) or 0),
    }


def task_worker_context(base: WorkerContext | None = None) -> WorkerContext:
    """``base`` (default: this process's context) filled from the running task, if any."""
    identity = task_identity()
    if identity is None:
        return base if base is not None else WorkerContext.from_environment()
    return worker_context_for(identity, base)


def worker_context_for(identity: Mapping[str, Any],
                       base: WorkerContext | None = None) -> WorkerContext:
    """``base`` (default: this process's context) filled from a task identity (the keys of
    :func:`task_identity`): the running task's, or the task a trigger waits for."""
    context = base if base is not None else WorkerContext.from_environment()
    map_index = int(identity["map_index"])
    return context.with_values(
        job_id=identity["dag_id"], task_id=identity["task_id"], run_id=identity["run_id"],
        rank=str(map_index) if map_index >= 0 else context.rank)
