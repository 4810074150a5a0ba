"""The message catalog (PROTOCOL.md sections 3 and 5): typed, frozen classes.

Field names match PROTOCOL.md exactly. Every message is a frozen, slotted
dataclass with a ``type`` tag and a ``FIELDS`` table (``protocol._spec``):
``from_wire`` validates and names the bad field; ``to_wire`` returns a map
whose tables are ``pyarrow.Table`` and whose binary blobs are ``bytes`` (the
envelope picks their encoding). Client messages are in ``client``, server
messages in ``server``, view messages in ``protocol.views``.
"""

from __future__ import annotations

from typing import Any

from ..views import Subscribe, Unsubscribe, View
from .client import (
    PROTOCOL_VERSION,
    QUERY_KINDS,
    Commit,
    Hello,
    Meta,
    OpBatch,
    Ping,
    Presence,
    Query,
    Redo,
    Undo,
)
from .server import Ack, Committed, Delta, Error, Overwrite, Pong, PresenceUpdate, Result, Welcome

__all__ = [
    "PROTOCOL_VERSION",
    "Hello",
    "OpBatch",
    "Undo",
    "Redo",
    "Presence",
    "Meta",
    "Ping",
    "Commit",
    "Committed",
    "Query",
    "Result",
    "QUERY_KINDS",
    "Welcome",
    "Ack",
    "Overwrite",
    "Error",
    "Delta",
    "PresenceUpdate",
    "Pong",
    "ClientMessage",
    "ServerMessage",
    "CLIENT_MESSAGES",
    "SERVER_MESSAGES",
]

ClientMessage = (
    Hello | OpBatch | Undo | Redo | Presence | Meta | Commit | Query | Ping | Subscribe | Unsubscribe
)
ServerMessage = Welcome | Ack | Error | Delta | PresenceUpdate | Meta | Committed | Result | Pong | View

CLIENT_MESSAGES: dict[str, Any] = {
    c.type: c
    for c in (Hello, OpBatch, Undo, Redo, Presence, Meta, Commit, Query, Ping, Subscribe, Unsubscribe)
}
SERVER_MESSAGES: dict[str, Any] = {
    c.type: c for c in (Welcome, Ack, Error, Delta, PresenceUpdate, Meta, Committed, Result, Pong, View)
}
