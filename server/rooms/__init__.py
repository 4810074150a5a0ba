"""Rooms: the single-writer owners of live frames, their sessions and registry."""

from .config import RoomConfig
from .core import RoomCore
from .registry import NAME_RE, Registry, check_name
from .room import Room
from .session import Session, SessionLimits, Transport

__all__ = [
    "Room",
    "RoomConfig",
    "RoomCore",
    "Registry",
    "Session",
    "SessionLimits",
    "Transport",
    "NAME_RE",
    "check_name",
]
