"""2. Single flight: K threads on a cold cache, upstream calls counted.

For K = 1, 8, 64, 512 threads released together by a barrier:

- keyless ``Refresher`` (fake upstream, 100 ms latency);
- keyless AWS: a fresh ``Keyless`` per K, real HTTP: IdP (dev issuer) and STS (the verifying
  front) calls counted at the servers;
- keyless GCP: keyless's google-auth credentials on a fake STS (100 ms);
- google-auth ``identity_pool.Credentials`` alone on the same fake STS: it has no refresh
  lock, so every thread that sees no token exchanges;
- botocore ``DeferredRefreshableCredentials`` (fake refresh, 100 ms): one lock, one call.

Target: exactly 1 upstream call for keyless at every K.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from botocore.credentials import DeferredRefreshableCredentials

from keyless import Keyless, WorkerContext
from keyless.refresher import Refresher

from .common import Row
from .fakes import Counter, CountingFetch, FakeGoogleSts, FakeSupplier, botocore_metadata
from .parts import google_identity_pool, keyless_gcp, token_file_identity
from .stack import Federation

__all__ = ["KS", "run"]

SECTION = "2. single flight"
KS = (1, 8, 64, 512)
LATENCY = 0.1  # a remote STS round trip


def _burst(k: int, call: Callable[[], object]) -> int:
    """Run ``call`` in ``k`` threads released at once; return how many raised."""
    barrier = threading.Barrier(k)
    errors = Counter()

    def worker() -> None:
        barrier.wait()
        try:
            call()
        except Exception:
            errors.add()

    threads = [threading.Thread(target=worker) for _ in range(k)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors.value


def measure(fed: Federation) -> dict[str, dict[int, int]]:
    """Upstream calls per contender and K."""
    calls: dict[str, dict[int, int]] = {name: {} for name in (
        "keyless Refresher", "keyless AWS (STS)", "keyless AWS (IdP)", "keyless GCP (STS)",
        "google-auth identity_pool (STS)", "botocore (STS)")}
    headers: dict[str, str] = {}
    url = "https://storage.googleapis.com/b/o"
    for k in KS:
        fetch = CountingFetch(latency=LATENCY)
        refresher: Refresher[str] = Refresher(fetch, name="bench")
        _burst(k, refresher.get)
        calls["keyless Refresher"][k] = fetch.calls.value

        identity = Keyless(fed.config(), context=WorkerContext(rank=str(k)))
        credentials: Any = identity.boto3_session().get_credentials()
        idp, sts = fed.issuer.token_requests(), fed.aws.front.calls
        _burst(k, credentials.get_frozen_credentials)
        calls["keyless AWS (STS)"][k] = fed.aws.front.calls - sts
        calls["keyless AWS (IdP)"][k] = fed.issuer.token_requests() - idp

        file_identity, _ = token_file_identity(fed.issuer)
        sts_fake = FakeGoogleSts(latency=LATENCY)
        _, gcreds = keyless_gcp(file_identity, sts_fake)
        _burst(k, lambda: gcreds.before_request(sts_fake, "GET", url, {}))  # noqa: B023
        calls["keyless GCP (STS)"][k] = sts_fake.calls.value

        vendor_sts = FakeGoogleSts(latency=LATENCY)
        vendor = google_identity_pool(FakeSupplier())
        _burst(k, lambda: vendor.before_request(vendor_sts, "GET", url, dict(headers)))  # noqa: B023
        calls["google-auth identity_pool (STS)"][k] = vendor_sts.calls.value

        botocore_calls = Counter()

        def refresh(counter: Counter = botocore_calls) -> dict[str, str]:
            n = counter.add()
            threading.Event().wait(LATENCY)
            return botocore_metadata(n)

        deferred = DeferredRefreshableCredentials(refresh_using=refresh, method="bench")
        _burst(k, deferred.get_frozen_credentials)
        calls["botocore (STS)"][k] = botocore_calls.value
    return calls


def run(fed: Federation) -> tuple[list[Row], dict[str, dict[int, int]]]:
    calls = measure(fed)
    keyless_names = [n for n in calls if n.startswith("keyless")]
    rows = []
    for k in KS:
        worst = max(calls[n][k] for n in keyless_names)
        vendor = calls["google-auth identity_pool (STS)"][k]
        rows.append(Row(SECTION, f"K={k} threads, cold cache", worst, vendor, "upstream calls",
                        worst / vendor if vendor else None, "keyless == 1", worst == 1,
                        "keyless: worst of Refresher/AWS STS+IdP/GCP; baseline: google-auth "
                        f"identity_pool; botocore: {calls['botocore (STS)'][k]}"))
    return rows, calls
