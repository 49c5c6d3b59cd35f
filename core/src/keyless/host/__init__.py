"""What the three hosts (Airflow, Prefect, Ray) share, so each only translates its own config
and its own idea of "which worker is this" into keyless's:

- :class:`~.cache.ProcessCache`: this process's identities, bounded (least recently used go)
  and fork-safe (a forked child starts empty), pickled as an empty cache;
- :func:`~.secrets.secret_fields` / :func:`~.secrets.secret_paths`: the config fields that hold
  a secret, from the schema's own ``secret`` flag (never a hand-written list);
- :func:`~.errors.host_config_error`: a host-prefixed :class:`~keyless.ConfigError` that keeps
  the field path;
- :func:`keyless.delivery.child.child_environment`: the environment of a command the host
  starts (drops what would shadow keyless, serves per-rank AWS credentials).
"""

from ..delivery.child import ChildEnvironment, child_environment
from .cache import ProcessCache
from .errors import host_config_error
from .secrets import secret_fields, secret_paths

__all__ = ["ChildEnvironment", "ProcessCache", "child_environment", "host_config_error",
           "secret_fields", "secret_paths"]
