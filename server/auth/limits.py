"""Per-user limits on this node (issue 12 §4): connections, op messages, upload bytes, expressions.

A user's connections are counted across every dataset; over
``max_connections_per_user`` a new one gets ``too_many`` and is closed
with 1013. Op, undo and redo messages share one token bucket per user
across all that user's connections (``user_ops_per_second``, burst
``user_ops_burst``), beside each connection's own bucket: over it, the
message gets ``rate_limited`` and nothing is applied.

The bytes of a user's HTTP request bodies (uploads, and the JSON bodies of
the other routes) share one budget per user, a token bucket in bytes
(``user_upload_bytes_per_hour``, burst the same), charged as the bytes
arrive: over it the request gets :class:`UploadLimited` (429
``rate_limited`` with ``Retry-After``) as soon as the budget runs out, in the
middle of a body too. What arrived is charged, so an aborted upload spends
budget as well.

Every expression a user sends (``add_column`` ``expr``, ``delete``
``where``, view expressions, a dashboard's, a grant's row predicate) is
held to ``user_max_expression_chars``: over it, ``too_large`` naming the
limit, and nothing is applied.

Under ``--auth none`` there is one local identity and none of these apply
(the per-connection, per-request and node-wide limits still do).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from typing import Any

from protocol import CoframeError, Error, ErrorCode
from protocol.costs import expressions_of
from protocol.server_conn import TokenBucket

from .service import Identity

__all__ = ["UserLimits", "UploadLimited", "RATE_LIMITED_TYPES"]

RATE_LIMITED_TYPES = frozenset({"op", "undo", "redo"})
_MAX_IDLE_BUCKETS = 1024  # upload buckets kept before full (idle) ones are dropped


class UploadLimited(CoframeError):
    """A user's request body over their upload budget: 429 ``rate_limited``.

    ``details``: ``limit`` (``user_upload_bytes_per_hour``), ``max`` (the
    budget), ``available`` (bytes that may be sent now) and ``retry_after``
    (seconds; the HTTP reply carries it as ``Retry-After``).
    """

    code = ErrorCode.RATE_LIMITED
    status = 429


def _human_bytes(n: float) -> str:
    """``n`` bytes as a short figure: ``512 B``, ``3.2 MiB``, ``10 GiB``."""
    unit = "B"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            break
        n /= 1024
    return f"{n:.0f} {unit}" if unit == "B" or n == int(n) else f"{n:.1f} {unit}"


class _ByteBucket:
    """``burst`` bytes, refilled at ``rate`` bytes per second of ``time.monotonic``."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.at = burst, now

    def refill(self, now: float) -> float:
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.at) * self.rate)
        self.at = now
        return self.tokens

    def seconds_until(self, needed: float) -> int:
        """Whole seconds (at least 1) until the bucket holds ``needed`` bytes (at most its burst)."""
        missing = min(needed, self.burst) - self.tokens
        return max(1, math.ceil(missing / self.rate)) if self.rate > 0 else 3600


class UserLimits:
    def __init__(
        self,
        max_connections: int,
        ops_per_second: float,
        ops_burst: int,
        upload_bytes_per_hour: int = 10 * 1024**3,
        max_expression_chars: int = 2_000,
    ) -> None:
        self.max_connections = max_connections
        self.ops_per_second, self.ops_burst = ops_per_second, ops_burst
        self.upload_bytes_per_hour = upload_bytes_per_hour
        self.max_expression_chars = max_expression_chars
        self.connections: Counter[str] = Counter()
        self._buckets: dict[str, TokenBucket] = {}
        self._uploads: dict[str, _ByteBucket] = {}

    def connect(self, identity: Identity) -> Error | None:
        """Count one more connection of ``identity``; an error (and nothing counted) over the cap."""
        if identity.local:
            return None
        if self.connections[identity.user] >= self.max_connections:
            return Error(
                ErrorCode.TOO_MANY,
                f"user '{identity.user}' has {self.max_connections} connections open on this server;"
                " close one first",
                {"limit": "max_connections_per_user", "max": self.max_connections},
            )
        self.connections[identity.user] += 1
        return None

    def disconnect(self, identity: Identity) -> None:
        if identity.local:
            return
        self.connections[identity.user] -= 1
        if self.connections[identity.user] <= 0:
            del self.connections[identity.user]
            self._buckets.pop(identity.user, None)

    def take(self, identity: Identity, kind: str, msg_id: object) -> Error | None:
        """Spend one of the user's op tokens for a message of ``kind``; an error when none is left."""
        if identity.local or kind not in RATE_LIMITED_TYPES:
            return None
        now = time.monotonic()
        bucket = self._buckets.get(identity.user)
        if bucket is None:
            bucket = self._buckets[identity.user] = TokenBucket(self.ops_per_second, self.ops_burst, now)
        if bucket.take(now):
            return None
        why = (
            f"user '{identity.user}' is over {self.ops_per_second:g} op messages per second across all"
            " their connections; batch ops into fewer messages"
        )
        details = {"limit": "user_ops_per_second", "max": self.ops_per_second}
        return Error(ErrorCode.RATE_LIMITED, why, details, re=msg_id)  # type: ignore[arg-type]

    # ------------------------------------------------------------ expressions

    def expression_cap(self, identity: Identity) -> int | None:
        """The longest expression ``identity`` may send, in characters; None under ``--auth none``."""
        return None if identity.local else self.max_expression_chars

    def check_expressions(self, identity: Identity, msg: Any) -> Error | None:
        """``too_large`` for the first expression of ``msg`` over the user's cap, else None."""
        if identity.local:
            return None
        for path, text in expressions_of(msg):
            if len(text) > self.max_expression_chars:
                message, details = self.expression_too_long(path, len(text))
                return Error(ErrorCode.TOO_LARGE, message, details, re=getattr(msg, "id", None))
        return None

    def expression_too_long(self, path: str, length: int) -> tuple[str, dict[str, Any]]:
        """The message and details of a ``too_large`` for an expression of ``length`` at ``path``."""
        cap = self.max_expression_chars
        message = (
            f"the expression at '{path}' is {length:,} characters long, over the per-user limit of"
            f" {cap:,} (user_max_expression_chars); nothing was applied: shorten it"
        )
        return message, {"limit": "user_max_expression_chars", "max": cap, "field": path, "length": length}

    # ------------------------------------------------------------ upload bytes

    def _upload_bucket(self, user: str, now: float) -> _ByteBucket:
        bucket = self._uploads.get(user)
        if bucket is None:
            if len(self._uploads) >= _MAX_IDLE_BUCKETS:  # a full bucket is as good as a new one
                for name in [u for u, b in self._uploads.items() if b.refill(now) >= b.burst]:
                    del self._uploads[name]
            budget = float(self.upload_bytes_per_hour)
            bucket = self._uploads[user] = _ByteBucket(budget / 3600.0, budget, now)
        bucket.refill(now)
        return bucket

    def check_upload(self, identity: Identity, declared: int) -> None:
        """Refuse, before reading it, a body of ``declared`` bytes over what the user has left.

        Raises:
            UploadLimited: 429 ``rate_limited``; nothing is charged.
        """
        if identity.local:
            return
        bucket = self._upload_bucket(identity.user, time.monotonic())
        if declared > bucket.tokens:
            raise self._refusal(identity, bucket, declared, f"the upload is {_human_bytes(declared)}")

    def charge_upload(self, identity: Identity, nbytes: int, received: int) -> None:
        """Charge ``nbytes`` just received (``received`` so far in this body, these included).

        Raises:
            UploadLimited: 429 ``rate_limited`` once the budget is spent; what arrived is charged.
        """
        if identity.local:
            return
        bucket = self._upload_bucket(identity.user, time.monotonic())
        if nbytes <= bucket.tokens:
            bucket.tokens -= nbytes
            return
        bucket.tokens = 0.0
        raise self._refusal(identity, bucket, received, f"{_human_bytes(received)} of this upload arrived")

    def _refusal(self, identity: Identity, bucket: _ByteBucket, needed: int, what: str) -> UploadLimited:
        budget = self.upload_bytes_per_hour
        wait = bucket.seconds_until(needed)
        if needed > budget:
            advice = "it is bigger than the whole budget: split it into smaller uploads"
        else:
            advice = f"retry in {wait} s (Retry-After)"
        message = (
            f"user '{identity.user}' is over their upload budget of {_human_bytes(budget)} per hour on this"
            f" server (user_upload_bytes_per_hour): {what}, {_human_bytes(bucket.tokens)} may be sent"
            f" now; {advice}"
        )
        details = {
            "limit": "user_upload_bytes_per_hour",
            "max": budget,
            "available": int(bucket.tokens),
            "retry_after": wait,
        }
        return UploadLimited(message, details=details)
