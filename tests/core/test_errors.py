"""keyless.errors: every error survives pickling with its type, message and extra fields."""

from __future__ import annotations

import pickle

import pytest

from keyless.errors import (
    ConfigError,
    ExchangeFailed,
    KeylessError,
    SourceMisconfigured,
    SourceUnavailable,
    TokenRejected,
)

CASES: list[tuple[KeylessError, dict[str, object]]] = [
    (KeylessError("keyless: something"), {}),
    (SourceUnavailable("source client_credentials: idp down; fix: retry"), {}),
    (SourceMisconfigured("source file: /x missing; fix: mount the token"), {}),
    (ConfigError("config: target.aws.role_arn: malformed", field="target.aws.role_arn"),
     {"field": "target.aws.role_arn"}),
    (ConfigError("config: not a mapping"), {"field": None}),
    (ExchangeFailed("aws-sts: throttled", retryable=True), {"retryable": True}),
    (ExchangeFailed("aws-sts: denied"), {"retryable": False}),
    (TokenRejected("aws-sts: audience 'x' does not match", claim="aud"),
     {"claim": "aud", "retryable": False}),
    (TokenRejected("gcp-sts: rejected"), {"claim": None, "retryable": False}),
]


@pytest.mark.parametrize(("error", "extra"), CASES, ids=lambda v: type(v).__name__)
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_round_trips_through_pickle(error: KeylessError, extra: dict[str, object],
                                    protocol: int) -> None:
    clone = pickle.loads(pickle.dumps(error, protocol=protocol))
    assert type(clone) is type(error)
    assert clone.message == error.message
    assert str(clone) == error.message
    assert clone.args == (error.message,)
    for name, value in extra.items():
        assert getattr(clone, name) == value


@pytest.mark.parametrize(("error", "extra"), CASES, ids=lambda v: type(v).__name__)
def test_str_is_the_message(error: KeylessError, extra: dict[str, object]) -> None:
    assert str(error) == error.message
    assert isinstance(error, KeylessError) and isinstance(error, Exception)


def test_hierarchy() -> None:
    assert issubclass(TokenRejected, ExchangeFailed)
    assert TokenRejected("x", claim="exp").retryable is False
    for cls in (SourceUnavailable, SourceMisconfigured, ConfigError, ExchangeFailed):
        assert issubclass(cls, KeylessError)


def test_pickled_error_keeps_working_as_an_exception() -> None:
    clone = pickle.loads(pickle.dumps(TokenRejected("aws-sts: expired", claim="exp")))
    with pytest.raises(ExchangeFailed) as info:
        raise clone
    assert info.value.claim == "exp"  # type: ignore[attr-defined]
