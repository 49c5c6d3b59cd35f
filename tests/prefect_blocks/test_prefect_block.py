"""The KeylessCredentials block against a real Prefect 3.9 server (issue 6, point 1): the
server registered the block type at start, save()/load() round-trip, secrets stay
``**********`` in repr, model_dump and the stored document as the API returns it, and a bad
block is refused at save() naming the field at fault."""

from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound
from prefect.utilities.names import obfuscate
from pydantic import BaseModel, SecretStr

from keyless import ConfigError, KeylessConfig
from keyless.config import AwsTarget, TargetsSpec
from prefect_keyless import KeylessCredentials
from tests.prefect_blocks.conftest import PrefectServer

MASK = "**********"  # pydantic's SecretStr: repr and model_dump
API_MASK = obfuscate("any")  # the server's: "********" (Prefect obfuscates to 8 stars)
ROLE = "arn:aws:iam::123456789012:role/trainer"


def _block(secret: str = "s3cr3t-value-for-tests", **extra: Any) -> KeylessCredentials:
    return KeylessCredentials(
        source={"type": "client_credentials", "token_url": "https://idp.example/token",
                "client_id": "trainer", "client_secret": secret},
        target={"aws": {"role_arn": ROLE, "region": "us-east-1"}}, **extra)


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _secret_paths(model: type[BaseModel], prefix: str, depth: int = 0) -> set[str]:
    """Every SecretStr field of the config schema, as a dotted path (token_exchange nested
    once, as the block offers it)."""
    import typing

    paths: set[str] = set()
    for name, info in model.model_fields.items():
        stack: list[Any] = [info.annotation]
        while stack:
            kind = stack.pop()
            args = typing.get_args(kind)
            if args:
                stack.extend(args)
            elif kind is SecretStr:
                paths.add(f"{prefix}{name}")
            elif isinstance(kind, type) and issubclass(kind, BaseModel) and depth < 2:
                paths |= _secret_paths(kind, f"{prefix}{name}.", depth + 1)
    return paths


def test_the_server_registered_the_block_type_at_start(prefect_server: PrefectServer) -> None:
    block_type = prefect_server.block_type
    assert block_type is not None, "the prefect.collections entry point was not loaded"
    assert block_type.slug == "keyless-credentials"
    assert block_type.name == "Keyless Credentials"
    assert str(block_type.documentation_url).startswith("https://")
    assert "OIDC" in (block_type.description or "")
    fields = prefect_server.block_schemas[0].fields
    assert set(fields["properties"]) == set(KeylessConfig.model_fields)
    assert {"source.client_secret", "source.private_key", "source.subject.client_secret",
            "source.actor.client_secret"} <= set(fields["secret_fields"])


def test_every_config_secret_is_a_prefect_secret_field() -> None:
    expected = {p for p in _secret_paths(KeylessConfig, "")
                if not p.startswith(("source.subject.subject", "source.subject.actor",
                                     "source.actor.subject", "source.actor.actor"))}
    assert expected, "the walk found no secret: the test would prove nothing"
    secret_fields = set(KeylessCredentials.model_json_schema()["secret_fields"])
    assert expected <= secret_fields, expected - secret_fields


def test_prefect_block_register_cli(prefect_server: PrefectServer) -> None:
    prefect = Path(sys.executable).parent / "prefect"
    result = subprocess.run(
        [str(prefect), "block", "register", "-m", "prefect_keyless"],
        env={**os.environ, "PREFECT_API_URL": prefect_server.api_url},
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Keyless Credentials" in result.stdout


def test_save_load_round_trip(prefect_server: PrefectServer) -> None:
    block = _block(refresh={"at_fraction": 0.4})
    name = _name("round-trip")
    block.save(name)
    loaded = KeylessCredentials.load(name)
    assert type(loaded) is KeylessCredentials
    assert loaded == block
    assert loaded.source.client_secret.get_secret_value() == "s3cr3t-value-for-tests"
    assert loaded.keyless_config() == block.keyless_config()
    assert loaded.refresh.at_fraction == 0.4
    loaded.target = TargetsSpec(aws=AwsTarget(role_arn=ROLE, region="eu-west-1"))
    loaded.save(name, overwrite=True)
    assert KeylessCredentials.load(name).target.aws.region == "eu-west-1"  # type: ignore[union-attr]


def test_secrets_stay_masked_in_repr_dump_and_the_api(prefect_server: PrefectServer) -> None:
    secret, actor_secret = "client-secret-" + uuid.uuid4().hex, "actor-secret-" + uuid.uuid4().hex
    block = _block(secret)
    nested = KeylessCredentials(
        source={"type": "token_exchange", "token_url": "https://sts.example/token",
                "subject": {"type": "client_credentials", "token_url": "https://idp.example/t",
                            "client_id": "a", "client_secret": secret},
                "actor": {"type": "client_credentials", "token_url": "https://idp.example/t",
                          "client_id": "b", "client_secret": actor_secret}},
        target={"aws": {"role_arn": ROLE}})
    for candidate in (block, nested):
        shown = [repr(candidate), str(candidate), repr(candidate.model_dump()),
                 candidate.model_dump_json(), repr(candidate.model_dump(mode="json"))]
        for text in shown:
            assert secret not in text and actor_secret not in text
            assert MASK in text
    assert block.model_dump(mode="json")["source"]["client_secret"] == MASK

    ids = [block.save(_name("masked")), nested.save(_name("masked-nested"))]
    for block_id in ids:
        response = httpx.get(f"{prefect_server.api_url}/block_documents/{block_id}")
        response.raise_for_status()
        assert secret not in response.text and actor_secret not in response.text
        data = response.json()["data"]
        source = data["source"]
        if source["type"] == "client_credentials":
            assert source["client_secret"] == API_MASK
        else:
            assert source["subject"]["client_secret"] == API_MASK
            assert source["actor"]["client_secret"] == API_MASK
    with get_client(sync_client=True) as client:  # the client reads secrets only when asked
        document = client.read_block_document(ids[1], include_secrets=False)
    assert document.data["source"]["actor"]["client_secret"] == API_MASK
    assert API_MASK == "********"


@pytest.mark.parametrize(("change", "field"), [
    ({"target": {"aws": {"role_arn": "arn:aws:iam::role/oops"}}}, "target.aws.role_arn"),
    ({"source": {"type": "kerberos"}}, "source.type"),
    ({"target": {"aws": {"role_arn": ROLE, "sts_endpoint_url": "http://sts.example"}}},
     "target.aws.sts_endpoint_url"),
])
def test_a_bad_block_is_refused_naming_the_field(prefect_server: PrefectServer,
                                                 change: dict[str, Any], field: str) -> None:
    """Refused when built (or loaded), and again at save() for a block that skipped
    validation (``model_construct``, or fields changed afterwards): nothing reaches the API."""
    values: dict[str, Any] = {
        "source": {"type": "file", "path": "/var/run/secrets/tokens/oidc"},
        "target": {"aws": {"role_arn": ROLE}}, **change}
    with pytest.raises(ConfigError) as built:
        KeylessCredentials(**values)
    assert built.value.field == field and field in str(built.value)

    name = _name("refused")
    unchecked = KeylessCredentials.model_construct(**values)  # e.g. loaded with validate=False
    with pytest.raises(ConfigError) as saved:
        unchecked.save(name)
    assert saved.value.field == field
    with get_client(sync_client=True) as client, pytest.raises(ObjectNotFound):
        client.read_block_document_by_name(name, "keyless-credentials")


def test_unknown_fields_are_refused_not_kept() -> None:
    with pytest.raises(ConfigError) as top:
        _block(colour="blue")
    assert top.value.field == "colour"
    with pytest.raises(ConfigError) as nested:
        KeylessCredentials(source={"type": "env", "varaible": "TOKEN"},
                           target={"aws": {"role_arn": ROLE}})
    assert nested.value.field == "source.varaible"


def test_a_field_changed_after_building_is_checked_at_save(prefect_server: PrefectServer) -> None:
    block = _block()
    block.keyless_config()  # cached in this process ...
    block.target = TargetsSpec.model_construct(aws=AwsTarget.model_construct(role_arn="not-an-arn"))
    with pytest.raises(ConfigError) as info:  # ... and dropped when a field changes
        block.save(_name("changed"))
    assert info.value.field == "target.aws.role_arn"


def test_a_nested_token_exchange_chain_is_refused_naming_it() -> None:
    with pytest.raises(ConfigError) as info:
        KeylessCredentials(
            source={"type": "token_exchange", "token_url": "https://a.example/t",
                    "subject": {"type": "token_exchange", "token_url": "https://b.example/t",
                                "subject": {"type": "env"}}},
            target={"aws": {"role_arn": ROLE}})
    assert info.value.field == "source.subject.type"


def test_the_cache_never_crosses_a_pickle_or_a_copy() -> None:
    block = _block()
    block.keyless_config()
    block.identity()  # outside any run: one identity for (no flow run, no task run)
    assert len(block._cache) == 1
    for clone in (pickle.loads(pickle.dumps(block)), copy.deepcopy(block)):
        assert len(clone._cache) == 0
        assert clone == block
        assert clone.source.client_secret.get_secret_value() == "s3cr3t-value-for-tests"
        assert clone.identity() is not block.identity()


def test_block_source_types_follow_the_core_schema() -> None:
    """The block spells out its source unions (Prefect cannot take the recursive core type):
    a source type added to keyless must be added here too, or this fails."""
    from typing import get_args

    from keyless.config import SourceSpec
    from prefect_keyless.fields import BlockSourceSpec, LeafSourceSpec

    def types(annotated: object) -> set[str]:
        union = get_args(annotated)[0]
        return {str(spec.model_fields["type"].default) for spec in get_args(union)}

    core = types(SourceSpec)
    assert types(BlockSourceSpec) == core
    assert types(LeafSourceSpec) == core - {"token_exchange"}


def test_the_block_form_is_made_for_a_person() -> None:
    """Issue 21: no "str"/"None" tabs on optional fields, source tabs named by their `type`,
    "Use AWS" / "Not used" on each target; the secrets stay Prefect secret fields (the
    browser test saves such a form and loads it)."""
    from keyless.config import SOURCE_SPECS

    schema = KeylessCredentials.model_json_schema()
    definitions = schema["definitions"]
    source_tabs = {definitions[o["$ref"].rsplit("/", 1)[1]]["title"]
                   for o in schema["properties"]["source"]["oneOf"]}
    assert source_tabs == {spec.model_fields["type"].default for spec in SOURCE_SPECS}
    cc = definitions["ClientCredentialsSource"]["properties"]
    assert cc["token_url"]["type"] == "string" and "anyOf" not in cc["token_url"]
    assert cc["client_secret"]["format"] == "password" and cc["client_secret"]["writeOnly"]
    assert definitions["AwsTarget"]["properties"]["region"]["type"] == "string"
    assert definitions["AwsTarget"]["title"] == "Use AWS"
    aws = definitions["TargetsSpec"]["properties"]["aws"]
    assert [o.get("title") for o in aws["anyOf"]] == [None, "Not used"]
    # unions of several kinds keep their tabs (a policy is text or a JSON object)
    assert "anyOf" in definitions["AwsTarget"]["properties"]["session_policy"]
    assert set(schema["secret_fields"]) >= {"source.client_secret", "source.private_key"}
