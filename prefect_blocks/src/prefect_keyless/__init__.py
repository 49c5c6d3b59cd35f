"""prefect_keyless: keyless for Prefect 3.9.

:class:`KeylessCredentials` is a ``CredentialsBlock`` whose fields are keyless's config schema;
every flow run and task run that uses it gets its own short-lived, refreshed cloud identity.
Importing this package registers the block class with Prefect; the ``prefect.collections``
entry point makes a self-hosted server import it (and register the block type) at start.
For Prefect Cloud: ``prefect block register -m prefect_keyless``.

With prefect-aws installed (``prefect-keyless[aws]``), :class:`~prefect_keyless.aws.
KeylessAwsCredentials` registers too (keyless where ``S3Bucket`` and result storage expect
``AwsCredentials``); with prefect-gcp (``prefect-keyless[gcp]``),
:class:`~prefect_keyless.gcp.KeylessGcpCredentials` (where ``GcsBucket`` expects
``GcpCredentials``). The deployment step ``prefect_keyless.deployments.steps.pull_from_s3``
pulls code from S3 on keyless credentials.
"""

from __future__ import annotations

from importlib.util import find_spec

from .credentials import KeylessCredentials

__version__ = "0.1.0"

__all__ = ["KeylessCredentials", "__version__"]

# Import (and so register with Prefect) the blocks whose collection is installed; a missing
# collection is not an error, a broken one is (its ImportError propagates).
if find_spec("prefect_aws") is not None:
    from .aws import KeylessAwsCredentials

    __all__ += ["KeylessAwsCredentials"]
if find_spec("prefect_gcp") is not None:
    from .gcp import KeylessGcpCredentials

    __all__ += ["KeylessGcpCredentials"]
