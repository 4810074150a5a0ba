"""The client's exceptions: a rejected request, and a room that is closed."""

from __future__ import annotations

from typing import Any

__all__ = ["OpRejected", "ConnectionClosed"]


class OpRejected(Exception):
    """The server rejected a request: ``code`` is stable, ``message`` says what to do."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details or {}


class ConnectionClosed(Exception):
    """The room is closed (by you, or by the server with a code that forbids reconnecting).

    Also raised by a request (commit, query, view) whose socket closed before
    its reply; op batches are not: they are resent after the reconnect.
    """
