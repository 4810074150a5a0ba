"""Live views: one Perspective table per room (PROTOCOL.md §14).

:mod:`.types` maps Arrow data to Perspective-safe types; :mod:`.tables`
keeps the per-room tables in step with the room's deltas.
"""

from .tables import RoomTables, RoomView, read_arrow
from .types import MAX_RID, perspective_type, to_perspective

__all__ = ["RoomTables", "RoomView", "read_arrow", "to_perspective", "perspective_type", "MAX_RID"]
