"""The config schema's building blocks: the frozen spec base (unknown fields refused), the
validation error that names a field's exact path, template checks and URL checks (https,
or http to a loopback address only with ``allow_insecure_http``)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict

from ..context import check_json_template, check_template
from ..errors import ConfigError

__all__ = ["is_loopback", "url_origin"]


def is_loopback(host: str) -> bool:
    """Whether ``host`` is ``localhost`` or a loopback IP address (``[::1]`` accepted)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def url_origin(url: str) -> str:
    """``scheme://host[:port]`` of ``url`` (the Hub URL a Hugging Face subject token names)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}"


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class _FieldProblem(ValueError):
    """Raised inside validators: ``path`` is relative to the model being validated, so a
    model-level check can still name the exact field (pydantic would only name the model).
    A ValueError, so pydantic wraps it and :func:`load_config` turns it into a ConfigError."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


def _check_template_at(template: str | dict[str, Any], path: str, *,
                       json_document: bool = False) -> None:
    try:
        if json_document:
            check_json_template(template, path)
        else:
            check_template(str(template), path)
    except ConfigError as exc:
        where = exc.field or path
        raise _FieldProblem(where, exc.message.removeprefix(f"config: {where}: ")) from None
    except RecursionError:
        raise _FieldProblem(path, "nested too deeply; fix: flatten the document") from None



_URL_FIELDS = frozenset({"token_url", "issuer", "sts_endpoint_url", "impersonation_url",
                         "authority_host", "host"})


def _urls(model: BaseModel, prefix: str = "") -> Iterator[tuple[str, str]]:
    for name in type(model).model_fields:
        value = getattr(model, name)
        path = f"{prefix}{name}"
        if isinstance(value, BaseModel):
            yield from _urls(value, path + ".")
        elif name in _URL_FIELDS and isinstance(value, str):
            yield path, value


def _check_url(path: str, url: str, allow_insecure_http: bool) -> None:
    try:
        parts = urlsplit(url if "://" in url else f"https://{url}")
        host = parts.hostname
    except ValueError:  # e.g. an invalid IPv6 literal
        raise _FieldProblem(path, "not a valid URL; fix: give an https:// URL") from None
    shown = f"{parts.scheme}://{host}" if host else "the URL"  # never userinfo: may be a secret
    if parts.scheme == "https" and host:
        return
    if parts.scheme == "http" and host:
        if is_loopback(host) and allow_insecure_http:
            return
        if is_loopback(host):
            raise _FieldProblem(path, f"{shown}: http:// is allowed only for loopback addresses "
                                "and only with allow_insecure_http: true; fix: use https:// "
                                "or set allow_insecure_http: true for a local test")
        raise _FieldProblem(path, f"{shown}: http:// is allowed only for loopback addresses "
                            "(even with allow_insecure_http); fix: use https://")
    raise _FieldProblem(path, f"{shown} is not an https:// URL; fix: use https://")
