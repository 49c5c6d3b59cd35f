"""Reference IdP → client_credentials source → AWS target (botocore) → verifying STS front →
S3 on moto. Issue 3, points 2, 4, 5 and 6."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from keyless import Keyless, KeylessError, TokenRejected, WorkerContext
from keyless.audit import AuditLog, MemorySink
from tests.e2e.conftest import Federation, LeakGuard
from tests.support.faults import FaultProxy

pytestmark = pytest.mark.e2e


def test_client_credentials_to_s3_put_and_get(federation: Federation,
                                              leak_guard: LeakGuard) -> None:
    sink = MemorySink()
    identity = Keyless(federation.config(session_name="train-{job_id}-r{rank}",
                                         tags={"job": "{job_id}", "rank": "{rank}"}),
                       context=WorkerContext(job_id="job7", rank="0"), audit=AuditLog([sink]))
    s3 = federation.s3(identity.boto3_session())
    key = federation.prefix + "shard-0.bin"
    s3.put_object(Bucket=federation.aws.bucket, Key=key, Body=b"weights")
    assert s3.get_object(Bucket=federation.aws.bucket, Key=key)["Body"].read() == b"weights"

    accepted = federation.aws.front.accepted
    assert [a["session_name"] for a in accepted] == ["train-job7-r0"]
    assert accepted[0]["sub"] == "trainer" and accepted[0]["aud"] == "sts.amazonaws.com"
    forwarded = federation.aws.front.forwarded
    assert forwarded and all(f["session_name"] == "train-job7-r0" for f in forwarded)
    exchanges = [e for e in sink.events if e.kind == "exchange" and e.target == "aws"]
    assert [dict(e.tags) for e in exchanges] == [{"job": "job7", "rank": "0"}]
    leak_guard.forbid(identity.token())
    leak_guard.add(repr(identity), repr(identity.subject_token()), repr(identity.config))


def _refused(federation: Federation, config: dict[str, Any]) -> TokenRejected:
    identity = Keyless(config)
    with pytest.raises(TokenRejected) as info:
        federation.s3(identity.boto3_session()).list_objects_v2(
            Bucket=federation.aws.bucket, Prefix=federation.prefix)
    return info.value


def test_wrong_audience_is_refused_naming_aud(federation: Federation,
                                              leak_guard: LeakGuard) -> None:
    error = _refused(federation, federation.config(audience="https://other.example"))
    assert error.claim == "aud"
    assert "aud" in str(error) and "fix:" in str(error)
    leak_guard.add(str(error), repr(error))


def test_wrong_subject_is_refused_naming_sub(federation: Federation,
                                             leak_guard: LeakGuard) -> None:
    error = _refused(federation, federation.config("intruder"))
    assert error.claim == "sub"
    assert "sub='intruder'" in str(error) and "trust policy" in str(error)
    leak_guard.add(str(error), repr(error))


def test_forged_signature_is_refused_naming_signature(federation: Federation, tmp_path: Any,
                                                      leak_guard: LeakGuard) -> None:
    genuine = federation.idp.issue("trainer", "https://sts.amazonaws.com")
    claims = jwt.decode(genuine, options={"verify_signature": False})
    header = jwt.get_unverified_header(genuine)
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(claims, other_key, algorithm="RS256", headers={"kid": header["kid"]})
    token_file = tmp_path / "token"
    token_file.write_text(forged)
    config = federation.config()
    config["source"] = {"type": "file", "path": str(token_file)}
    error = _refused(federation, config)
    assert error.claim == "signature"
    leak_guard.forbid(genuine, forged)
    leak_guard.add(str(error), repr(error))


def test_expired_token_is_refused_naming_exp(federation: Federation, tmp_path: Any,
                                             leak_guard: LeakGuard) -> None:
    genuine = federation.idp.issue("trainer", "https://sts.amazonaws.com")
    claims = jwt.decode(genuine, options={"verify_signature": False})
    token_file = tmp_path / "token"
    token_file.write_text(genuine)
    config = federation.config()
    config["source"] = {"type": "file", "path": str(token_file)}

    class LateClock:
        def time(self) -> float:
            return float(claims["exp"]) + 5

        def sleep(self, seconds: float) -> None:
            return None

    identity = Keyless(config, clock=LateClock())
    with pytest.raises(TokenRejected) as info:
        federation.s3(identity.boto3_session()).list_objects_v2(Bucket=federation.aws.bucket)
    assert info.value.claim == "exp"
    assert "fix:" in str(info.value)
    leak_guard.forbid(genuine)
    leak_guard.add(str(info.value))


def test_64_threads_on_a_cold_cache_make_one_idp_and_one_sts_call(
        federation: Federation, leak_guard: LeakGuard) -> None:
    identity = Keyless(federation.config())
    session = identity.boto3_session()
    idp_before, sts_before = federation.idp.token_requests(), federation.aws.front.calls
    barrier = threading.Barrier(64)
    snapshots: list[Any] = []
    lock = threading.Lock()

    def worker() -> None:
        barrier.wait()
        frozen = session.get_credentials().get_frozen_credentials()
        with lock:
            snapshots.append(frozen)

    threads = [threading.Thread(target=worker) for _ in range(64)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(snapshots) == 64
    assert len({s.access_key for s in snapshots}) == 1
    assert federation.idp.token_requests() - idp_before == 1
    assert federation.aws.front.calls - sts_before == 1


def test_snapshots_stay_consistent_across_many_rollovers(federation: Federation,
                                                         leak_guard: LeakGuard) -> None:
    """botocore-style race test on real credentials: 8 threads read frozen credentials while
    6-second sessions roll over; every snapshot is one issued triple, never expired, and the
    number of STS calls is bounded by the number of lifetimes that passed."""
    federation.aws.front.max_session_seconds = 6
    identity = Keyless(federation.config())
    credentials = identity.boto3_session().get_credentials()
    stop = threading.Event()
    problems: list[str] = []
    seen: dict[str, str] = {}
    lock = threading.Lock()
    calls_before = federation.aws.front.calls

    def reader() -> None:
        while not stop.is_set():
            frozen = credentials.get_frozen_credentials()
            issued = federation.aws.front.issued.get(frozen.access_key)
            with lock:
                if issued is None:
                    problems.append("unknown access key")
                elif issued.expiration <= time.time():
                    problems.append("expired snapshot")
                previous = seen.setdefault(frozen.access_key, frozen.secret_key)
                if previous != frozen.secret_key:
                    problems.append("mixed snapshot")

    threads = [threading.Thread(target=reader) for _ in range(8)]
    for thread in threads:
        thread.start()
    stop.wait(20)
    stop.set()
    for thread in threads:
        thread.join()
    calls = federation.aws.front.calls - calls_before
    assert not problems, problems[:5]
    assert len(seen) >= 3, "expected at least three credential rollovers"
    assert calls <= 20 / (6 * 0.4) + 2, f"{calls} STS calls for 20 s of 6 s sessions"
    assert federation.aws.front.expired_uses == []


def test_refreshes_reuse_one_sts_client(federation: Federation, leak_guard: LeakGuard,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore's web-identity fetcher asks for a new STS client on every refresh; keyless
    builds one per process and reuses it (a client costs ~20 ms of CPU: the training-overhead
    benchmark saw it). A spy on botocore's create_client counts the STS clients built while
    3-second sessions roll over several times."""
    import botocore.session

    created: list[str] = []
    real_create_client = botocore.session.Session.create_client

    def counting_create_client(self: Any, service_name: str, *args: Any, **kwargs: Any) -> Any:
        created.append(service_name)
        return real_create_client(self, service_name, *args, **kwargs)

    monkeypatch.setattr(botocore.session.Session, "create_client", counting_create_client)
    federation.aws.front.max_session_seconds = 3
    credentials = Keyless(federation.config()).boto3_session().get_credentials()
    calls_before = federation.aws.front.calls
    keys = set()
    deadline = time.monotonic() + 9
    while time.monotonic() < deadline:
        keys.add(credentials.get_frozen_credentials().access_key)
        time.sleep(0.05)
    assert len(keys) >= 3 and federation.aws.front.calls - calls_before >= 3
    assert created.count("sts") == 1, created


def test_a_forked_child_gets_working_credentials(federation: Federation,
                                                 leak_guard: LeakGuard) -> None:
    identity = Keyless(federation.config())
    s3 = federation.s3(identity.boto3_session())
    key = federation.prefix + "forked.txt"
    s3.put_object(Bucket=federation.aws.bucket, Key=key, Body=b"from-parent")
    pid = os.fork()
    if pid == 0:  # the child: a refresh of the subject token and a read, then exit
        status = 1
        try:
            identity.token_refresher().refresh_now()
            child_s3 = federation.s3(identity.boto3_session())
            body = child_s3.get_object(Bucket=federation.aws.bucket, Key=key)["Body"].read()
            status = 0 if body == b"from-parent" else 2
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_idp_outage_while_credentials_are_valid_fails_no_read(
        federation: Federation, leak_guard: LeakGuard) -> None:
    """8-second tokens, 4-second sessions: the IdP answers 503 for 2.5 s, then hangs for 2.5 s
    (client timeout 1 s); reads never fail, the token is refreshed after recovery. The outage
    starts on a freshly issued token, so it ends (with a hung request's timeout and a backoff)
    before the token's usable life (8 s less a 0.8 s margin) whatever the set-up took."""
    import httpx

    federation.aws.front.max_session_seconds = 4
    with FaultProxy(federation.idp.issuer) as proxy:
        config = federation.config("shortlived", token_url=proxy.rewrite(federation.idp.token_url))
        config["refresh"] = {"max_backoff_seconds": 0.5, "initial_backoff_seconds": 0.2}
        identity = Keyless(config, http=lambda: httpx.Client(timeout=1.0))
        s3 = federation.s3(identity.boto3_session())
        key = federation.prefix + "outage.txt"
        s3.put_object(Bucket=federation.aws.bucket, Key=key, Body=b"x")
        failures: list[str] = []
        reads = 0

        def read_for(seconds: float) -> None:
            nonlocal reads
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                try:
                    s3.get_object(Bucket=federation.aws.bucket, Key=key)["Body"].read()
                    reads += 1
                except Exception as exc:
                    failures.append(f"{type(exc).__name__}: {exc}")
                time.sleep(0.05)

        identity.token_refresher().refresh_now()  # a full token life for the outage
        first = identity.subject_token().fingerprint
        proxy.fail_with(503)
        read_for(2.5)
        during_503 = proxy.requests
        proxy.hang(3.0)
        read_for(2.5)
        proxy.passthrough()
        read_for(4.0)
    assert failures == []
    assert reads > 50
    assert during_503 >= 1, "the refresher never tried the IdP during the outage"
    assert during_503 < 40, "the refresher hammered the IdP instead of backing off"
    assert identity.subject_token().fingerprint != first, "no refresh after recovery"


def test_sts_throttling_is_retried_and_never_falls_back(
        federation: Federation, leak_guard: LeakGuard, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIASTATICFALLBACK00")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "static-secret-that-must-not-be-used")
    identity = Keyless(federation.config())
    s3 = federation.s3(identity.boto3_session())
    federation.aws.front.throttle_next(2)
    calls = federation.aws.front.calls
    s3.list_objects_v2(Bucket=federation.aws.bucket, Prefix=federation.prefix)
    assert federation.aws.front.calls - calls == 3  # two throttled, the third answered

    throttled = Keyless(federation.config())
    federation.aws.front.throttle_next(50)
    with pytest.raises(KeylessError) as info:
        federation.s3(throttled.boto3_session()).list_objects_v2(Bucket=federation.aws.bucket)
    assert "Throttling" in str(info.value)
    assert getattr(info.value, "retryable", False) is True
    # had the chain fallen back to the static keys, S3 would have answered InvalidAccessKeyId
    assert type(info.value).__name__ == "ExchangeFailed"
    federation.aws.front.reset_hooks()
    leak_guard.add(str(info.value))
