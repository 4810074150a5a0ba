"""coframe Python client: ``from client import connect``.

``async with connect(url, dataset) as room`` gives a live Polars mirror
(``room.frame``) and the op methods README.md "Using it" shows;
:class:`SyncRoom` wraps it for notebooks.
"""

from .mirror import Mirror
from .room import ConnectionClosed, DeltaEvent, DeltaStream, OpRejected, Room, RoomRefused, connect
from .sync import SyncRoom, SyncView
from .views import LiveView, ViewEvent, ViewStream

__all__ = [
    "connect",
    "Room",
    "SyncRoom",
    "SyncView",
    "OpRejected",
    "ConnectionClosed",
    "RoomRefused",
    "DeltaEvent",
    "DeltaStream",
    "Mirror",
    "LiveView",
    "ViewEvent",
    "ViewStream",
]
