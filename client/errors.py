"""The client's exceptions: a rejected request, and a room that is closed."""

from __future__ import annotations

from typing import Any

from protocol import CoframeError

__all__ = ["OpRejected", "ConnectionClosed"]


class OpRejected(CoframeError):
    """The server rejected a request: ``code`` is stable, ``message`` says what to do.

    Part of the one error tree (``protocol.CoframeError``), so a caller can
    catch client and server errors alike.
    """

    status = 400

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message, code=code, details=details)

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class ConnectionClosed(Exception):
    """The room is closed (by you, or by the server with a code that forbids reconnecting).

    Also raised by a request (commit, query, view) whose socket closed before
    its reply; op batches are not: they are resent after the reconnect.
    """
