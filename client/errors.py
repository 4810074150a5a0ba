"""The client's exceptions: a rejected request, and a room that is closed."""

from __future__ import annotations

from typing import Any

from protocol import CoframeError

__all__ = ["OpRejected", "ConnectionClosed", "RoomRefused"]


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


class RoomRefused(ConnectionClosed, CoframeError):
    """The server refused the room for good: an ``error`` came, then a close that forbids reconnecting.

    ``code`` is the error's stable code (``storage_corrupt``: a chunk of the
    dataset is missing or corrupt, and the operator must repair it; ``not_found``
    or ``bad_field``: no such branch or version; ``bad_name``), ``details`` its
    details (for ``storage_corrupt``: the dataset, commit and chunk) and
    ``close_code`` the WebSocket close code (4009, 4004, ...). A
    :class:`ConnectionClosed`, so code that catches that keeps working.
    """

    status = 500

    def __init__(
        self, code: str, message: str, details: dict[str, Any] | None, close_code: int | None
    ) -> None:
        CoframeError.__init__(self, message, code=code, details=details)
        self.close_code = close_code

    def __str__(self) -> str:
        return f"{self.code}: {self.message} (closed {self.close_code})"
