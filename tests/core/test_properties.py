"""Property-based tests: whatever comes in, keyless answers with a value or its own error."""

from __future__ import annotations

import base64
import copy
import json
import re
import string
from typing import Any

import hypothesis.strategies as st
import yaml
from hypothesis import HealthCheck, assume, given, settings

from keyless.config import KeylessConfig, load_config
from keyless.context import (
    TEMPLATE_FIELDS,
    WorkerContext,
    check_json_template,
    check_template,
    render_json_template,
    render_template,
    sanitize_session_name,
)
from keyless.errors import ConfigError, KeylessError
from keyless.tokens import SubjectToken

MODEST = settings(max_examples=200, deadline=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SECRET = "s3cr3t-SENTINEL-do-not-print"
ROLE = "arn:aws:iam::123456789012:role/trainer"

VALID_CONFIGS: list[dict[str, Any]] = [
    {"source": {"type": "client_credentials", "token_url": "https://idp.example/token",
                "client_id": "c", "client_secret": SECRET},
     "target": {"aws": {"role_arn": ROLE, "tags": {"rank": "{rank}"},
                        "session_policy": {"Statement": [{"Resource": "b/{rank}/*"}]}}},
     "refresh": {"at_fraction": 0.5}, "audit": {"sinks": ["log"]}},
    {"source": {"type": "token_exchange", "token_url": "https://idp.example/token",
                "subject": {"type": "file", "path": "/t"}, "client_secret": SECRET},
     "target": {"gcp": {"audience": "//iam.googleapis.com/x"}, "oauth2": {"token_url": "https://s"}},
     "allow_insecure_http": False},
    {"source": {"type": "file", "path": "/var/run/token"},
     "target": {"azure": {"tenant_id": "t", "client_id": "c"},
                "databricks": {"host": "https://dbc.example"},
                "huggingface": {"resource": "org/m"}}},
]

# ----------------------------------------------------------------------------- (a) configs

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from([10**100, -(10**100), 2**63, 1e308, "\u0000", "\ud7ff\U0001f600",
                     "http://127.0.0.1/", "{rank}", "{bad}", "file", "aws", SECRET]),
)
json_like = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=5),
                               st.dictionaries(st.text(max_size=12), children, max_size=5)),
    max_leaves=30,
)
keys = st.sampled_from(["source", "target", "type", "path", "aws", "gcp", "role_arn",
                        "token_url", "client_id", "client_secret", "refresh", "audit", "sinks",
                        "session_name", "tags", "subject", "allow_insecure_http"])
config_like = st.dictionaries(st.one_of(keys, st.text(max_size=8)), json_like, max_size=6)


def nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = {"a": [value]}
    return value


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if len(prefix) > 12:  # do not walk into a deep value injected earlier
        return found
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*prefix, index))
    return found


@st.composite
def mutated_configs(draw: st.DrawFn) -> Any:
    document = copy.deepcopy(draw(st.sampled_from(VALID_CONFIGS)))
    for _ in range(draw(st.integers(1, 4))):
        paths = [p for p in _paths(document) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = document
        for part in path[:-1]:
            parent = parent[part]
        last = path[-1]
        action = draw(st.sampled_from(["drop", "swap", "unicode", "huge", "deep", "json"]))
        if action == "drop":
            del parent[last]
        elif action == "swap":
            parent[last] = draw(scalars)
        elif action == "unicode":
            parent[last] = draw(st.text(min_size=1, max_size=20))
        elif action == "huge":
            parent[last] = draw(st.sampled_from([10**400, -(10**30), float("inf"),
                                                 float("nan"), 1e-320, "9" * 5000]))
        elif action == "deep":
            parent[last] = nested(draw(st.sampled_from([50, 300])))
        else:
            parent[last] = draw(json_like)
    return document


def _assert_config_or_config_error(value: Any) -> None:
    try:
        result = load_config(value)
    except ConfigError as exc:
        assert isinstance(exc.field, (str, type(None)))
        assert str(exc).startswith("config")
        assert SECRET not in str(exc)
    else:
        assert isinstance(result, KeylessConfig)


@MODEST
@given(config_like)
def test_arbitrary_mappings_give_config_or_config_error(document: dict[Any, Any]) -> None:
    _assert_config_or_config_error(document)


@MODEST
@given(json_like)
def test_arbitrary_json_values_give_config_or_config_error(value: Any) -> None:
    if isinstance(value, (dict, str)):
        _assert_config_or_config_error(value)
    _assert_config_or_config_error(json.dumps(value))


@MODEST
@given(mutated_configs())
def test_mutated_configs_give_config_or_config_error(document: dict[str, Any]) -> None:
    _assert_config_or_config_error(document)
    try:
        text = json.dumps(document)
    except (ValueError, RecursionError):
        return
    _assert_config_or_config_error(text)


@MODEST
@given(mutated_configs())
def test_mutated_configs_as_yaml_give_config_or_config_error(document: dict[str, Any]) -> None:
    try:
        text = yaml.safe_dump(document)
    except (yaml.YAMLError, RecursionError):
        return
    _assert_config_or_config_error(text)


@MODEST
@given(st.one_of(st.text(max_size=200),
                 st.text(alphabet="{}[]:,-?!&*|>'\"#\n\t %@`abc01", max_size=200)))
def test_arbitrary_text_gives_config_or_config_error(text: str) -> None:
    _assert_config_or_config_error(text)


def test_numbers_over_the_int_digit_limit_give_config_error() -> None:
    for text in ("9" * 5000, '{"target": {"aws": {"duration_seconds": ' + "9" * 5000 + "}}}",
                 "target:\n  aws:\n    duration_seconds: " + "9" * 5000):
        _assert_config_or_config_error(text)


def test_deep_documents_give_config_error() -> None:
    for depth in (100, 3000):
        _assert_config_or_config_error("[" * depth + "]" * depth)
        _assert_config_or_config_error("a:\n" + "".join("  " * i + "- \n" for i in range(depth)))
        deep_policy = copy.deepcopy(VALID_CONFIGS[0])
        deep_policy["target"]["aws"]["session_policy"] = nested(depth)
        _assert_config_or_config_error(deep_policy)


# ----------------------------------------------------------------------------- (b) tokens

def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


exp_values = st.one_of(
    st.integers(), st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.none(),
    st.text(max_size=10), st.sampled_from([10**400, -(10**400), "1700000000", [1], {"a": 1}]),
)
headers = st.one_of(
    st.just({"alg": "RS256", "typ": "JWT"}), st.just({"alg": "none"}),
    st.dictionaries(st.sampled_from(["alg", "typ", "kid", "b64", "crit", "x5c"]), json_like,
                    max_size=4),
)


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value).encode()


@st.composite
def mutated_jwts(draw: st.DrawFn) -> str:
    header = draw(headers)
    payload: Any = {"iss": "https://idp.example", "sub": "s", "aud": "a"}
    if draw(st.booleans()):
        payload["exp"] = draw(exp_values)
    payload = draw(st.one_of(st.just(payload), json_like))
    header_part = draw(st.one_of(st.just(b64(_json_bytes(header))),
                                 st.binary(max_size=40).map(b64), st.text(max_size=20)))
    payload_part = draw(st.one_of(st.just(b64(_json_bytes(payload))),
                                  st.binary(max_size=40).map(b64),
                                  st.just(b64(b"{not json")), st.text(max_size=20)))
    signature = draw(st.one_of(st.just(""), st.binary(max_size=64).map(b64),
                               st.text(max_size=10)))
    parts = [header_part, payload_part, signature]
    if draw(st.integers(0, 9)) == 0:
        parts = parts[: draw(st.integers(0, 2))] + parts[: draw(st.integers(0, 3))]
    return ".".join(parts)


def _template_text(raw: str) -> str:
    """The message keyless gives a plain non-JWT (its fixed words: a short ``raw`` made of
    them, like "not a JW", is in every such message without being echoed)."""
    try:
        SubjectToken.from_jwt("?" * max(len(raw), 1), "prop")
    except KeylessError as exc:
        return str(exc)
    return ""


def _assert_token_or_keyless_error(raw: str) -> None:
    try:
        token = SubjectToken.from_jwt(raw, "prop")
    except KeylessError as exc:
        quoted = raw.strip()
        assert quoted not in str(exc) or len(quoted) < 8 or quoted in _template_text(raw)
    else:
        assert isinstance(token.expires_at, float)
        assert token.expires_at == token.expires_at  # not NaN
        assert abs(token.expires_at) != float("inf")
        repr(token)
        token.issuer, token.subject, token.audience, token.issued_at  # noqa: B018


@MODEST
@given(st.text(max_size=300))
def test_arbitrary_strings_as_jwt(raw: str) -> None:
    _assert_token_or_keyless_error(raw)


@MODEST
@given(mutated_jwts())
def test_mutated_jwts(raw: str) -> None:
    _assert_token_or_keyless_error(raw)


@MODEST
@given(exp_values)
def test_any_exp_claim(exp: Any) -> None:
    raw = ".".join([b64(b'{"alg":"none"}'), b64(json.dumps({"exp": exp}).encode()), ""])
    _assert_token_or_keyless_error(raw)


# ----------------------------------------------------------------------------- (c) names

SESSION_NAME = re.compile(r"^[\w+=,.@-]{2,64}$", re.ASCII)


@MODEST
@given(st.one_of(st.text(max_size=200),
                 st.text(alphabet="-._ab/ {}é+=,@", max_size=120)))
def test_sanitized_session_name_is_always_valid(name: str) -> None:
    result = sanitize_session_name(name)
    assert SESSION_NAME.match(result), result
    assert sanitize_session_name(result) == result  # idempotent


# ----------------------------------------------------------------------------- (d) templates

placeholders = st.sampled_from(["{" + f + "}" for f in TEMPLATE_FIELDS])
template_pieces = st.one_of(placeholders, st.just("{{"), st.just("}}"),
                            st.text(alphabet=st.characters(blacklist_characters="{}"),
                                    max_size=10))
built_templates = st.lists(template_pieces, max_size=10).map("".join)
contexts = st.builds(WorkerContext, **{f: st.text(max_size=12) for f in TEMPLATE_FIELDS})


def _passes(template: str) -> bool:
    try:
        check_template(template, "t")
    except ConfigError:
        return False
    return True


@MODEST
@given(st.one_of(built_templates, st.text(alphabet=string.printable, max_size=40)), contexts)
def test_checked_templates_always_render(template: str, context: WorkerContext) -> None:
    assume(_passes(template))
    rendered = render_template(template, context)
    blank = render_template(template, WorkerContext())
    assert rendered.count("{") >= blank.count("{")  # values are inserted, never re-expanded
    assert isinstance(sanitize_session_name(rendered), str)


@MODEST
@given(built_templates)
def test_built_templates_pass_the_check(template: str) -> None:
    assert _passes(template)


@MODEST
@given(st.dictionaries(st.text(max_size=8), st.one_of(built_templates, st.integers()),
                       max_size=5), contexts)
def test_checked_json_templates_render_to_json(policy: dict[str, Any],
                                               context: WorkerContext) -> None:
    check_json_template(policy, "session_policy")
    out = json.loads(render_json_template(policy, context))
    assert set(out) == set(policy)
