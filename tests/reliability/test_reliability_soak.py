"""Compressed-time soak under faults: many workers (threads, each with its own identity) read
AWS credentials while the reference IdP (through a fault proxy) answers 503s, hangs past the
client timeout and resets connections, and the verifying STS front throttles and fails.

8-second IdP tokens and 8-second STS sessions make every worker roll its token and its
credentials every few seconds. Each fault lasts less than the validity a worker is guaranteed
to hold when it starts: refresh at 0.35 +- 0.1 of the lifetime, the first value too
(``first_refresh_spread`` 0.1; the default 0.25 would let a first value wait until 0.75 of its
lifetime, leaving about a second before botocore's mandatory window), so at least 3.6 s remain
for a 1.5 s fault, a 0.5 s client timeout and the backoffs: the target is zero failed reads.
Static AWS keys sit in the environment all along; every credential read must be one the front
issued (no fallback to a broader chain).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from keyless import Keyless, KeylessError, WorkerContext
from tests.e2e.conftest import Federation, LeakGuard
from tests.support.faults import FaultProxy

pytestmark = pytest.mark.e2e

WORKERS = 8
STATIC_KEY = "AKIASTATICFALLBACK00"


class Soak:
    """The workers' read loops and their counters."""

    def __init__(self, federation: Federation, identities: list[Keyless]) -> None:
        self.federation = federation
        self.identities = identities
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.reads = self.s3_calls = 0
        self.failures: list[str] = []
        self.phase = "warm-up"
        self.since = time.monotonic()
        self.ready = threading.Barrier(len(identities) + 1)
        self.threads = [threading.Thread(target=self._worker, args=(i,), daemon=True)
                        for i in range(len(identities))]

    def _fail(self, what: str) -> None:
        with self.lock:
            self.failures.append(f"[{self.phase} +{time.monotonic() - self.since:.2f}s] {what}")

    def _worker(self, i: int) -> None:
        session = self.identities[i].boto3_session()
        credentials: Any = session.get_credentials()
        s3 = self.federation.s3(session)
        # the first, cold fetch, before any fault: on a loaded machine the 0.5 s client
        # timeout can trip here, and a cold cache has nothing to serve meanwhile, so retry
        deadline = time.monotonic() + 90
        while True:
            try:
                credentials.get_frozen_credentials()
                break
            except KeylessError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        self.ready.wait(timeout=120)
        n = 0
        while not self.stop.wait(0.05):
            n += 1
            try:
                frozen = credentials.get_frozen_credentials()
            except Exception as exc:
                self._fail(f"worker {i}: read raised {type(exc).__name__}: {exc}")
                continue
            issued = self.federation.aws.front.issued.get(frozen.access_key)
            if issued is None:
                self._fail(f"worker {i}: a credential the front never issued (fallback?)")
            elif issued.expiration <= time.time():
                self._fail(f"worker {i}: an expired credential")
            with self.lock:
                self.reads += 1
            if n % 20 == i % 20:  # about once a second per worker: use it for real
                try:
                    s3.list_objects_v2(Bucket=self.federation.aws.bucket,
                                       Prefix=self.federation.prefix)
                    with self.lock:
                        self.s3_calls += 1
                except Exception as exc:
                    self._fail(f"worker {i}: S3 call raised {type(exc).__name__}")

    def __enter__(self) -> Soak:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)


def _recovered_within(federation: Federation, seconds: float) -> float | None:
    """Wait ``seconds``; return how long after the start the IdP issued its next token."""
    before, start = federation.idp.token_requests(), time.monotonic()
    first: float | None = None
    while time.monotonic() - start < seconds:
        if first is None and federation.idp.token_requests() > before:
            first = time.monotonic() - start
        time.sleep(0.05)
    return first


def test_soak_survives_idp_and_sts_faults_with_no_failed_read(
        federation: Federation, leak_guard: LeakGuard, monkeypatch: pytest.MonkeyPatch,
        reliability_summary: Callable[..., str]) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", STATIC_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "static-secret-that-must-not-be-used")
    front = federation.aws.front
    front.max_session_seconds = 8
    faults: list[str] = []
    recovery: dict[str, float | None] = {}
    with FaultProxy(federation.idp.issuer) as proxy:
        def identity(rank: int) -> Keyless:
            config = federation.config("shortlived",
                                       token_url=proxy.rewrite(federation.idp.token_url))
            config["refresh"] = {"at_fraction": 0.35, "jitter_fraction": 0.1,
                                 "first_refresh_spread": 0.1,
                                 "initial_backoff_seconds": 0.2, "max_backoff_seconds": 0.5}
            return Keyless(config, http=lambda: httpx.Client(timeout=0.5),
                           context=WorkerContext(job_id="soak", rank=str(rank)))

        identities = [identity(rank) for rank in range(WORKERS)]
        sts_before, idp_before = front.calls, federation.idp.token_requests()
        with Soak(federation, identities) as soak:
            soak.ready.wait(timeout=120)  # every worker holds a token and credentials
            time.sleep(1.0)

            def idp_fault(name: str, start: Callable[[], None]) -> None:
                soak.phase, soak.since = name, time.monotonic()
                start()
                time.sleep(1.5)
                proxy.passthrough()
                soak.phase = f"after {name}"
                faults.append(name)
                recovery[name] = _recovered_within(federation, 3.0)

            idp_fault("IdP 503", lambda: proxy.fail_with(503))
            idp_fault("IdP timeout", lambda: proxy.hang(30.0))
            idp_fault("IdP connection reset", proxy.reset)
            last_idp_fault_end = time.time()
            for name, inject in (("STS throttling x3", lambda: front.throttle_next(3)),
                                 ("STS 503 x3", lambda: front.fail_next(3, 503)),
                                 ("STS 500 x2", lambda: front.fail_next(2, 500))):
                soak.phase = name
                inject()
                time.sleep(3.0)
                faults.append(name)
            time.sleep(4.0)
        refused = proxy.requests - proxy.forwarded  # answered by a fault, never the IdP
    sts_calls, idp_calls = front.calls - sts_before, federation.idp.token_requests() - idp_before

    reliability_summary(
        "soak", load=f"{WORKERS} workers x {soak.reads} reads, {soak.s3_calls} S3 calls, "
        f"{sts_calls} STS exchanges, {idp_calls} IdP tokens",
        faults=", ".join(faults), bad_inputs=0, failures=len(soak.failures),
        recovery_s={k: None if v is None else round(v, 2) for k, v in recovery.items()})
    assert soak.failures == [], "\n".join(soak.failures[:40])
    assert front.expired_uses == []
    assert soak.reads > WORKERS * 100 and soak.s3_calls > WORKERS * 10
    assert refused > 0, "the faults never reached a worker's refresh"
    for worker in identities:  # every worker recovered: a token issued after the last fault
        token = worker.token_refresher().peek()  # the cached one: the proxy is gone
        assert token is not None and token.issued_at is not None
        assert token.issued_at > last_idp_fault_end - 1
    assert sts_calls >= WORKERS * 3, "sessions did not roll over during the soak"
    used = {f["access_key_id"] for f in front.forwarded}
    assert STATIC_KEY not in used
    leak_guard.add(*soak.failures)
