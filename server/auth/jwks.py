"""Tokens from an external identity provider: RS256 or ES256 JWTs checked against a JWKS file.

``coframe serve --auth-jwks FILE`` names a JSON Web Key Set, as a provider
publishes it at its ``jwks_uri``; the server reads the file and never
fetches anything over the network. A token goes here when its header says
RS256 or ES256, or names a ``kid`` of the set; coframe's own HS256 tokens
go to :class:`.tokens.Signer` as before (docs/security.md "External
identity provider").

Verification pins the algorithms to ``["RS256", "ES256"]`` and picks the
key by the header's ``kid``; PyJWT's :class:`jwt.PyJWK` binds each key to
its one algorithm, so an HS256 token signed with a public key's bytes (key
confusion) and ``alg: none`` are refused before a key is used. ``exp`` is
required; ``aud`` and ``iss`` are checked when configured. The claim named
by ``claim`` (``sub`` by default) is the coframe user, who must exist in
the catalog: :class:`.service.Auth` checks that.

When the provider rotates its keys, replace the file: a token naming an
unknown ``kid`` re-reads it once if it changed on disk.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any

import jwt

from .tokens import TokenInvalid

__all__ = ["ALGORITHMS", "ExternalClaims", "JwksVerifier", "read_jwks"]

log = logging.getLogger("coframe.auth")

ALGORITHMS = ("RS256", "ES256")  # the only algorithms a provider's key may verify


@dataclass(frozen=True, slots=True)
class ExternalClaims:
    """What a verified provider token says: the coframe user it maps to, and when it expires."""

    user: str
    expires: float


def read_jwks(path: str) -> dict[str, jwt.PyJWK]:
    """The RS256 and ES256 signing keys of the JWKS file ``path``, by ``kid``.

    Keys without a ``kid``, for encryption (``use: enc``), of another
    algorithm (an ``oct`` secret, RS512, ...) or that do not parse are left out.

    Raises:
        ValueError: the file is missing, unreadable, not JSON, or holds no usable key.
    """
    where = f"--auth-jwks {path}"
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{where}: no such file; save your identity provider's JWKS there") from None
    except OSError as e:
        raise ValueError(f"{where}: cannot read it ({e.strerror or e})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{where}: not JSON ({e}); save the document at the provider's jwks_uri") from None
    raw = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(raw, list):
        raise ValueError(f'{where}: not a JSON Web Key Set (expected {{"keys": [...]}})')
    keys: dict[str, jwt.PyJWK] = {}
    for entry in raw:
        if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str) or entry.get("use") == "enc":
            continue
        try:
            key = jwt.PyJWK(entry)
        except jwt.PyJWTError:
            continue
        if key.algorithm_name in ALGORITHMS:
            keys[entry["kid"]] = key
    if not keys:
        raise ValueError(f"{where}: no usable key (RS256 or ES256 signing keys with a kid)")
    return keys


class JwksVerifier:
    """Verifies a provider's tokens with the keys of one JWKS file.

    Raises:
        ValueError: (construction) the file is bad, as :func:`read_jwks` says.
    """

    def __init__(
        self, path: str, *, claim: str = "sub", audience: str | None = None, issuer: str | None = None
    ) -> None:
        self.path, self.claim, self.audience, self.issuer = path, claim, audience, issuer
        self._stamp = self._mtime()
        self.keys = read_jwks(path)

    def _mtime(self) -> float | None:
        try:
            return os.stat(self.path).st_mtime
        except OSError:
            return None

    def _reload(self) -> None:
        """Re-read the file if it changed on disk (a key rotation); a bad new file keeps the old keys."""
        stamp = self._mtime()
        if stamp is None or stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            self.keys = read_jwks(self.path)
        except ValueError as e:
            log.error("%s; keeping the keys read before", e)

    def owns(self, token: str) -> bool:
        """Whether ``token`` is the provider's to verify: its header says RS256/ES256 or names
        one of the set's kids (so an HS256 or ``alg: none`` token naming one is refused here)."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return False
        return header.get("alg") in ALGORITHMS or header.get("kid") in self.keys

    def verify(self, token: str) -> ExternalClaims:
        """The user and expiry a well-signed, unexpired provider token names.

        Raises:
            TokenInvalid: malformed, another algorithm, an unknown kid, a bad signature,
                expired, the wrong audience or issuer, or no usable user claim.
        """
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenInvalid("the token is malformed: sign in to your identity provider again") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            shown = str(alg)[:16]
            raise TokenInvalid(
                f"identity provider tokens must be signed with RS256 or ES256; this one says {shown!r}"
            )
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise TokenInvalid("the token names no signing key (kid): sign in to your provider again")
        if kid not in self.keys:
            self._reload()
        key = self.keys.get(kid)
        if key is None:
            raise TokenInvalid(
                "the token's signing key (kid) is not in --auth-jwks: ask an admin to refresh that file"
            )
        return self._decode(token, key)

    def _decode(self, token: str, key: jwt.PyJWK) -> ExternalClaims:
        try:
            payload: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=list(ALGORITHMS),
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["exp", self.claim], "verify_aud": self.audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise TokenInvalid("the token has expired: sign in to your identity provider again") from None
        except jwt.InvalidAudienceError:
            raise TokenInvalid(
                f"the token is not for this server (audience {self.audience!r}): ask your provider for one"
            ) from None
        except jwt.InvalidIssuerError:
            raise TokenInvalid(
                f"the token is not from the expected issuer {self.issuer!r}: sign in with that provider"
            ) from None
        except jwt.PyJWTError as e:
            raise TokenInvalid(f"the token does not verify ({e}): sign in to your provider again") from None
        user = payload[self.claim]
        if not isinstance(user, str) or not user:
            raise TokenInvalid(f"the token's {self.claim!r} claim must name the coframe user (a string)")
        return ExternalClaims(user, float(payload["exp"]))
