"""The config schema's building blocks: the frozen spec base (unknown fields refused), the
validation error that names a field's exact path, template checks and the checks every
string of a config gets (:func:`_check_strings`: no NUL byte, no user-info in a URL, URL fields
https or http to a loopback address only with ``allow_insecure_http``, host fields a bare host)."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict

from ..context import check_json_template, check_template
from ..errors import ConfigError

__all__ = ["PSEUDO_FILESYSTEMS", "is_loopback", "pseudo_filesystem", "url_origin"]


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


#: Fields holding an https URL (http only to a loopback address, with allow_insecure_http).
_URL_FIELDS = frozenset({"token_url", "issuer", "sts_endpoint_url", "impersonation_url",
                         "authority_host", "host"})
#: Fields holding a bare ``host[:port]``, spelled as ``$GCE_METADATA_HOST`` is.
_HOST_FIELDS = frozenset({"metadata_host"})
#: ``//user[:password]@`` in a URL: a credential inside a document hosts log and ship in plain
#: text (Ray prints runtime envs, Airflow shows connection extras).
_USERINFO = re.compile(r"//[^/?#\s]*@")
#: Kernel pseudo-filesystems: no place for a token directory.
PSEUDO_FILESYSTEMS = ("/proc", "/sys")


def pseudo_filesystem(path: str) -> str | None:
    """The pseudo-filesystem (:data:`PSEUDO_FILESYSTEMS`) ``path`` lies under, judged on the
    path made absolute (lexically: symlinks are not followed), or None."""
    absolute = os.path.abspath(path)
    for root in PSEUDO_FILESYSTEMS:
        if absolute == root or absolute.startswith(root + "/"):
            return root
    return None


def _values(model: BaseModel, prefix: str = "") -> Iterator[tuple[str, str, Any]]:
    """``(dotted path, field name, value)`` of every field of ``model`` and of the models
    it holds, at any depth."""
    for name in type(model).model_fields:
        value = getattr(model, name)
        path = f"{prefix}{name}"
        if isinstance(value, BaseModel):
            yield from _values(value, path + ".")
        else:
            yield path, name, value


def _nested_strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """``(dotted path, string)`` of every string in a list or mapping value, keys included."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _nested_strings(item, f"{path}.{index}")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _nested_strings(key, path)
            yield from _nested_strings(item, f"{path}.{key}")


def _check_strings(model: BaseModel, allow_insecure_http: bool) -> None:
    """The checks every string of the config gets, wherever it sits (a new field inherits
    them): no NUL byte anywhere; no user-info (``user:password@``) in a string field holding a
    URL; :data:`_URL_FIELDS` https (:func:`_check_url`); :data:`_HOST_FIELDS` a bare host.
    Raises :class:`_FieldProblem` naming the field; no message quotes the user-info."""
    for path, name, value in _values(model):
        for where, text in _nested_strings(value, path):
            if "\x00" in text:
                raise _FieldProblem(where, "contains a NUL byte; fix: remove it (a \\0 escape "
                                    "in YAML or JSON, or a stray byte in the file)")
        if not isinstance(value, str):
            continue
        scheme_less = name in _URL_FIELDS or name in _HOST_FIELDS
        if _USERINFO.search(value if "://" in value or not scheme_less else "//" + value):
            raise _FieldProblem(path, (
                "a URL with a user name or password (user:password@...) is refused: the config "
                "is logged and shipped in plain text; fix: remove the user:password@ part and "
                "give credentials the service's own way (a secret field, the environment or "
                "a credentials file)"))
        if name in _URL_FIELDS:
            _check_url(path, value, allow_insecure_http)
        elif name in _HOST_FIELDS:
            _check_host(path, value)


def _check_host(path: str, host: str) -> None:
    """``host`` is a bare ``host[:port]``: no scheme, path, query, user-info or space."""
    problem = ""
    if "://" in host:
        problem = "has a scheme"
    elif any(c in host for c in "/?#@\\") or any(c.isspace() for c in host):
        problem = "has a path, query, user or space"
    else:
        try:
            parts = urlsplit(f"http://{host}")
            parts.port  # noqa: B018 - raises ValueError for a bad port
            if not parts.hostname:
                problem = "names no host"
        except ValueError:
            problem = "has a bad port or IPv6 literal"
    if problem:
        raise _FieldProblem(path, (
            f"not a bare host[:port] ({problem}); fix: give the host alone, as "
            "GCE_METADATA_HOST is spelled, e.g. metadata.google.internal or "
            "169.254.169.254:8080 (keyless adds http:// and the path)"))


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
