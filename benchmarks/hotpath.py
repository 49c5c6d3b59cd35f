"""1. Hot path: a cached credential read through keyless vs the vendor's own cached path.

- AWS: ``Keyless.boto3_session().get_credentials().get_frozen_credentials()`` (keyless's
  scaled-window botocore credentials, fetched once from the loopback STS front) vs botocore's
  ``RefreshableCredentials.get_frozen_credentials()`` on 1 h credentials.
- GCP: keyless's google-auth credentials ``before_request`` vs google-auth
  ``identity_pool.Credentials.before_request`` with a cached token (fake STS).
- ``Refresher.get()`` on a cached value, against botocore's cached read.
- A cached subject-token read (``Keyless.subject_token()``) vs botocore's web-identity token
  loader, which re-reads the token file on every call.

Target: keyless no slower than the vendor's cached path (keyless / vendor <= 1.05).
"""

from __future__ import annotations

from typing import Any

from botocore.credentials import RefreshableCredentials
from botocore.utils import FileWebIdentityTokenLoader

from keyless import Keyless
from keyless.refresher import Refresher

from .common import Row, compare
from .fakes import CountingFetch, FakeGoogleSts, FakeSupplier, botocore_metadata
from .parts import google_identity_pool, keyless_gcp, token_file_identity
from .stack import Federation

__all__ = ["run"]

SECTION = "1. hot path"
LIMIT = 1.05


def _row(name: str, times: dict[str, float], ours: str, theirs: str, note: str) -> Row:
    ratio = times[ours] / times[theirs]
    return Row(SECTION, name, times[ours], times[theirs], "ns/read", ratio,
               f"<= {LIMIT}", ratio <= LIMIT, note)


def run(fed: Federation, log: object = print) -> list[Row]:
    rows: list[Row] = []
    # AWS: the real keyless session (one STS call through the front), then cached reads
    identity = Keyless(fed.config())
    keyless_aws: Any = identity.boto3_session().get_credentials()
    keyless_aws.get_frozen_credentials()
    vendor_aws = RefreshableCredentials.create_from_metadata(
        botocore_metadata(0), refresh_using=lambda: botocore_metadata(1), method="bench")
    vendor_aws.get_frozen_credentials()
    times = compare({"keyless": keyless_aws.get_frozen_credentials,
                     "botocore": vendor_aws.get_frozen_credentials})
    rows.append(_row("AWS frozen credentials (cached)", times, "keyless", "botocore",
                     "keyless boto3_session() vs botocore RefreshableCredentials"))

    # GCP: keyless's credentials vs google-auth identity_pool, both holding a cached token
    file_identity, token_path = token_file_identity(fed.issuer)
    _, keyless_gcp_creds = keyless_gcp(file_identity, FakeGoogleSts())
    vendor_gcp = google_identity_pool(FakeSupplier())
    request = FakeGoogleSts()
    headers: dict[str, str] = {}
    url = "https://storage.googleapis.com/b/o"
    keyless_gcp_creds.before_request(request, "GET", url, headers)
    vendor_gcp.before_request(request, "GET", url, headers)
    times = compare({
        "keyless": lambda: keyless_gcp_creds.before_request(request, "GET", url, headers),
        "google-auth": lambda: vendor_gcp.before_request(request, "GET", url, headers)})
    rows.append(_row("GCP token before_request (cached)", times, "keyless", "google-auth",
                     "keyless credentials vs google-auth identity_pool"))

    # the refresher itself, and a cached subject-token read
    refresher: Refresher[str] = Refresher(CountingFetch(), name="bench")
    refresher.get()
    loader = FileWebIdentityTokenLoader(str(token_path))
    file_identity.subject_token()
    times = compare({"refresher": refresher.get, "botocore": vendor_aws.get_frozen_credentials,
                     "subject": file_identity.subject_token, "loader": loader})
    rows.append(_row("Refresher.get() (cached)", times, "refresher", "botocore",
                     "vs botocore's cached frozen read"))
    rows.append(_row("subject token read (cached)", times, "subject", "loader",
                     "Keyless.subject_token() vs botocore token-file loader (re-reads)"))
    return rows
