"""The target registry (issue 17): for every target, Keyless, delivery, doctor and the SDK
variables agree on the subject token's audience and its file; ``source.audience`` applies
where one audience serves every target, and a config that would request one audience for
targets needing different ones is refused naming both fields."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from keyless import ConfigError, Keyless, load_config
from keyless.config import TargetsSpec
from keyless.delivery import (
    SHADOWING_VARIABLES,
    TokenDirectory,
    delivery_audiences,
    sdk_environment,
)
from keyless.targets.registry import TARGETS
from keyless.verify.doctor import target_audience
from tests.core.helpers import make_jwt

PROVIDER = "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/x"

#: name, target spec, the subject token's audience, the variable pointing at its token file
CASES: list[tuple[str, dict[str, Any], str, str | None]] = [
    ("aws", {"role_arn": "arn:aws:iam::123456789012:role/r"}, "sts.amazonaws.com",
     "AWS_WEB_IDENTITY_TOKEN_FILE"),
    ("gcp", {"audience": PROVIDER}, "https:" + PROVIDER, None),
    ("gcp", {"audience": PROVIDER, "subject_audience": "https://gcp.example/aud"},
     "https://gcp.example/aud", None),
    ("azure", {"tenant_id": "t", "client_id": "c"}, "api://AzureADTokenExchange",
     "AZURE_FEDERATED_TOKEN_FILE"),
    ("databricks", {"host": "adb-1.azuredatabricks.net"},
     "https://adb-1.azuredatabricks.net/oidc/v1/token", "DATABRICKS_OIDC_TOKEN_FILEPATH"),
    ("huggingface", {"resource": "org/model"}, "https://huggingface.co", None),
    ("oauth2", {"token_url": "https://sts.example.com/token"}, "https://sts.example.com/token",
     None),
]


def test_the_registry_has_every_target_section_once() -> None:
    assert [kind.name for kind in TARGETS] == list(TargetsSpec.model_fields)
    assert set(SHADOWING_VARIABLES) <= {kind.name for kind in TARGETS}


@pytest.mark.parametrize(("name", "spec", "audience", "variable"), CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_keyless_delivery_and_doctor_agree_on_the_audience_and_its_file(
        tmp_path: Path, name: str, spec: dict[str, Any], audience: str,
        variable: str | None) -> None:
    token = tmp_path / "token"
    token.write_text(make_jwt(aud=audience))
    identity = Keyless({"source": {"type": "file", "path": str(token)},
                        "target": {name: spec}})
    assert identity.target_audience(name) == audience
    assert identity.default_audience() == audience
    assert target_audience(identity) == audience  # what doctor checks the token's aud against
    assert delivery_audiences(identity) == [audience]
    directory = TokenDirectory(tmp_path / "files")
    files = {aud: directory.write(aud, identity.token(aud)) for aud in delivery_audiences(identity)}
    if variable is not None:
        env = sdk_environment(identity, files)
        assert Path(env[variable]) == files[audience]


def test_source_audience_serves_every_target_that_names_none(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(make_jwt())
    identity = Keyless({"source": {"type": "file", "path": str(token),
                                   "audience": "https://sts.amazonaws.com"},
                        "target": {"aws": {"role_arn": "arn:aws:iam::123456789012:role/r"},
                                   "gcp": {"audience": PROVIDER,
                                           "subject_audience": "https:" + PROVIDER}}})
    assert identity.target_audience("aws") == "https://sts.amazonaws.com"
    assert identity.target_audience("gcp") == "https:" + PROVIDER  # its own, not the source's
    assert delivery_audiences(identity) == ["https://sts.amazonaws.com", "https:" + PROVIDER]


def test_one_source_audience_for_targets_needing_different_ones_is_refused() -> None:
    with pytest.raises(ConfigError) as refused:
        load_config({"source": {"type": "file", "path": "/t", "audience": "sts.amazonaws.com"},
                     "target": {"aws": {"role_arn": "arn:aws:iam::123456789012:role/r"},
                                "gcp": {"audience": PROVIDER}}})
    message = str(refused.value)
    assert refused.value.field == "source.audience"
    assert "target.aws.audience" in message and "target.gcp.subject_audience" in message
    assert "fix:" in message
    # one target, or targets that all name their own: source.audience is fine
    load_config({"source": {"type": "file", "path": "/t", "audience": "x"},
                 "target": {"gcp": {"audience": PROVIDER}}})


# ----------------------------------------------------------------------------- sources

def test_one_list_of_source_types_feeds_the_messages() -> None:
    from keyless.config import SOURCE_TYPES, config_json_schema

    assert {"spiffe", "aws_web_identity_token", "file", "ambient"} <= set(SOURCE_TYPES)
    with pytest.raises(ConfigError) as unknown:
        load_config({"source": {"type": "nope"}, "target": {"oauth2": {"token_url": "https://x"}}})
    assert all(name in str(unknown.value) for name in SOURCE_TYPES)
    schema = json.dumps(config_json_schema())
    assert all(f'"{name}"' in schema for name in SOURCE_TYPES)


def test_ambient_names_every_explicit_source_type_when_nothing_is_here() -> None:
    from keyless.config import SOURCE_TYPES, AmbientSource
    from keyless.errors import SourceUnavailable
    from keyless.sources.ambient import AmbientTokenSource

    def nothing_here() -> httpx.Client:  # no metadata server either
        return httpx.Client(transport=httpx.MockTransport(lambda _: httpx.Response(404)))

    source = AmbientTokenSource(AmbientSource(), environ={}, token_paths=[], http=nothing_here)
    with pytest.raises(SourceUnavailable) as missing:
        source.fetch("aud")
    assert all(name in str(missing.value) for name in SOURCE_TYPES if name != "ambient")


def test_a_config_written_out_whole_keeps_its_audiences(tmp_path: Path) -> None:
    """Hosts store whole models (a Prefect block saves every default): a default written out
    is still a default, so source.audience keeps serving the target after a round trip."""
    spec = {"source": {"type": "file", "path": "/t", "audience": "https://sts.amazonaws.com"},
            "target": {"aws": {"role_arn": "arn:aws:iam::123456789012:role/r"}}}
    whole = load_config(spec).model_dump(mode="json")
    assert whole["target"]["aws"]["audience"] == "sts.amazonaws.com"  # the default, written out
    for config in (spec, whole):
        assert Keyless(config).target_audience("aws") == "https://sts.amazonaws.com"
    whole["target"]["aws"]["audience"] = "https://own.example"
    assert Keyless(whole).target_audience("aws") == "https://own.example"


def test_the_factory_builds_every_source_of_the_registry() -> None:
    from keyless.config import SOURCE_SPECS, FileSource, TokenExchangeSource
    from keyless.sources import build_source

    for spec_class in SOURCE_SPECS:
        extra: dict[str, Any] = {}
        if spec_class is TokenExchangeSource:
            extra = {"subject": FileSource(path="/t"), "token_url": "https://sts.example"}
        source = build_source(spec_class.model_construct(**extra))
        assert source.name, spec_class
