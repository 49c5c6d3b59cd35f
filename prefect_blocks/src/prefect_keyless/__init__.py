"""prefect_keyless: keyless for Prefect 3.9.

:class:`KeylessCredentials` is a ``CredentialsBlock`` whose fields are keyless's config schema;
every flow run and task run that uses it gets its own short-lived, refreshed cloud identity.
Importing this package registers the block class with Prefect; the ``prefect.collections``
entry point makes a self-hosted server import it (and register the block type) at start.
For Prefect Cloud: ``prefect block register -m prefect_keyless``.
"""

from __future__ import annotations

from .credentials import KeylessCredentials

__version__ = "0.1.0"

__all__ = ["KeylessCredentials", "__version__"]
