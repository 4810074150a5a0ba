"""What the views process does: Perspective tables, shared views and dashboard sessions, by request.

This module runs **inside the views process** (:mod:`.worker`), never in the
server's: :class:`Host` owns every Perspective object of the node and
answers the requests the server sends (:mod:`.process`). Each request is a
msgpack map with an ``op``; :meth:`Host.handle` returns the answer, or raises
:class:`HostError` with a code the server maps to a coframe error.

Tables are keyed by the server (``table``: a room and an audience, see
:mod:`.audience`). Each key has its own Perspective ``Server`` holding just
that table, so a dashboard's ``get_hosted_table_names`` sees one table, and
deleting one key's table never touches another's.

Views are keyed too (``vkey``, a canonical form of the config the server
computed): identical configs on one table share **one** Perspective view,
counted by reference; each subscriber reads its own viewport from it.

Every read returns the view's content as coframe sends it
(:func:`.payload.view_table`), re-encoded as Arrow IPC, with the view's row
count, so the server only decodes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from protocol.arrow import table_to_ipc

from .config import for_perspective
from .payload import view_table
from .tables import RoomTables, release_memory
from .types import to_perspective

__all__ = ["Host", "HostError", "Push"]

Push = Any  # Callable[[int, bytes], None]: a dashboard session's reply, sent to the server


class HostError(Exception):
    """A request the host could not do; ``code`` is a coframe error code (``bad_view``, ``internal``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(slots=True)
class _Shared:
    """One Perspective view and how many subscriptions read it."""

    view: Any
    refs: int = 0


@dataclass(slots=True)
class _Table:
    tables: RoomTables
    name: str
    views: dict[str, _Shared] = field(default_factory=dict)
    sessions: dict[int, Any] = field(default_factory=dict)


class Host:
    """Every Perspective table, view and dashboard session of the node (one thread, not thread-safe)."""

    def __init__(self, push: Push) -> None:
        self._push = push  # (sid, bytes): a dashboard session's reply
        self._tables: dict[str, _Table] = {}
        self._session_table: dict[int, str] = {}
        # Perspective servers whose table was dropped, for the next build. perspective-python 5.5.1
        # never frees a Server once it made a local client (about 80 KB a build with three views:
        # 30 MB over 400 builds), so a server per build grows without bound; reused, they are as
        # many as the most tables ever held at once (tests/test_views_memory.py).
        self._spare: list[RoomTables] = []

    def handle(self, req: dict[str, Any]) -> Any:
        op = req.get("op")
        fn = getattr(self, f"_op_{op}", None) if isinstance(op, str) else None
        if fn is None:
            raise HostError("internal", f"unknown views request {op!r}")
        return fn(req)

    # ------------------------------------------------------------ tables

    def _table(self, key: str) -> _Table:
        try:
            return self._tables[key]
        except KeyError:
            raise HostError("internal", f"no table {key!r} in the views process") from None

    def _op_build(self, req: dict[str, Any]) -> None:
        """(Re)build table ``table`` named ``name`` from the IPC ``ipc``; its old views and sessions go."""
        key, name = req["table"], req["name"]
        self._drop(key)
        data = to_perspective(pa.ipc.open_stream(req["ipc"]).read_all())
        tables = self._spare.pop() if self._spare else RoomTables()
        try:
            tables._tables[name] = tables.client.table(data, index="_rid", name=name)
        except BaseException:
            self._spare.append(tables)  # still empty
            raise
        tables._views[name] = []
        tables.poll()
        self._tables[key] = _Table(tables, name)
        del data
        release_memory()

    def _op_drop(self, req: dict[str, Any]) -> None:
        self._drop(req["table"])
        release_memory()

    def _drop(self, key: str) -> None:
        t = self._tables.pop(key, None)
        if t is None:
            return
        for sid, session in list(t.sessions.items()):
            self._session_table.pop(sid, None)
            session.close()
        for shared in t.views.values():
            shared.view.delete()
        t.tables.close(t.name)
        self._spare.append(t.tables)  # empty now: the next build reuses its Perspective server

    def _op_apply(self, req: dict[str, Any]) -> list[Any]:
        """Apply deltas (``[removed rids, upserts IPC or None]`` each; one poll), then read ``reads``."""
        t = self._table(req["table"])
        table = t.tables.table(t.name)
        for removed, upserts in req["deltas"]:
            if removed:
                table.remove(list(removed))
            if upserts:
                data = pa.ipc.open_stream(upserts).read_all()
                if data.num_rows:
                    table.update(to_perspective(data))
        t.tables.poll()
        return self._reads(t, req["reads"], req["zones"])

    def _op_read(self, req: dict[str, Any]) -> list[Any]:
        return self._reads(self._table(req["table"]), req["reads"], req["zones"])

    # ------------------------------------------------------------ views

    def _op_open(self, req: dict[str, Any]) -> Any:
        """Open (or share) the view ``vkey`` with ``config``, and read ``viewport`` of it."""
        t = self._table(req["table"])
        vkey = req["vkey"]
        shared = t.views.get(vkey)
        if shared is None:
            try:
                view = t.tables.table(t.name).view(**for_perspective(req["config"]))
            except Exception as e:  # PyPerspectiveError, or a serde error for a bad value
                text = str(e).removeprefix("Abort(): ").strip()
                if "bad_alloc" in text:  # over the address-space limit (views_memory_bytes): nothing kept
                    raise HostError(
                        "too_expensive",
                        "the view needed more memory than the views process may use (views_memory_bytes)",
                    ) from None
                raise HostError("bad_view", f"Perspective rejected the view config: {text}") from None
            shared = t.views[vkey] = _Shared(view)
        shared.refs += 1
        try:
            return _read(shared.view, req["viewport"], req["zones"])
        except BaseException:
            self._unref(t, vkey)
            raise

    def _op_unref(self, req: dict[str, Any]) -> None:
        t = self._tables.get(req["table"])
        if t is not None:
            self._unref(t, req["vkey"])

    def _unref(self, t: _Table, vkey: str) -> None:
        shared = t.views.get(vkey)
        if shared is not None:
            shared.refs -= 1
            if shared.refs <= 0:
                del t.views[vkey]
                shared.view.delete()

    def _reads(self, t: _Table, reads: list[Any], zones: dict[str, str]) -> list[Any]:
        out: list[Any] = []
        for vkey, viewport in reads:
            shared = t.views.get(vkey)
            if shared is None:
                out.append({"error": f"view {vkey!r} is not open"})
                continue
            try:
                out.append(_read(shared.view, viewport, zones))
            except Exception as e:  # one bad view is closed by the server, the others go on
                out.append({"error": f"{type(e).__name__}: {e}"})
        return out

    # ------------------------------------------------------------ dashboards

    def _op_session_open(self, req: dict[str, Any]) -> None:
        t = self._table(req["table"])
        sid = int(req["sid"])
        push = self._push
        t.sessions[sid] = t.tables.server.new_session(lambda data: push(sid, bytes(data)))
        self._session_table[sid] = req["table"]

    def _op_session_request(self, req: dict[str, Any]) -> None:
        sid = int(req["sid"])
        key = self._session_table.get(sid)
        if key is None:
            raise HostError("internal", f"no dashboard session {sid}")
        t = self._tables[key]
        t.sessions[sid].handle_request(req["data"])
        t.tables.poll()

    def _op_session_close(self, req: dict[str, Any]) -> None:
        sid = int(req["sid"])
        key = self._session_table.pop(sid, None)
        if key is not None and key in self._tables:
            t = self._tables[key]
            session = t.sessions.pop(sid, None)
            if session is not None:
                session.close()
                t.tables.poll()

    # ------------------------------------------------------------ process

    def _op_stats(self, req: dict[str, Any]) -> dict[str, Any]:
        """Per table: its Perspective views, what reads them, its dashboard sessions, its rows and columns."""
        out: dict[str, Any] = {}
        for key, t in self._tables.items():
            table = t.tables.table(t.name)
            out[key] = {
                "views": len(t.views),
                "refs": sum(v.refs for v in t.views.values()),
                "sessions": len(t.sessions),
                "rows": table.size(),
                "columns": list(table.columns()),
            }
        return out

    def close(self) -> None:
        for key in list(self._tables):
            self._drop(key)


def _read(view: Any, viewport: list[int] | None, zones: dict[str, str]) -> list[Any]:
    """``[IPC of the view's coframe table, total rows]`` (a ``None`` viewport reads every row)."""
    if viewport is None:
        raw = view.to_arrow()
    else:
        raw = view.to_arrow(start_row=viewport[0], end_row=viewport[1])
    split = bool(zones) and bool(view.get_config().get("split_by"))
    return [table_to_ipc(view_table(raw, zones, split=split)), view.num_rows()]
