"""The declarative message spec: one decode and one encode for every message (PROTOCOL.md "Messages").

A message is a frozen, slotted dataclass whose ``FIELDS`` table lists its
wire fields in wire order: the wire name (as in PROTOCOL.md), the validator
from ``_fields`` that checks a present value and names its path, whether the
key is required, and what stands in when it is absent. ``Record.from_wire``
and ``Record.to_wire`` are derived from that table (models: h11's
``_events.py`` frozen dataclasses; websockets' ``Frame.parse`` / ``serialize``
/ ``check``).

Fields are validated in table order, so with several bad fields the first
one in the table is named.
"""

from __future__ import annotations

import keyword
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from . import _fields as f
from .errors import ErrorCode, ProtocolError

__all__ = ["Field", "Record", "Message", "NO_DEFAULT", "ID", "RE", "req", "wire_list"]

#: ``Field.default`` for "no stand-in": an absent or null value goes to the validator.
NO_DEFAULT: Any = object()
_ABSENT: Any = object()


def wire_list(v: tuple[Any, ...]) -> list[Any]:
    """Encode a tuple of records or ops as a list of their wire maps."""
    return [x.to_wire() for x in v]


@dataclass(frozen=True, slots=True)
class Field:
    """One wire field of a message.

    ``check(value, path)`` validates a present value and returns the
    attribute value; it raises ``ProtocolError(bad_field)`` naming ``path``.
    When the key is absent: ``required`` fields are refused ("is required");
    otherwise the value counts as null. A null value reads as ``default``
    (or ``factory()``, for a fresh ``{}``) unless ``default`` is
    ``NO_DEFAULT``, in which case ``check`` sees the null. With ``blank``,
    any false value (``0``, ``""``, ``[]``, ``{}``) reads as the default too.

    ``dump`` turns a non-null attribute into its wire value (``list`` for a
    tuple; unset, the value goes out as it is); with ``omit_none`` a null
    leaves the key out. The
    attribute is the wire name, with a trailing ``_`` when that is a Python
    keyword (``from`` → ``from_``).
    """

    wire: str
    check: Callable[[Any, str], Any]
    required: bool = False
    default: Any = None
    factory: Callable[[], Any] | None = None
    blank: bool = False
    dump: Callable[[Any], Any] | None = None
    omit_none: bool = False
    attr: str = field(init=False)

    def __post_init__(self) -> None:
        if self.required and (self.default is not NO_DEFAULT or self.factory or self.blank):
            raise ValueError(f"field {self.wire!r}: a required field has no default (use NO_DEFAULT)")
        object.__setattr__(self, "attr", self.wire + "_" if keyword.iskeyword(self.wire) else self.wire)

    def read(self, d: dict[str, Any], prefix: str = "") -> Any:
        """This field's attribute value from the wire map ``d``.

        Raises:
            ProtocolError: ``bad_field`` naming ``prefix + wire`` (or a path under it).
        """
        v = d.get(self.wire, _ABSENT)
        if v is _ABSENT:
            if self.required:
                path = prefix + self.wire
                raise ProtocolError(ErrorCode.BAD_FIELD, f"field '{path}' is required", field=path)
            v = None
        if (v is None or (self.blank and not v)) and self.default is not NO_DEFAULT:
            return self.factory() if self.factory is not None else self.default
        return self.check(v, prefix + self.wire if prefix else self.wire)


def req(wire: str, check: Callable[[Any, str], Any], **kw: Any) -> Field:
    """A required field: an absent key is refused, a null goes to ``check``."""
    return Field(wire, check, required=True, default=NO_DEFAULT, **kw)


class Record:
    """A wire map described by ``FIELDS``; the base of every message (and of nested records)."""

    __slots__ = ()
    FIELDS: ClassVar[tuple[Field, ...]] = ()

    @classmethod
    def from_wire(cls, d: dict[str, Any], prefix: str = "") -> Self:
        """Decode and validate a wire map (``prefix`` is the path of a nested record, with its dot).

        Raises:
            ProtocolError: ``bad_field`` (or ``bad_op`` inside ops) naming the first bad field.
        """
        msg = cls(**{fld.attr: fld.read(d, prefix) for fld in cls.FIELDS})
        msg.check()
        return msg

    def check(self) -> None:
        """Rules across fields, after each field passed its own (most messages have none).

        Raises:
            ProtocolError: ``bad_field`` naming the field that breaks the rule.
        """

    def to_wire(self) -> dict[str, Any]:
        """The wire map: tables stay ``pyarrow.Table`` and blobs ``bytes`` (the envelope encodes them)."""
        return self._write({})

    def _write(self, out: dict[str, Any]) -> dict[str, Any]:
        for fld in self.FIELDS:
            v = getattr(self, fld.attr)
            if v is None:
                if fld.omit_none:
                    continue
            elif fld.dump is not None:
                v = fld.dump(v)
            out[fld.wire] = v
        return out


class Message(Record):
    """A top-level message: its wire map starts with its ``type`` tag."""

    __slots__ = ()
    type: ClassVar[str]

    def to_wire(self) -> dict[str, Any]:
        return self._write({"type": self.type})


#: A request id, echoed as ``re`` on its replies (PROTOCOL.md "Frames").
ID = Field("id", f.request_id)
#: The id of the request a reply answers.
RE = Field("re", f.request_id)
