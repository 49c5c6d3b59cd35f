"""The verifying GCS front (tests/support/gcs_emulator.py) with the real google-cloud-storage
client: what it accepts works end to end, and it refuses what Cloud Storage refuses (no bearer,
a token it did not issue, an expired one, outside a downscoped token's boundary).

Runs in the Airflow environment (the Google provider brings google-cloud-storage; the
emulator is installed there and in the Prefect one)."""

from __future__ import annotations

import io
import json
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from keyless.clock import FakeClock
from keyless.dev.issuer import DevIssuer
from keyless.testing.gcp_sts import GcpSts

pytest.importorskip("gcp_storage_emulator")
storage = pytest.importorskip("google.cloud.storage")
from google.api_core import exceptions as gexc  # noqa: E402
from google.auth.exceptions import InvalidOperation, RefreshError  # noqa: E402
from google.oauth2.credentials import Credentials  # noqa: E402

from tests.support.gcs_emulator import GcsStorage  # noqa: E402

AUDIENCE = "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/q"


@pytest.fixture
def clock() -> FakeClock:
    """The STS fixture's clock: starts now (the dev issuer's tokens are signed with real time)."""
    return FakeClock(start=time.time())


@pytest.fixture
def front(dev_issuer: DevIssuer, clock: FakeClock,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[GcsStorage]:
    with GcpSts(trusted_issuer=dev_issuer.issuer, audience=AUDIENCE,
                max_lifetime_seconds=60, clock=clock) as sts, GcsStorage(sts) as gcs:
        for key, value in gcs.env().items():
            monkeypatch.setenv(key, value)
        yield gcs


def exchange(sts: GcpSts, subject: str, boundary: list[dict[str, Any]] | None = None) -> str:
    """An access token from the STS fixture (federated, or downscoped from ``subject``)."""
    form = {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "requested_token_type": "urn:ietf:params:oauth:token-type:access_token",
            "subject_token": subject, "audience": AUDIENCE,
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt"}
    if boundary is not None:
        form["subject_token_type"] = "urn:ietf:params:oauth:token-type:access_token"
        form["options"] = urllib.parse.quote(json.dumps(
            {"accessBoundary": {"accessBoundaryRules": boundary}}))
    request = urllib.request.Request(sts.token_url, data=urllib.parse.urlencode(form).encode())
    with urllib.request.urlopen(request, timeout=10) as answer:
        return str(json.load(answer)["access_token"])


def client(token: str) -> Any:
    return storage.Client(project="proj", credentials=Credentials(token))


def test_real_client_round_trip_and_refusals(front: GcsStorage, dev_issuer: DevIssuer,
                                             clock: FakeClock) -> None:
    token = exchange(front.sts, dev_issuer.mint("trainer", "https:" + AUDIENCE))
    bucket = client(token).create_bucket("data")
    bucket.blob("a/x.txt").upload_from_string(b"hello")
    assert client(token).bucket("data").blob("a/x.txt").download_as_bytes() == b"hello"
    assert [b.name for b in client(token).list_blobs("data")] == ["a/x.txt"]
    assert front.get_object("data", "a/x.txt") == b"hello"
    big = bucket.blob("a/big.bin", chunk_size=256 * 1024)  # size unknown: resumable, chunked
    big.upload_from_file(io.BytesIO(b"z" * (600 * 1024)))
    assert front.get_object("data", "a/big.bin") == b"z" * (600 * 1024)
    chunks = [r for r in front.requests if r["method"] == "PUT"]
    assert len(chunks) == 3 and {r["object"] for r in chunks} == {"a/big.bin"}
    assert {r["status"] for r in front.requests} <= {200, 308}  # 308: resume incomplete
    assert {r["kind"] for r in front.requests} == {"federated"}
    assert ("POST", "data", "a/x.txt") in {(r["method"], r["bucket"], r["object"])
                                           for r in front.requests}

    # a token the STS never issued: 401, on which google-auth tries (and fails) to refresh
    with pytest.raises((gexc.Unauthorized, RefreshError)):
        client("ya29.not-issued").bucket("data").blob("a/x.txt").download_as_bytes()
    assert front.requests[-1]["status"] == 401
    narrow = exchange(front.sts, token, boundary=[{
        "availableResource": "//storage.googleapis.com/projects/_/buckets/data",
        "availablePermissions": ["inRole:roles/storage.objectViewer"],
        "availabilityCondition": {"expression":
                                  "resource.name.startsWith('projects/_/buckets/data/objects/a/')"},
    }])
    assert client(narrow).bucket("data").blob("a/x.txt").download_as_bytes() == b"hello"
    front.put_object("data", "b/y.txt", b"other")
    with pytest.raises(gexc.Forbidden):
        client(narrow).bucket("data").blob("b/y.txt").download_as_bytes()
    with pytest.raises(gexc.Forbidden):  # bucket creation needs an undownscoped token
        client(narrow).create_bucket("other")
    clock.advance(61)
    with pytest.raises((gexc.Unauthorized, RefreshError)):  # expired: refused as GCS does
        client(token).bucket("data").blob("a/x.txt").download_as_bytes()
    assert front.requests[-1]["status"] == 401
    assert front.sts.expired_uses >= 1


def test_no_bearer_is_refused(front: GcsStorage) -> None:
    front.create_bucket("open")
    front.put_object("open", "k", b"v")
    anonymous = storage.Client.create_anonymous_client()
    with pytest.raises((gexc.Unauthorized, InvalidOperation)):  # 401, then no refresh
        anonymous.bucket("open").blob("k").download_as_bytes()
    assert front.requests[-1]["status"] == 401
