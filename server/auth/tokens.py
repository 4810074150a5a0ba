"""Signed tokens: JWT through PyJWT, HS256 only, the key named by the header's ``kid``.

A token carries ``sub`` (the user), ``exp``, ``iat`` and ``jti`` (the
token id the catalog records, so it can be revoked). The signing keys live
in the catalog (``auth_keys``), so every node sharing a catalog accepts
the tokens of the others; ``COFRAME_SECRET`` adds one key that is never
stored (its ``kid`` is derived from it). Verification pins the algorithm
list to ``["HS256"]``: a token with ``alg: none`` or an RS/ES algorithm is
refused before any key is used, so an HMAC key cannot be mistaken for a
public key.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt

from ..storage.auth_types import AuthStore, SigningKey

__all__ = ["ALGORITHM", "DEFAULT_EXPIRES", "Claims", "Signer", "TokenInvalid", "parse_duration", "env_key"]

ALGORITHM = "HS256"
DEFAULT_EXPIRES = "30d"  # a token's life when none is asked for (coframe token create, POST /api/tokens)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class TokenInvalid(Exception):
    """A token that does not verify; ``reason`` says why in words a user can act on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Claims:
    user: str
    token_id: str
    issued: float
    expires: float


def parse_duration(text: str) -> float:
    """``"8h"``, ``"30d"``, ``"90m"``, ``"3600"`` (seconds) → seconds.

    Raises:
        ValueError: not a positive number with an optional unit s, m, h, d or w.
    """
    m = _DURATION.match(text)
    if m is None or float(m.group(1)) <= 0:
        raise ValueError(f"bad duration {text!r}: use a number and a unit, e.g. 30m, 8h, 30d")
    return float(m.group(1)) * _UNITS[m.group(2)]


def env_key(secret: str) -> SigningKey:
    """The key ``COFRAME_SECRET`` supplies: its kid is derived from it, so every node agrees."""
    raw = secret.encode()
    return SigningKey("env-" + hashlib.sha256(raw).hexdigest()[:12], raw, 0.0)


class Signer:
    """Issues and verifies tokens with the catalog's keys (plus an optional extra one).

    The newest key signs; every known key verifies. A token naming an
    unknown ``kid`` reloads the keys once (another node may have added one).
    """

    def __init__(self, store: AuthStore, extra: SigningKey | None = None) -> None:
        self.store = store
        self.extra = extra
        self._keys: dict[str, bytes] = {}
        self._signing: SigningKey | None = extra

    async def load(self, *, create: bool = True) -> None:
        """Read the catalog's keys; with none stored (and no extra key), create one."""
        keys = await self.store.signing_keys()
        if not keys and self.extra is None and create:
            key = SigningKey(uuid.uuid4().hex[:16], secrets.token_bytes(32), time.time())
            await self.store.add_signing_key(key)
            keys = [key]
        self._keys = {k.kid: k.secret for k in keys}
        if self.extra is not None:
            self._keys[self.extra.kid] = self.extra.secret
        self._signing = self.extra or (keys[-1] if keys else None)

    def issue(self, user: str, ttl: float, now: float | None = None) -> tuple[str, Claims]:
        """A signed token for ``user``, valid ``ttl`` seconds (the caller records its claims)."""
        if self._signing is None:
            raise RuntimeError("no signing key: call load() first")
        now = time.time() if now is None else now
        claims = Claims(user, uuid.uuid4().hex, now, now + ttl)
        payload = {"sub": user, "jti": claims.token_id, "iat": int(now), "exp": int(claims.expires)}
        token = jwt.encode(
            payload, self._signing.secret, algorithm=ALGORITHM, headers={"kid": self._signing.kid}
        )
        return token, claims

    async def verify(self, token: str) -> Claims:
        """The claims of a well-signed, unexpired token.

        Raises:
            TokenInvalid: malformed, another algorithm, unknown key, bad signature,
                expired, or missing a claim.
        """
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenInvalid("the token is malformed: sign in again for a new one") from None
        if header.get("alg") != ALGORITHM:
            raise TokenInvalid(f"tokens must be signed with {ALGORITHM}; this one says {header.get('alg')!r}")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise TokenInvalid("the token names no signing key (kid): sign in again for a new one")
        if kid not in self._keys:
            await self.load(create=False)
        key = self._keys.get(kid)
        if key is None:
            raise TokenInvalid("the token's signing key is unknown here: sign in again for a new one")
        try:
            payload: dict[str, Any] = jwt.decode(
                token, key, algorithms=[ALGORITHM], options={"require": ["sub", "jti", "iat", "exp"]}
            )
        except jwt.ExpiredSignatureError:
            raise TokenInvalid("the token has expired: ask for a new one (coframe token create)") from None
        except jwt.PyJWTError as e:
            raise TokenInvalid(f"the token does not verify ({e}): sign in again for a new one") from None
        sub, jti = payload["sub"], payload["jti"]
        if not isinstance(sub, str) or not isinstance(jti, str):
            raise TokenInvalid("the token's sub and jti must be strings")
        return Claims(sub, jti, float(payload["iat"]), float(payload["exp"]))
