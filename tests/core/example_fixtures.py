"""What the example and docs tests share: Terraform files read as data, the example trust
policies installed on the local AWS stack, a local copy of an example config that points at
the local fixtures, and a loopback stand-in for GitHub Actions' OIDC token endpoint.

- :func:`load_tf` parses a ``.tf`` file (python-hcl2) into plain data: quotes around strings
  and block labels removed, ``__is_block__``/``__comments__`` markers dropped; expressions stay
  as ``${...}`` text. :func:`resolve` substitutes ``${var.NAME}`` from the file's variable
  defaults and ``${TYPE.NAME.ATTR}`` from literal attributes of its own resources; anything else
  is left in place (a test comparing it with a literal then fails, as it should).
- :func:`install_trust_policy` writes an example trust policy onto a role in moto, with the
  example's issuer host replaced by the local issuer's, so the verifying STS front judges real
  tokens against the example's own ``aud``/``sub`` conditions.
- :func:`local_config` copies an example keyless config for this machine: the ``file`` source
  reads a given token file and ``allow_insecure_http`` is on (the dev issuer is http loopback).
- :class:`GithubOidcEndpoint`: ``GET ?audience=A`` with ``Authorization: Bearer <request
  token>`` answers ``{"value": JWT}`` signed by the dev issuer for the configured ``sub``, as
  the runner's ``ACTIONS_ID_TOKEN_REQUEST_URL`` does; a wrong bearer gets 401.
"""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import hcl2
import yaml

from keyless.delivery.loopback import LoopbackHttpServer, QuietHandler
from keyless.dev.issuer import DevIssuer

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"

__all__ = ["EXAMPLES", "ROOT", "GithubOidcEndpoint", "allow_audiences", "install_trust_policy",
           "load_tf", "local_config", "resolve"]


# ----------------------------------------------------------------------------- Terraform
def _unquote(value: str) -> str:
    if len(value) >= 2 and value.startswith('"') and value.endswith('"'):
        return str(json.loads(value))
    return value


def _plain(node: Any) -> Any:
    if isinstance(node, dict):
        return {_unquote(k): _plain(v) for k, v in node.items()
                if k not in ("__is_block__", "__comments__", "__inline_comments__")}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    if isinstance(node, str):
        return _unquote(node)
    return node


def load_tf(path: Path) -> dict[str, Any]:
    """The file as plain data: ``{"resource": {TYPE: {NAME: {...}}}, "data": ...,
    "variable": {NAME: {...}}, "output": {NAME: {...}}}`` (blocks merged by label)."""
    with path.open(encoding="utf-8") as handle:
        raw = _plain(hcl2.load(handle))
    merged: dict[str, Any] = {}
    for kind in ("resource", "data"):
        for block in raw.get(kind, []):
            for type_, named in block.items():
                merged.setdefault(kind, {}).setdefault(type_, {}).update(named)
    for kind in ("variable", "output"):
        for block in raw.get(kind, []):
            merged.setdefault(kind, {}).update(block)
    return merged


_REF = re.compile(r"\$\{([A-Za-z0-9_.]+)\}")


def resolve(tf: dict[str, Any], text: str) -> str:
    """``text`` with ``${var.X}`` and ``${TYPE.NAME.ATTR}`` (literal attributes) filled in."""
    def one(match: re.Match[str]) -> str:
        parts = match[1].split(".")
        if parts[0] == "var" and len(parts) == 2:
            default = tf.get("variable", {}).get(parts[1], {}).get("default")
            return resolve(tf, default) if isinstance(default, str) else match[0]
        if len(parts) == 3:
            value = tf.get("resource", {}).get(parts[0], {}).get(parts[1], {}).get(parts[2])
            if isinstance(value, str):
                return resolve(tf, value)
        return match[0]

    previous = None
    while previous != text:
        previous, text = text, _REF.sub(one, text)
    return text


# ----------------------------------------------------------------------------- AWS
def install_trust_policy(aws_stack: Any, role_name: str, trust: dict[str, Any],
                         example_issuer_host: str, local_issuer: str) -> str:
    """Create or update ``role_name`` with ``trust`` (the example issuer host replaced by the
    local issuer's host); the role may do ``s3:*`` on the stack's bucket. Returns its ARN."""
    local_host = local_issuer.split("://", 1)[1].rstrip("/")
    document = json.dumps(trust).replace(example_issuer_host, local_host)
    iam = aws_stack.client("iam")
    try:
        arn = iam.create_role(RoleName=role_name, AssumeRolePolicyDocument=document,
                              MaxSessionDuration=3600)["Role"]["Arn"]
    except iam.exceptions.EntityAlreadyExistsException:
        iam.update_assume_role_policy(RoleName=role_name, PolicyDocument=document)
        arn = iam.get_role(RoleName=role_name)["Role"]["Arn"]
    iam.put_role_policy(RoleName=role_name, PolicyName="permissions",
                        PolicyDocument=json.dumps(aws_stack.default_permissions()))
    return str(arn)


def allow_audiences(aws_stack: Any, issuer: str, audiences: list[str]) -> None:
    """Make the stack's IAM OIDC provider for ``issuer`` accept ``audiences`` as client ids
    too (recreated with the union: moto 5.2.5 answers AddClientIDToOpenIDConnectProvider with
    an HTTP 500)."""
    arn = aws_stack.register_oidc_provider(issuer, [audiences[0]])
    iam = aws_stack.client("iam")
    have = iam.get_open_id_connect_provider(OpenIDConnectProviderArn=arn)["ClientIDList"]
    if set(audiences) <= set(have):
        return
    thumbprints = iam.get_open_id_connect_provider(
        OpenIDConnectProviderArn=arn)["ThumbprintList"]
    iam.delete_open_id_connect_provider(OpenIDConnectProviderArn=arn)
    iam.create_open_id_connect_provider(Url=issuer, ClientIDList=sorted(set(have) | set(audiences)),
                                       ThumbprintList=thumbprints)


def local_config(example: Path, destination: Path, token_file: Path | None = None,
                 **overrides: Any) -> Path:
    """Write ``example`` to ``destination`` for this machine: a ``file`` source reads
    ``token_file``, ``allow_insecure_http: true``, then ``overrides`` at the top level."""
    config = yaml.safe_load(example.read_text(encoding="utf-8"))
    if token_file is not None:
        assert config["source"]["type"] == "file", example
        config["source"]["path"] = str(token_file)
    config["allow_insecure_http"] = True
    config.update(overrides)
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return destination


# ----------------------------------------------------------------------------- GitHub
class _GithubHandler(QuietHandler):
    def do_GET(self) -> None:
        owner: GithubOidcEndpoint = self.server.owner  # type: ignore[attr-defined]
        query = parse_qs(urlsplit(self.path).query)
        if self.headers.get("Authorization") != f"Bearer {owner.request_token}":
            self.send_json(401, {"message": "Bad credentials"})
            return
        audience = query.get("audience", [owner.default_audience])[0]
        owner.audiences.append(audience)
        token = owner.issuer.mint(owner.subject, audience, **owner.claims)
        self.send_json(200, {"count": 1, "value": token})



class GithubOidcEndpoint:
    """A loopback stand-in for the runner's OIDC token endpoint (see the module docstring).

    ``env()`` gives ``ACTIONS_ID_TOKEN_REQUEST_URL`` / ``_TOKEN`` as a runner sets them (the
    URL carries a query already, as GitHub's does); ``audiences`` records what was requested.
    """

    def __init__(self, issuer: DevIssuer, subject: str, **claims: Any) -> None:
        self.issuer, self.subject, self.claims = issuer, subject, claims
        self.default_audience = "https://github.com/my-org"
        self.request_token = secrets.token_urlsafe(24)
        self.audiences: list[str] = []
        self._server = LoopbackHttpServer(_GithubHandler, component="github oidc fixture",
                                          attributes={"owner": self})

    def __enter__(self) -> GithubOidcEndpoint:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()

    def env(self) -> dict[str, str]:
        return {"ACTIONS_ID_TOKEN_REQUEST_URL": self._server.url + "/idtoken?api-version=2.0",
                "ACTIONS_ID_TOKEN_REQUEST_TOKEN": self.request_token,
                "GITHUB_ACTIONS": "true"}
