"""6. Verification throughput: ``keyless.verify.Verifier`` vs PyJWT's ``PyJWKClient`` +
``jwt.decode`` on the same tokens (RS256 from the dev issuer, JWKS fetched once over loopback
by each, then cached). Both check signature, iss, aud and exp. Target: keyless / PyJWT
throughput >= 0.95."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import jwt

from keyless.verify import Verifier

from .common import Row
from .stack import AUDIENCE, Federation

__all__ = ["run"]

SECTION = "6. verification"
LIMIT = 0.95


def _per_second(verify: Callable[[str], object], tokens: list[str], rounds: int = 3) -> float:
    start = time.perf_counter()
    for _ in range(rounds):
        for token in tokens:
            verify(token)
    return rounds * len(tokens) / (time.perf_counter() - start)


def run(fed: Federation) -> list[Row]:
    issuer = fed.issuer
    tokens = [issuer.mint(f"worker-{i}", AUDIENCE) for i in range(200)]
    verifier = Verifier(issuer.issuer, AUDIENCE, allow_insecure_http=True)
    client = jwt.PyJWKClient(issuer.jwks_uri)

    def pyjwt_verify(token: str) -> object:
        key = client.get_signing_key_from_jwt(token)
        return jwt.decode(token, key.key, algorithms=["RS256"], audience=AUDIENCE,
                          issuer=issuer.issuer, options={"require": ["exp", "iat", "sub"]})

    verifier.verify(tokens[0])
    pyjwt_verify(tokens[0])
    ours, theirs = [], []
    for _ in range(5):  # alternate, so that machine load moves both alike
        ours.append(_per_second(verifier.verify, tokens))
        theirs.append(_per_second(pyjwt_verify, tokens))
    k, p = statistics.median(ours), statistics.median(theirs)
    return [Row(SECTION, "RS256 tokens verified per second", k, p, "tokens/s", k / p,
                f">= {LIMIT}", k / p >= LIMIT, "keyless Verifier vs PyJWKClient + jwt.decode")]
