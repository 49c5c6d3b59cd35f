"""The cloud-side examples (Terraform and JSON) agree with the keyless configs beside them, and
the verifying fixtures built from them accept the right token and refuse a wrong one.

AWS (examples/aws): ``main.tf``'s trust policy document says the same as ``trust-policy.json``
(principal, action, ``aud``/``sub`` conditions); its ``aud`` is what ``spec.yaml`` makes keyless
request; both documents, installed on the role in moto behind the verifying STS front, let the
matching token assume ``spec.yaml``'s role and refuse a token with another ``sub`` or ``aud``.

GCP (examples/gcp): ``main.tf``'s provider name is ``spec.yaml``'s ``target.gcp.audience``, its
allowed audience is what keyless requests, its attribute condition and its IAM binding name the
same subject and the binding names ``spec.yaml``'s service account; a verifying STS configured
from the parsed file (keyless.testing.gcp_sts) exchanges the matching token and impersonates
the service account, and refuses a token with another ``sub``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.auth.transport.requests import Request

from keyless import Keyless, KeylessError, WorkerContext, load_config
from keyless.dev.issuer import DevIssuer
from keyless.testing.aws import ACCOUNT_ID
from tests.core.example_fixtures import (
    EXAMPLES,
    allow_audiences,
    install_trust_policy,
    load_tf,
    local_config,
    resolve,
)

AWS = EXAMPLES / "aws"
GCP = EXAMPLES / "gcp"
EKS_ISSUER_HOST = "oidc.eks.us-east-1.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE"


def _listify(value: Any) -> list[Any]:
    return [value] if isinstance(value, str) else list(value)


# ----------------------------------------------------------------------------- AWS
def _terraform_trust() -> dict[str, Any]:
    """main.tf's ``aws_iam_policy_document.trust`` rendered as the IAM JSON Terraform makes."""
    tf = load_tf(AWS / "main.tf")
    provider = tf["resource"]["aws_iam_openid_connect_provider"]["cluster"]
    provider_arn = (f"arn:aws:iam::{ACCOUNT_ID}:oidc-provider/"
                    + resolve(tf, provider["url"]).removeprefix("https://"))
    statements = []
    for st in tf["data"]["aws_iam_policy_document"]["trust"]["statement"]:
        principals: dict[str, list[str]] = {}
        for p in st["principals"]:
            ids = [provider_arn if i == "${aws_iam_openid_connect_provider.cluster.arn}"
                   else resolve(tf, i) for i in p["identifiers"]]
            principals.setdefault(p["type"], []).extend(ids)
        conditions: dict[str, dict[str, list[str]]] = {}
        for c in st.get("condition", []):
            conditions.setdefault(c["test"], {})[resolve(tf, c["variable"])] = [
                resolve(tf, v) for v in c["values"]]
        statements.append({"Effect": st["effect"], "Principal": principals,
                           "Action": st["actions"], "Condition": conditions})
    return {"Version": "2012-10-17", "Statement": statements}


def _normalized(policy: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for st in policy["Statement"]:
        out.append({
            "Effect": st["Effect"],
            "Principal": {k: sorted(_listify(v)) for k, v in st["Principal"].items()},
            "Action": sorted(_listify(st["Action"])),
            "Condition": {op: {key: sorted(_listify(v)) for key, v in pairs.items()}
                          for op, pairs in st.get("Condition", {}).items()}})
    return out


def _trust_json() -> dict[str, Any]:
    return dict(json.loads((AWS / "trust-policy.json").read_text()))


def test_aws_terraform_says_what_trust_policy_json_says() -> None:
    assert _normalized(_terraform_trust()) == _normalized(_trust_json())


def test_aws_trust_conditions_match_the_keyless_config() -> None:
    config = load_config(AWS / "spec.yaml")
    assert config.target.aws is not None
    tf = load_tf(AWS / "main.tf")
    (statement,) = _normalized(_trust_json())
    equals = statement["Condition"]["StringEquals"]
    assert equals[f"{EKS_ISSUER_HOST}:aud"] == [config.target.aws.audience]
    assert resolve(tf, "${var.audience}") == config.target.aws.audience
    provider = tf["resource"]["aws_iam_openid_connect_provider"]["cluster"]
    assert [resolve(tf, c) for c in provider["client_id_list"]] == [config.target.aws.audience]
    assert equals[f"{EKS_ISSUER_HOST}:sub"] == [resolve(tf, "${var.subject}")]
    role = tf["resource"]["aws_iam_role"]["ml_training"]
    assert config.target.aws.role_arn == f"arn:aws:iam::{ACCOUNT_ID}:role/{role['name']}"
    assert config.target.aws.duration_seconds <= role["max_session_duration"]


def _aws_identity(tmp_path: Path, dev_issuer: DevIssuer, sub: str, aud: str) -> Keyless:
    token = tmp_path / f"token-{sub.replace(':', '_')}-{aud.replace('/', '_')}"
    token.write_text(dev_issuer.mint(sub, aud))
    # the example's session name and policy are per rank: this identity is rank 0's
    return Keyless(local_config(AWS / "spec.yaml", tmp_path / f"{token.name}.yaml", token),
                   context=WorkerContext.from_environment({}, rank="0", local_rank="0"))


@pytest.mark.parametrize("document", ["trust-policy.json", "main.tf"])
def test_aws_example_trust_accepts_the_subject_and_refuses_others(
        document: str, tmp_path: Path, dev_issuer: DevIssuer, aws_stack: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    trust = _trust_json() if document == "trust-policy.json" else _terraform_trust()
    config = load_config(AWS / "spec.yaml")
    assert config.target.aws is not None
    role_name = config.target.aws.role_arn.rsplit("/", 1)[1]
    # the provider accepts the wrong aud too, so that only the trust policy refuses it
    allow_audiences(aws_stack, dev_issuer.issuer, ["sts.amazonaws.com", "sts.amazonaws.com.evil"])
    arn = install_trust_policy(aws_stack, role_name, trust, EKS_ISSUER_HOST, dev_issuer.issuer)
    assert arn == config.target.aws.role_arn
    for key, value in aws_stack.env().items():
        monkeypatch.setenv(key, value)
    subject = _normalized(trust)[0]["Condition"]["StringEquals"][f"{EKS_ISSUER_HOST}:sub"][0]

    before = len(aws_stack.front.accepted)
    good = _aws_identity(tmp_path, dev_issuer, subject, "sts.amazonaws.com")
    assert good.aws().credentials().get_frozen_credentials().access_key
    accepted = aws_stack.front.accepted[before:]
    assert [(a["sub"], a["aud"], a["role"]) for a in accepted] == [
        (subject, "sts.amazonaws.com", config.target.aws.role_arn)]

    for sub, aud in (("system:serviceaccount:ml:intruder", "sts.amazonaws.com"),
                     (subject, "sts.amazonaws.com.evil")):
        wrong = _aws_identity(tmp_path, dev_issuer, sub, aud)
        with pytest.raises(KeylessError) as info:
            wrong.aws().credentials().get_frozen_credentials()
        assert "AccessDenied" in str(info.value) or "not authorized" in str(info.value), \
            str(info.value)
    assert len(aws_stack.front.accepted) == before + 1


# ----------------------------------------------------------------------------- GCP
def _gcp_facts() -> dict[str, str]:
    tf = load_tf(GCP / "main.tf")
    resources = tf["resource"]
    pool = resources["google_iam_workload_identity_pool"]["ml"]
    provider = resources["google_iam_workload_identity_pool_provider"]["k8s"]
    account = resources["google_service_account"]["trainer"]
    binding = resources["google_service_account_iam_member"]["trainer_federation"]
    condition = re.fullmatch(r"assertion\.sub == '([^']+)'",
                             resolve(tf, provider["attribute_condition"]))
    assert condition is not None, provider["attribute_condition"]
    member = resolve(tf, binding["member"])
    principal = re.fullmatch(r"principal://iam\.googleapis\.com/(projects/[^/]+/locations/"
                             r"global/workloadIdentityPools/[^/]+)/subject/(.+)", member)
    assert principal is not None, member
    (oidc,) = provider["oidc"]
    return {
        "audience": resolve(tf, tf["output"]["keyless_audience"]["value"]),
        "provider_name": (f"//iam.googleapis.com/projects/{resolve(tf, '${var.project_number}')}"
                          f"/locations/global/workloadIdentityPools/"
                          f"{pool['workload_identity_pool_id']}/providers/"
                          f"{provider['workload_identity_pool_provider_id']}"),
        "allowed_audiences": json.dumps([resolve(tf, a)
                                         for a in oidc.get("allowed_audiences", [])]),
        "subject_mapping": provider["attribute_mapping"]["google.subject"],
        "condition_subject": condition[1],
        "member_pool": principal[1],
        "member_subject": principal[2],
        "binding_role": binding["role"],
        "binding_account": binding["service_account_id"],
        "service_account": (f"{account['account_id']}@{resolve(tf, '${var.project_id}')}"
                            ".iam.gserviceaccount.com"),
        "subject": resolve(tf, "${var.subject}"),
    }


def test_gcp_terraform_matches_the_keyless_config() -> None:
    facts = _gcp_facts()
    config = load_config(GCP / "spec.yaml")
    gcp = config.target.gcp
    assert gcp is not None
    assert facts["audience"] == facts["provider_name"] == gcp.audience
    allowed = json.loads(facts["allowed_audiences"])
    assert not allowed or gcp.requested_audience in allowed, (allowed, gcp.requested_audience)
    assert gcp.requested_audience == "https:" + gcp.audience  # the provider's default
    assert facts["subject_mapping"] == "assertion.sub"
    assert facts["condition_subject"] == facts["member_subject"] == facts["subject"]
    # the same pods (the same projected service-account token) as examples/aws
    (aws_statement,) = _normalized(_trust_json())
    assert [facts["subject"]] == aws_statement["Condition"]["StringEquals"][
        f"{EKS_ISSUER_HOST}:sub"]
    assert gcp.audience.startswith("//iam.googleapis.com/" + facts["member_pool"] + "/providers/")
    assert facts["binding_role"] == "roles/iam.workloadIdentityUser"
    assert facts["binding_account"] == "${google_service_account.trainer.name}"
    assert gcp.service_account == facts["service_account"]
    assert gcp.service_account.endswith(f"@{gcp.project_id}.iam.gserviceaccount.com")


def test_gcp_sts_built_from_terraform_accepts_the_subject_and_refuses_others(
        tmp_path: Path, dev_issuer: DevIssuer, gcp_sts_factory: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    facts = _gcp_facts()
    allowed = json.loads(facts["allowed_audiences"])
    sts = gcp_sts_factory(trusted_issuer=dev_issuer.issuer, audience=facts["audience"],
                          allowed_audiences=allowed,
                          allowed_subjects=[facts["condition_subject"]],
                          service_accounts={facts["service_account"]: [facts["member_subject"]]})
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "my-project")
    gcp = load_config(GCP / "spec.yaml").target.gcp
    assert gcp is not None

    def identity(sub: str) -> Keyless:
        token = tmp_path / f"token-{sub.replace(':', '_')}"
        token.write_text(dev_issuer.mint(sub, gcp.requested_audience))
        path = local_config(GCP / "spec.yaml", tmp_path / f"{token.name}.yaml", token)
        config = yaml.safe_load(path.read_text())
        config["target"]["gcp"]["token_url"] = sts.token_url
        config["target"]["gcp"]["impersonation_url"] = sts.impersonation_url(gcp.service_account)
        return Keyless(config)

    credentials = identity(facts["subject"]).google_credentials()
    credentials.refresh(Request())
    assert credentials.token
    assert (sts.exchanges, sts.impersonations) == (1, 1)
    assert [a["sub"] for a in sts.accepted if a["kind"] == "federated"] == [facts["subject"]]

    intruder = identity("system:serviceaccount:ml:intruder").google_credentials()
    with pytest.raises(Exception) as info:  # google-auth's RefreshError, keyless's on top
        intruder.refresh(Request())
    assert "attribute condition" in str(info.value), str(info.value)
    assert sts.impersonations == 1 and len(sts.rejected) == 1
