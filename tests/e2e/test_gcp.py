"""Reference IdP → client_credentials source → GCP target (google-auth) → the verifying
fixture STS (keyless.testing.gcp_sts) → its storage endpoint. Issue 4, GCP part."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from google.auth.transport.requests import AuthorizedSession, Request

from keyless import ExchangeFailed, Keyless, TokenRejected, WorkerContext
from keyless.audit import AuditLog, MemorySink
from keyless.delivery import worker_environment
from keyless.testing.gcp_sts import GcpSts
from tests.e2e.conftest import LeakGuard
from tests.support.idp import ReferenceIdP

pytestmark = pytest.mark.e2e

PROVIDER = ("//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/p/"
            "providers/x")
AUDIENCE = "https:" + PROVIDER  # GCP's default allowed audience
SA = "trainer@proj.iam.gserviceaccount.com"
BUCKET = "train-data"


@pytest.fixture
def sts(reference_idp: ReferenceIdP, gcp_sts_factory: Any) -> GcpSts:
    server: GcpSts = gcp_sts_factory(trusted_issuer=reference_idp.issuer, audience=PROVIDER,
                                     service_accounts={SA: ["trainer", "shortlived"]})
    for name in ("shard-0.bin", "shards/0/a.bin", "shards/1/a.bin"):
        server.put_object(BUCKET, name, f"bytes of {name}".encode())
    return server


def config(idp: ReferenceIdP, sts: GcpSts, client: str = "trainer", *,
           audience: str = AUDIENCE, **gcp: Any) -> dict[str, Any]:
    return {"source": {"type": "client_credentials", "token_url": idp.token_url,
                       "client_id": client, "client_secret": idp.client_secrets[client],
                       "audience": audience},
            "target": {"gcp": {"audience": PROVIDER, "token_url": sts.token_url, **gcp}},
            "allow_insecure_http": True}


def test_federated_token_reads_an_object(reference_idp: ReferenceIdP, sts: GcpSts,
                                         leak_guard: LeakGuard) -> None:
    sink = MemorySink()
    identity = Keyless(config(reference_idp, sts), audit=AuditLog([sink]))
    session = AuthorizedSession(identity.google_credentials())
    reply = session.get(sts.object_url(BUCKET, "shard-0.bin"))
    assert reply.status_code == 200 and reply.content == b"bytes of shard-0.bin"
    assert sts.exchanges == 1
    assert sts.accepted[0]["sub"] == "trainer" and sts.accepted[0]["aud"] == AUDIENCE
    assert sts.reads[-1]["kind"] == "federated"
    exchanges = [e for e in sink.events if e.kind == "exchange"]
    assert [(e.target, e.sub, e.principal) for e in exchanges] == [("gcp", "trainer", PROVIDER)]
    leak_guard.forbid(identity.token(), identity.google_credentials().token)
    leak_guard.add(repr(identity), repr(identity.google_credentials()),
                   *(e.to_json() for e in sink.events))


def test_impersonation_reads_as_the_service_account(reference_idp: ReferenceIdP, sts: GcpSts,
                                                    leak_guard: LeakGuard) -> None:
    identity = Keyless(config(reference_idp, sts, service_account=SA,
                              impersonation_url=sts.impersonation_url(SA),
                              token_lifetime_seconds=900))
    session = AuthorizedSession(identity.google_credentials())
    assert session.get(sts.object_url(BUCKET, "shard-0.bin")).status_code == 200
    assert (sts.exchanges, sts.impersonations) == (1, 1)
    assert sts.reads[-1]["principal"] == SA and sts.reads[-1]["kind"] == "impersonated"


def test_32_concurrent_first_uses_make_one_exchange(reference_idp: ReferenceIdP, sts: GcpSts,
                                                    leak_guard: LeakGuard) -> None:
    identity = Keyless(config(reference_idp, sts, service_account=SA,
                              impersonation_url=sts.impersonation_url(SA)))
    credentials = identity.google_credentials()
    idp_before = reference_idp.token_requests()
    barrier = threading.Barrier(32)
    tokens: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        headers: dict[str, str] = {}
        barrier.wait()
        credentials.before_request(Request(), "GET", sts.object_url(BUCKET, "x"), headers)
        with lock:
            tokens.append(headers["authorization"])

    threads = [threading.Thread(target=worker) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(tokens) == 32 and len(set(tokens)) == 1
    assert (sts.exchanges, sts.impersonations) == (1, 1)
    assert reference_idp.token_requests() - idp_before == 1


def test_wrong_audience_is_refused_naming_aud(reference_idp: ReferenceIdP, sts: GcpSts,
                                              leak_guard: LeakGuard) -> None:
    identity = Keyless(config(reference_idp, sts, audience="https://other.example"))
    with pytest.raises(TokenRejected) as info:
        AuthorizedSession(identity.google_credentials()).get(sts.object_url(BUCKET, "x"))
    assert info.value.claim == "aud"
    assert "https://other.example" in str(info.value) and "fix:" in str(info.value)
    leak_guard.forbid(identity.token())
    leak_guard.add(str(info.value), repr(info.value))


def test_sts_outage_is_a_retryable_exchange_failure(reference_idp: ReferenceIdP, sts: GcpSts,
                                                    leak_guard: LeakGuard) -> None:
    identity = Keyless(config(reference_idp, sts))
    sts.fail_next(1, status=503)
    with pytest.raises(ExchangeFailed) as info:
        identity.gcp().access_token()
    assert info.value.retryable and not isinstance(info.value, TokenRejected)
    identity.gcp().refresher.invalidate()
    token, _ = identity.gcp().access_token(force=True)  # recovers once STS answers again
    assert sts.issued(token) is not None
    leak_guard.add(str(info.value))


def test_access_boundary_confines_each_rank_to_its_shard(reference_idp: ReferenceIdP,
                                                          sts: GcpSts,
                                                          leak_guard: LeakGuard) -> None:
    boundary = {"accessBoundaryRules": [{
        "availableResource": f"//storage.googleapis.com/projects/_/buckets/{BUCKET}",
        "availablePermissions": ["inRole:roles/storage.objectViewer"],
        "availabilityCondition": {"expression": "resource.name.startsWith("
                                  f"'projects/_/buckets/{BUCKET}/objects/shards/{{rank}}/')"}}]}
    identity = Keyless(config(reference_idp, sts, access_boundary=boundary),
                       context=WorkerContext(rank="1"))
    session = AuthorizedSession(identity.google_credentials())
    assert session.get(sts.object_url(BUCKET, "shards/1/a.bin")).status_code == 200
    assert session.get(sts.object_url(BUCKET, "shards/0/a.bin")).status_code == 403
    assert [a["kind"] for a in sts.accepted] == ["federated", "downscoped"]


CHILD = """
import os, sys, time
import google.auth
from google.auth.transport.requests import AuthorizedSession
credentials, project = google.auth.default()
assert project == os.environ["GOOGLE_CLOUD_PROJECT"], project
session = AuthorizedSession(credentials)
deadline = time.time() + float(sys.argv[2])
reads = 0
while time.time() < deadline:
    reply = session.get(sys.argv[1])
    assert reply.status_code == 200, reply.status_code
    reads += 1
    time.sleep(0.5)
print("reads", reads)
"""


def test_subprocess_uses_generated_external_account_across_rollover(
        reference_idp: ReferenceIdP, sts: GcpSts, leak_guard: LeakGuard) -> None:
    sts.max_lifetime_seconds = 3
    identity = Keyless(config(reference_idp, sts, "shortlived", service_account=SA,
                              impersonation_url=sts.impersonation_url(SA)))
    with worker_environment(identity) as variables:
        path = Path(variables["GOOGLE_APPLICATION_CREDENTIALS"])
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        info = json.loads(path.read_text())
        assert info["type"] == "external_account" and info["audience"] == PROVIDER
        assert Path(info["credential_source"]["file"]).parent == path.parent
        env = {k: v for k, v in os.environ.items() if not k.startswith("GOOGLE_")}
        env.update(variables, GOOGLE_CLOUD_PROJECT="proj-test")
        child = subprocess.run([sys.executable, "-c", CHILD, sts.object_url(BUCKET, "shard-0.bin"),
                                "11"], env=env, capture_output=True, text=True, timeout=120)
    leak_guard.add(child.stdout, child.stderr, json.dumps(variables), path.name)
    assert child.returncode == 0, child.stderr[-2000:]
    subject_tokens = {a["subject_sha256"] for a in sts.accepted if a["kind"] == "federated"}
    assert len(subject_tokens) >= 2, "the child never saw a rotated token file"
    assert sts.impersonations >= 2 and sts.expired_uses == 0


def test_doctor_passes_a_correct_gcp_config(reference_idp: ReferenceIdP, sts: GcpSts,
                                            tmp_path: Path, leak_guard: LeakGuard) -> None:
    """`keyless doctor --config` checks the token against the audience keyless requests for
    the GCP target (https: + the provider; it once expected the provider's bare name and
    failed a correct config) and dry-runs the exchange at the fixture STS."""
    spec = config(reference_idp, sts)
    del spec["source"]["audience"]  # the target's own audience is requested
    path = tmp_path / "gcp.json"
    path.write_text(json.dumps(spec))
    result = subprocess.run([sys.executable, "-m", "keyless", "doctor", "--config", str(path),
                             "--json"], capture_output=True, text=True, timeout=120)
    leak_guard.add(result.stdout, result.stderr)
    report, _ = json.JSONDecoder().raw_decode(result.stdout)
    assert result.returncode == 0 and report["ok"] is True, result.stdout + result.stderr
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["aud"]["status"] == "ok" and AUDIENCE in checks["aud"]["detail"]
    assert checks["exchange"]["status"] == "ok"
    assert checks["exchange"]["detail"].startswith("gcp: GCP STS gave an access token")
    assert sts.exchanges == 1 and sts.accepted[0]["aud"] == AUDIENCE


BOTH = r"""
import json, os, sys
import boto3, google.auth
from google.auth.transport.requests import AuthorizedSession
credentials, _ = google.auth.default()
reply = AuthorizedSession(credentials).get(sys.argv[1])
arn = boto3.client("sts").get_caller_identity()["Arn"]
print(json.dumps({"gcs": reply.status_code, "arn": arn}))
"""


def test_a_source_audience_for_aws_beside_a_gcp_target_with_its_own(
        federation: Any, reference_idp: ReferenceIdP, sts: GcpSts, tmp_path: Path,
        leak_guard: LeakGuard) -> None:
    """source.audience serves the AWS target; the GCP target names its own
    (subject_audience), so each token file carries its own target's aud: the child's plain
    boto3 and google.auth.default() both work under one `keyless exec`."""
    import yaml

    spec = federation.config(session_name="both-{pid}")
    assert spec["source"]["audience"] == "https://sts.amazonaws.com"
    spec["target"]["gcp"] = {"audience": PROVIDER, "token_url": sts.token_url,
                             "subject_audience": AUDIENCE, "project_id": "proj-test"}
    path = tmp_path / "both.yaml"
    path.write_text(yaml.safe_dump(spec))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOOGLE_")}
    env.update(federation.aws.env())
    result = subprocess.run([sys.executable, "-m", "keyless", "exec", "--config", str(path),
                             "--", sys.executable, "-c", BOTH,
                             sts.object_url(BUCKET, "shard-0.bin")],
                            capture_output=True, text=True, env=env, timeout=120)
    leak_guard.add(result.stdout, result.stderr)
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["gcs"] == 200 and "/both-" in answer["arn"]
    assert sts.accepted[0]["aud"] == AUDIENCE  # not the AWS audience
    assert federation.aws.front.accepted[-1]["aud"] in ("sts.amazonaws.com",
                                                       "https://sts.amazonaws.com")


RANK_READER = r"""
import json, os, sys
import google.auth
from google.auth.transport.requests import AuthorizedSession
credentials, _ = google.auth.default()
reply = AuthorizedSession(credentials).get(sys.argv[1])
print(json.dumps({"rank": os.environ["RANK"], "status": reply.status_code}), flush=True)
"""


def test_torchrun_ranks_read_through_google_auth_default(
        reference_idp: ReferenceIdP, sts: GcpSts, tmp_path: Path, leak_guard: LeakGuard) -> None:
    """`keyless exec --config F -- torchrun ...` with a GCP target: every rank's unmodified
    `google.auth.default()` finds the generated external_account file and reads through the
    fixture STS (GCP has no per-session name; the job's principal is each rank's)."""
    import yaml

    path = tmp_path / "gcp.yaml"
    path.write_text(yaml.safe_dump(config(reference_idp, sts, project_id="proj-test")))
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOOGLE_")}
    result = subprocess.run(
        [sys.executable, "-m", "keyless", "exec", "--config", str(path), "--", torchrun,
         "--standalone", "--nproc-per-node", "2", "--no-python", sys.executable, "-c",
         RANK_READER, sts.object_url(BUCKET, "shard-0.bin")],
        capture_output=True, text=True, env={**env, "OMP_NUM_THREADS": "1"}, timeout=300)
    leak_guard.add(result.stdout, result.stderr)
    assert result.returncode == 0, result.stderr[-3000:]
    answers = sorted((json.loads(found) for found in re.findall(r"\{[^{}]*\}", result.stdout)),
                     key=lambda a: a["rank"])  # the ranks share one stdout: find, not split
    assert answers == [{"rank": "0", "status": 200}, {"rank": "1", "status": 200}]
    assert all(a["aud"] == AUDIENCE for a in sts.accepted)
