"""keyless for Ray: run in every Python process of a Ray worker that the keyless plugin set up
(the plugin puts this directory first on the worker's ``PYTHONPATH``).

It first runs the ``sitecustomize`` this one shadows, if the interpreter has one further down
``sys.path``; then, in a process started with ``$KEYLESS_RAY``, it calls
:func:`keyless_ray.bootstrap.start`. A failure is one line on stderr, never a failed start.
"""

import importlib.machinery
import importlib.util
import os
import sys


def _run_shadowed() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [path for path in sys.path if os.path.abspath(path or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None:
        module = importlib.util.module_from_spec(spec)
        sys.modules[__name__] = module
        spec.loader.exec_module(module)


def _keyless() -> None:
    if not os.environ.get("KEYLESS_RAY"):
        return
    try:
        from keyless_ray.bootstrap import start

        start()
    except Exception as exc:
        detail = getattr(exc, "message", "")  # a KeylessError's message holds no secret
        sys.stderr.write(f"keyless_ray: this worker serves no per-worker AWS identity "
                         f"({type(exc).__name__}{': ' + detail if detail else ''}); its "
                         "node's shared variables apply\n")


_run_shadowed()
_keyless()
