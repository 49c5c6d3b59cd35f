"""Deployment steps on keyless credentials: ``pull_from_s3``, as prefect-aws's.

``prefect_aws.deployments.steps.pull_from_s3`` takes ``credentials`` as the *data* of a block
(``"{{ prefect.blocks.aws-credentials.dev }}"`` resolves to a dict) and rebuilds it with
``AwsCredentials.model_validate``. Prefect picks the subclass from a ``block_type_slug`` in that
data, which a :class:`~prefect_keyless.aws.KeylessAwsCredentials` stores (saved from Python
or made in the UI form); data written to the API without it makes prefect-aws's step build a
plain ``AwsCredentials`` on the ambient credential chain, silently. This step has the same
signature and output, always rebuilds a ``KeylessAwsCredentials`` from the data, and
downloads with prefect-aws's own ``S3Bucket.get_directory`` on that identity::

    pull:
      - prefect_keyless.deployments.steps.pull_from_s3:
          requires: prefect-keyless[aws]
          bucket: my-bucket
          folder: my-project
          credentials: "{{ prefect.blocks.keyless-aws-credentials.training }}"

Pull steps run in the flow run's process before the flow starts: the identity is the flow
run's (``{job_id}``/``{run_id}`` are the flow run's, ``{task_id}`` is empty).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypedDict

from keyless import ConfigError

__all__ = ["PullFromS3Output", "pull_from_s3"]


class PullFromS3Output(TypedDict):
    """What the step returns (as prefect-aws's): later steps can use ``directory``."""

    bucket: str
    folder: str
    directory: str


def pull_from_s3(
    bucket: str,
    folder: str,
    credentials: Mapping[str, Any] | None = None,
    client_parameters: Mapping[str, Any] | None = None,
) -> PullFromS3Output:
    """Download the objects under ``folder`` of ``bucket`` into the working directory, on the
    keyless identity of ``credentials`` (a ``keyless-aws-credentials`` block's data);
    ``client_parameters`` (``endpoint_url`` ...) apply unless the block sets its own."""
    from prefect_aws.client_parameters import AwsClientParameters
    from prefect_aws.s3 import S3Bucket

    from ..aws import KeylessAwsCredentials

    if not credentials:
        raise ConfigError(
            "prefect_keyless.deployments.steps.pull_from_s3: credentials is empty; fix: "
            "credentials: \"{{ prefect.blocks.keyless-aws-credentials.<name> }}\"",
            field="credentials")
    data = dict(credentials)
    if client_parameters and not data.get("aws_client_parameters"):
        data["aws_client_parameters"] = AwsClientParameters.model_validate(client_parameters)
    block = KeylessAwsCredentials.model_validate(data)
    local_path = Path.cwd()
    S3Bucket(bucket_name=bucket, credentials=block).get_directory(
        from_path=folder, local_path=str(local_path))
    return {"bucket": bucket, "folder": folder, "directory": str(local_path)}
