"""Per-user limits on this node (issue 12 §4): connections, and op messages per second.

A user's connections are counted across every dataset; over
``max_connections_per_user`` a new one gets ``too_many`` and is closed
with 1013. Op, undo and redo messages share one token bucket per user
across all that user's connections (``user_ops_per_second``, burst
``user_ops_burst``), beside each connection's own bucket: over it, the
message gets ``rate_limited`` and nothing is applied. Under ``--auth
none`` there is one local identity and these limits do not apply (the
per-connection and node-wide ones still do).
"""

from __future__ import annotations

import time
from collections import Counter

from protocol import Error, ErrorCode
from protocol.server_conn import TokenBucket

from .service import Identity

__all__ = ["UserLimits", "RATE_LIMITED_TYPES"]

RATE_LIMITED_TYPES = frozenset({"op", "undo", "redo"})


class UserLimits:
    def __init__(self, max_connections: int, ops_per_second: float, ops_burst: int) -> None:
        self.max_connections = max_connections
        self.ops_per_second, self.ops_burst = ops_per_second, ops_burst
        self.connections: Counter[str] = Counter()
        self._buckets: dict[str, TokenBucket] = {}

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
