"""The loopback GCE metadata endpoint (issue 20, GCP part): consumers that know only the
metadata server get the GCP target's token. Reference IdP → keyless's GCP exchange (with
impersonation) → the verifying fixture STS → its storage endpoint, read by

- unmodified ``google.auth.default()`` in a child process (it finds "Compute Engine" through
  ``GCE_METADATA_HOST``/``GCE_METADATA_IP``), across access-token rollovers (3 s tokens);
- ``curl`` following the metadata protocol by hand (no google-auth, no external_account file);

and the endpoint answers as the real one does to requests without ``Metadata-Flavor: Google``
or with ``X-Forwarded-For`` (403), for what it does not emulate (404), and binds loopback only.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from keyless import ConfigError, Keyless
from keyless.delivery.gcp_metadata import GcpMetadataServer
from keyless.testing.gcp_sts import GcpSts
from tests.e2e.conftest import LeakGuard
from tests.e2e.test_gcp import BUCKET, SA, config
from tests.e2e.test_gcp import sts as sts  # the fixture
from tests.support.idp import ReferenceIdP

pytestmark = pytest.mark.e2e

GOOGLE_AUTH_CHILD = """
import sys, time
import google.auth
from google.auth import compute_engine
from google.auth.transport.requests import AuthorizedSession
credentials, project = google.auth.default()
assert isinstance(credentials, compute_engine.Credentials), type(credentials)
session = AuthorizedSession(credentials)
deadline = time.time() + float(sys.argv[2])
reads = 0
while time.time() < deadline:
    reply = session.get(sys.argv[1])
    assert reply.status_code == 200, (reply.status_code, reply.text[:200])
    reads += 1
    time.sleep(0.5)
print(f"reads={reads} project={project} email={credentials.service_account_email}")
"""

CURL_CHILD = r"""
set -eu
meta="http://$GCE_METADATA_HOST/computeMetadata/v1/instance/service-accounts/default"
for i in 1 2 3 4 5 6; do
  token=$(curl -sf -H 'Metadata-Flavor: Google' "$meta/token" \
          | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
  curl -sf -H "Authorization: Bearer $token" "$1" > /dev/null
  sleep 1
done
curl -sf -H 'Metadata-Flavor: Google' "$meta/email"
"""


def _child_env(server: GcpMetadataServer) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GOOGLE_", "GCE_", "CLOUDSDK_"))}
    env.update(server.env())
    env["HOME"] = "/nonexistent"  # no gcloud ADC file: google.auth.default() goes to Compute Engine
    return env


def _impersonating(reference_idp: ReferenceIdP, sts: GcpSts) -> Keyless:
    return Keyless(config(reference_idp, sts, "shortlived", service_account=SA,
                          impersonation_url=sts.impersonation_url(SA), project_id="proj-test"))


def test_google_auth_default_reads_through_the_metadata_endpoint_across_rollovers(
        reference_idp: ReferenceIdP, sts: GcpSts, leak_guard: LeakGuard) -> None:
    sts.max_lifetime_seconds = 3
    with GcpMetadataServer(_impersonating(reference_idp, sts)) as server:
        child = subprocess.run(
            [sys.executable, "-c", GOOGLE_AUTH_CHILD, sts.object_url(BUCKET, "shard-0.bin"),
             "10"], env=_child_env(server), capture_output=True, text=True, timeout=120)
    leak_guard.add(child.stdout, child.stderr)
    assert child.returncode == 0, child.stderr[-2000:]
    assert f"project=proj-test email={SA}" in child.stdout
    reads = [r for r in sts.reads if r["object"] == "shard-0.bin"]
    assert len(reads) >= 10 and all(r["ok"] for r in reads)
    assert {r["kind"] for r in reads} == {"impersonated"}  # what it received: the SA's token
    assert sts.impersonations >= 3, "no rollover: the child kept one access token"
    assert sts.expired_uses == 0


def test_curl_following_the_metadata_protocol_reads_across_rollovers(
        reference_idp: ReferenceIdP, sts: GcpSts, leak_guard: LeakGuard) -> None:
    sts.max_lifetime_seconds = 3
    with GcpMetadataServer(_impersonating(reference_idp, sts)) as server:
        child = subprocess.run(["bash", "-c", CURL_CHILD, "curl-child",
                                sts.object_url(BUCKET, "shard-0.bin")],
                               env=_child_env(server), capture_output=True, text=True,
                               timeout=120)
    leak_guard.add(child.stdout, child.stderr)
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout.strip() == SA
    assert sts.impersonations >= 2 and sts.expired_uses == 0


def test_keyless_exec_gcp_metadata_serves_the_launch_and_refuses_others(
        reference_idp: ReferenceIdP, sts: GcpSts, tmp_path: Path,
        leak_guard: LeakGuard) -> None:
    """The user's path: ``keyless exec --gcp-metadata``; a process outside the launch (same
    user, no launch id) is refused, as the AWS endpoint does."""
    sts.max_lifetime_seconds = 3
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(config(
        reference_idp, sts, "shortlived", service_account=SA,
        impersonation_url=sts.impersonation_url(SA), project_id="proj-test")))
    outsider = ("import os, urllib.request, urllib.error\n"
                "url = 'http://' + os.environ['GCE_METADATA_HOST'] + "
                "'/computeMetadata/v1/instance/service-accounts/default/email'\n"
                "request = urllib.request.Request(url, headers={'Metadata-Flavor': 'Google'})\n"
                "try:\n    urllib.request.urlopen(request)\n    print(200)\n"
                "except urllib.error.HTTPError as error:\n    print(error.code)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "GCE_"))}
    env["HOME"] = "/nonexistent"
    child = subprocess.run(
        [sys.executable, "-m", "keyless", "exec", "--gcp-metadata", "--config", str(spec), "--",
         "bash", "-c",  # google-auth finds only the metadata server; then an outsider
         '"$0" -c "$1" "$2" 6 && env -u KEYLESS_LAUNCH_ID "$0" -c "$3"', sys.executable,
         GOOGLE_AUTH_CHILD,
         sts.object_url(BUCKET, "shard-0.bin"), outsider],
        env=env, capture_output=True, text=True, timeout=180)
    leak_guard.add(child.stdout, child.stderr)
    assert child.returncode == 0, child.stderr[-2000:]
    assert f"project=proj-test email={SA}" in child.stdout
    assert child.stdout.strip().splitlines()[-1] == "403"  # not of the launch
    assert sts.impersonations >= 2 and sts.expired_uses == 0


RANK_CHILD = """
import os, sys
import google.auth
from google.auth.transport.requests import AuthorizedSession
rank = os.environ["RANK"]
session = AuthorizedSession(google.auth.default()[0])
for _ in range(4):
    assert session.get(sys.argv[1].format(rank=rank)).status_code == 200
other = session.get(sys.argv[1].format(rank=1 - int(rank))).status_code
print(f"rank={rank} other={other}")
"""


def test_each_rank_gets_its_own_access_boundary_through_the_endpoint(
        reference_idp: ReferenceIdP, sts: GcpSts, tmp_path: Path,
        leak_guard: LeakGuard) -> None:
    """Ranks started under one `keyless exec --gcp-metadata` (RANK per process, as torchrun
    sets it) each get a token downscoped to their own shard; a process without a rank gets 403
    instead of the whole principal's token."""
    boundary = {"accessBoundaryRules": [{
        "availableResource": f"//storage.googleapis.com/projects/_/buckets/{BUCKET}",
        "availablePermissions": ["inRole:roles/storage.objectViewer"],
        "availabilityCondition": {"expression": "resource.name.startsWith("
                                  f"'projects/_/buckets/{BUCKET}/objects/shards/{{rank}}/')"}}]}
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(config(reference_idp, sts, access_boundary=boundary)))
    url = sts.object_url(BUCKET, "shards/RANK/a.bin").replace("RANK", "{rank}")
    rankless = ("import os, urllib.request, urllib.error\n"
                "request = urllib.request.Request('http://' + os.environ['GCE_METADATA_HOST'] + "
                "'/computeMetadata/v1/instance/service-accounts/default/token', "
                "headers={'Metadata-Flavor': 'Google'})\n"
                "try:\n    urllib.request.urlopen(request)\n    print('rankless=200')\n"
                "except urllib.error.HTTPError as error:\n    print(f'rankless={error.code}')\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "GCE_"))}
    env["HOME"] = "/nonexistent"
    child = subprocess.run(
        [sys.executable, "-m", "keyless", "exec", "--gcp-metadata", "--config", str(spec), "--",
         "bash", "-c", 'RANK=0 "$0" -c "$1" "$2" & RANK=1 "$0" -c "$1" "$2" & wait; '
         '"$0" -c "$3"', sys.executable, RANK_CHILD, url, rankless],
        env=env, capture_output=True, text=True, timeout=180)
    leak_guard.add(child.stdout, child.stderr)
    assert child.returncode == 0, child.stderr[-2000:]
    # two ranks share one stdout: their lines may interleave, so find the answers in it
    answers = dict(re.findall(r"rank=(\d) other=(\d{3})", child.stdout))
    assert answers == {"0": "403", "1": "403"}, child.stdout  # each denied the other's shard
    assert re.findall(r"rankless=(\d{3})", child.stdout) == ["403"], child.stdout
    downscoped = [a for a in sts.accepted if a["kind"] == "downscoped"]
    assert len(downscoped) == 2  # one per rank, not per request


def _get(server: GcpMetadataServer, path: str, **headers: str) -> httpx.Response:
    with httpx.Client(trust_env=False, timeout=10) as client:
        return client.get(f"http://{server.address}{path}", headers=headers)


def test_requests_are_answered_as_the_real_metadata_server_does(
        reference_idp: ReferenceIdP, sts: GcpSts, leak_guard: LeakGuard) -> None:
    identity = _impersonating(reference_idp, sts)
    with GcpMetadataServer(identity) as server:
        base = "/computeMetadata/v1/"
        flavor = {"Metadata-Flavor": "Google"}
        missing = _get(server, base + "instance/service-accounts/default/token")
        assert missing.status_code == 403 and missing.headers["Metadata-Flavor"] == "Google"
        forwarded = _get(server, base + "instance/service-accounts/default/token",
                         **flavor, **{"X-Forwarded-For": "10.0.0.1"})
        assert forwarded.status_code == 403
        assert _get(server, "/", **flavor).status_code == 200
        info = _get(server, base + "instance/service-accounts/default/?recursive=true",
                    **flavor).json()
        assert info == {"aliases": ["default"], "email": SA,
                        "scopes": ["https://www.googleapis.com/auth/cloud-platform"]}
        token = _get(server, base + f"instance/service-accounts/{SA}/token", **flavor).json()
        assert token["token_type"] == "Bearer" and token["expires_in"] > 0
        leak_guard.forbid(token["access_token"])
        assert _get(server, base + "project/numeric-project-id", **flavor).text == "123"
        assert _get(server, base + "universe/universe-domain", **flavor).text == "googleapis.com"
        for absent in ("instance/service-accounts/default/identity?audience=x", "instance/zone",
                       "instance/service-accounts/other@p.iam.gserviceaccount.com/token"):
            answer = _get(server, base + absent, **flavor)
            assert answer.status_code == 404 and "not emulated" in answer.text
            leak_guard.add(answer.text)
        leak_guard.add(json.dumps(info))


def test_the_endpoint_binds_loopback_only_and_needs_a_gcp_target(
        reference_idp: ReferenceIdP, sts: GcpSts) -> None:
    identity = _impersonating(reference_idp, sts)
    with pytest.raises(ConfigError):
        GcpMetadataServer(identity, host="0.0.0.0")  # the point: refused
    aws_only: dict[str, Any] = {"source": {"type": "env"}, "target": {"aws": {
        "role_arn": "arn:aws:iam::123456789012:role/x"}}}
    with pytest.raises(ConfigError) as refused:
        GcpMetadataServer(Keyless(aws_only, environ={}))
    assert refused.value.field == "target.gcp"
