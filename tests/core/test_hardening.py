"""Bad input gets a typed error naming the field or claim and the fix (issue 18, first items):
a role ARN with a trailing newline, a session policy that is not JSON or is over AWS's size
limit, a key given twice in a config document, nonsense algorithms and leeways for the
verifier, NumericDate claims too large for a float, a port out of range."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from keyless import ConfigError, TokenRejected, load_config
from keyless.verify import Verifier, check_times

ROLE = "arn:aws:iam::123456789012:role/trainer"


def _aws(**aws: object) -> dict[str, object]:
    return {"source": {"type": "file", "path": "/t"}, "target": {"aws": {"role_arn": ROLE, **aws}}}


def test_a_role_arn_with_a_trailing_newline_is_refused() -> None:
    with pytest.raises(ConfigError) as refused:
        load_config(_aws(role_arn=ROLE + "\n"))
    assert refused.value.field == "target.aws.role_arn"
    with pytest.raises(ConfigError):
        load_config(_aws(policy_arns=["arn:aws:iam::aws:policy/ReadOnlyAccess\n"]))


@pytest.mark.parametrize(("policy", "problem"), [
    ("not json at all", "not JSON"),
    ('["a list"]', "not a JSON object"),
    ({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObject",
                                              "Resource": "arn:aws:s3:::b/" + "x" * 2100}]},
     "over AWS's limit of 2048"),
])
def test_a_session_policy_must_be_a_json_object_within_the_limit(policy: object,
                                                                 problem: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_config(_aws(session_policy=policy))
    assert refused.value.field == "target.aws.session_policy"
    assert problem in str(refused.value) and "fix:" in str(refused.value)


@pytest.mark.parametrize("document", [
    "source: {type: file, path: /a}\nsource: {type: env}\ntarget: {oauth2: {token_url: 'https://x'}}",
    '{"source": {"type": "file", "path": "/a"}, "target": {"oauth2": {"token_url": "https://x",'
    ' "token_url": "https://y"}}}',
])
def test_a_key_given_twice_is_refused_naming_it(document: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_config(document)
    assert "given twice" in str(refused.value) and refused.value.field in ("source", "token_url")


@pytest.mark.parametrize("algorithms", [("RSXYZ",), ("ES999",), ("HS256",), ("none",), ()])
def test_nonsense_algorithms_are_refused_at_construction(algorithms: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError) as refused:
        Verifier("https://issuer.example", "aud", algorithms=algorithms)
    assert refused.value.field == "algorithms"


@pytest.mark.parametrize("leeway", [-1.0, 1e9, float("nan")])
def test_a_leeway_out_of_range_is_refused(leeway: float) -> None:
    with pytest.raises(ConfigError) as refused:
        Verifier("https://issuer.example", "aud", leeway_seconds=leeway)
    assert refused.value.field == "leeway_seconds"


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
def test_a_date_too_large_for_a_float_is_a_rejected_claim(claim: str) -> None:
    with pytest.raises(TokenRejected) as rejected:
        check_times(json.loads(f'{{"{claim}": {10**400}}}'), 1_700_000_000.0, 60.0)
    assert rejected.value.claim == claim


def test_serve_credentials_refuses_a_port_out_of_range() -> None:
    result = subprocess.run([sys.executable, "-m", "keyless", "serve-credentials", "--config",
                             "x.yaml", "--port", "99999"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert "99999 is not a port" in result.stderr and "Traceback" not in result.stderr
