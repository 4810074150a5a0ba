"""Grid edits from a dashboard (issue 11 §4): ``table_update_req`` → coframe ``set`` ops.

Pure: the frames a 5.5.1 datagrid and JS client really sent (captured from
Debian chromium against ``coframe serve``; the bytes are below) decode into
row edits and ops, with bounds; the gate refuses them without ``edit=1``.
In-process: the editor submits to a room and answers from the room's reply,
with its own rate and in-flight limits. Real server: perspective-python's
own client on ``/perspective/sales?edit=1`` edits, and a coframe client's
mirror sees it; a bad value is rejected with the room's message.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import perspective
import polars as pl
import pytest
import websockets

from client import connect
from protocol import ErrorCode, Hello, SetCells
from server.ops import normalize_frame
from server.ops.state import State
from server.perspective.editor import DashboardEditor
from server.perspective.edits import (
    EDIT_REFUSED,
    EditError,
    RowEdit,
    TableUpdate,
    decode_update,
    edit_error,
    to_ops,
    update_response,
    wants_edit,
)
from server.perspective.readonly import Decision, Gate, check_request
from server.rooms import Room
from tests.conftest import LiveServer, small_frame, timeout
from tests.helpers import FakeTransport

# The datagrid (EDIT mode) after typing 42 into the qty cell of the row with _rid 1, then Enter:
# Request{msg_id, entity_id "sales/main", table_update_req(33){data{from_rows(4)
# '[{"__INDEX__":1,"qty":42}]'}, port_id 1}}.
GRID_EDIT = bytes.fromhex(
    "08c0f2f1d50a120a73616c65732f6d61696e8a02200a1c221a5b7b225f5f494e4445585f5f223a312c2271747922"
    "3a34327d5d1001"
)
# table.update([{__INDEX__: 3, price: 1.5, note: "x"}], {port_id: await table.make_port()}) in the page.
CONSOLE_EDIT = bytes.fromhex(
    "0898d9a6cb0b120a73616c65732f6d61696e8a022e0a2a22285b7b225f5f494e4445585f5f223a332c2270726963"
    "65223a312e352c226e6f7465223a2278227d5d1002"
)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _len(field: int, data: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def _body(form: int, payload: bytes | str, port_id: int = 1) -> bytes:
    """A TableUpdateReq body: data{<form>: payload}, port_id."""
    raw = payload.encode() if isinstance(payload, str) else payload
    return _len(1, _len(form, raw)) + b"\x10" + _varint(port_id)


def _update(form: int, payload: bytes | str, msg_id: int = 9) -> bytes:
    return b"\x08" + _varint(msg_id) + _len(2, b"sales/main") + _len(33, _body(form, payload))


def _refused(body: bytes, code: str, **kw: Any) -> str:
    with pytest.raises(EditError) as exc:
        decode_update(body, **kw)
    assert exc.value.code == code, exc.value
    return exc.value.message


# ---------------------------------------------------------------- pure


def test_captured_frames_decode_into_row_edits() -> None:
    grid = Gate("sales/main", editable=True).check(GRID_EDIT)
    assert (grid.allowed, grid.edit, grid.field, grid.entity_id) == (False, True, 33, "sales/main")
    assert decode_update(grid.body) == TableUpdate((RowEdit(1, {"qty": 42}),), port_id=1)
    console = Gate("sales/main", editable=True).check(CONSOLE_EDIT)
    assert decode_update(console.body) == TableUpdate((RowEdit(3, {"price": 1.5, "note": "x"}),), port_id=2)
    assert to_ops(decode_update(console.body), {"price": "Float64", "note": "String"}) == (
        SetCells((3,), "price", (1.5,)),
        SetCells((3,), "note", ("x",)),
    )


def test_without_edit_1_the_gate_refuses_updates() -> None:
    for frame in (GRID_EDIT, CONSOLE_EDIT):
        d = Gate("sales/main").check(frame)
        assert not d.allowed and not d.edit and "read-only" in d.reason and "table_update_req" in d.reason
    other = Gate("other/main", editable=True).check(GRID_EDIT)  # another room's table
    assert not other.allowed and not other.edit and "no table 'sales/main'" in other.reason
    # edit=1 opens updates only: remove, replace, delete, make_table stay refused.
    for field in (27, 28, 31, 32):
        frame = b"\x08\x01" + _len(2, b"sales/main") + _len(field, b"")
        d = Gate("sales/main", editable=True).check(frame)
        assert not d.allowed and not d.edit
    assert wants_edit({"edit": "1"}) and not wants_edit({}) and not wants_edit({"edit": "true"})


def test_json_forms_a_script_may_send() -> None:
    rows = '[{"__INDEX__": 2, "qty": 1}, {"_rid": 4.0, "name": "b"}]'
    assert decode_update(_body(4, rows)).rows == (RowEdit(2, {"qty": 1}), RowEdit(4, {"name": "b"}))
    cols = '{"__INDEX__": [2, 4], "qty": [1, null]}'
    assert decode_update(_body(5, cols)).rows == (RowEdit(2, {"qty": 1}), RowEdit(4, {"qty": None}))
    nd = '{"__INDEX__": 2, "qty": 1}\n\n{"__INDEX__": 4, "ok": true}\n'
    assert decode_update(_body(7, nd)).rows == (RowEdit(2, {"qty": 1}), RowEdit(4, {"ok": True}))
    assert decode_update(_body(4, "[]")).rows == ()


def test_refusals_name_the_problem() -> None:
    assert "not CSV" in _refused(_body(2, "_rid,qty\n1,2"), ErrorCode.BAD_OP)
    assert "not Arrow" in _refused(_body(3, b"\xff\xff"), ErrorCode.BAD_OP)
    assert "without data" in _refused(b"\x10\x01", ErrorCode.BAD_OP)
    assert "existing rows" in _refused(_body(4, '[{"qty": 1}]'), ErrorCode.BAD_OP)
    assert "row's id" in _refused(_body(4, '[{"__INDEX__": 1, "_rid": 2}]'), ErrorCode.RESERVED_NAME)
    for key in ("-1", "1.5", '"1"', "true", str(2**53)):
        assert "row id" in _refused(_body(4, f'[{{"__INDEX__": {key}, "qty": 1}}]'), ErrorCode.BAD_FIELD)
    assert "not valid JSON" in _refused(_body(4, "[{"), ErrorCode.BAD_FIELD)
    assert "not valid JSON" in _refused(_body(4, '[{"__INDEX__": 1, "x": NaN}]'), ErrorCode.BAD_FIELD)
    assert "not a cell value" in _refused(_body(4, '[{"__INDEX__": 1, "x": [1]}]'), ErrorCode.BAD_VALUE)
    assert "list of objects" in _refused(_body(4, '{"a": 1}'), ErrorCode.BAD_FIELD)
    assert "different lengths" in _refused(_body(5, '{"__INDEX__": [1], "a": []}'), ErrorCode.BAD_FIELD)
    assert "not an object" in _refused(_body(4, "[1]"), ErrorCode.BAD_FIELD)


def test_updates_are_bounded_in_rows_and_bytes() -> None:
    rows = json.dumps([{"__INDEX__": i, "qty": i} for i in range(11)])
    assert len(decode_update(_body(4, rows), max_rows=11).rows) == 11
    assert "11 rows, over the 10" in _refused(_body(4, rows), ErrorCode.TOO_LARGE, max_rows=10)
    size = len(rows)
    assert len(decode_update(_body(4, rows), max_bytes=size).rows) == 11
    message = _refused(_body(4, rows), ErrorCode.TOO_LARGE, max_bytes=size - 1)
    assert f"{size} bytes, over the {size - 1}" in message


def test_to_ops_one_set_per_column_dates_from_milliseconds() -> None:
    update = TableUpdate(
        (
            RowEdit(1, {"qty": 5, "day": 1709596800000, "at": 1709640000500}),
            RowEdit(2, {"qty": 6, "day": 1709596800000 - 3_600_000}),  # local midnight at UTC+1
            RowEdit(1, {"qty": 7, "unknown": 1}),  # rid 1 again: its last value wins
        )
    )
    ops = to_ops(update, {"qty": "Int64", "day": "Date", "at": "Datetime[UTC]"})
    assert ops == (
        SetCells((1, 2), "qty", (7, 6)),
        SetCells((1, 2), "day", ("2024-03-05", "2024-03-05")),
        SetCells((1,), "at", ("2024-03-05T12:00:00.500000",)),
        SetCells((1,), "unknown", (1,)),  # for the room to refuse: no_such_column
    )
    with pytest.raises(EditError) as exc:
        to_ops(TableUpdate((RowEdit(1, {"day": 1e20}),)), {"day": "Date"})
    assert exc.value.code == ErrorCode.BAD_VALUE and "is not a Date" in exc.value.message


def test_responses_answer_the_same_request() -> None:
    d = Gate("sales/main", editable=True).check(GRID_EDIT)
    ok = check_request(update_response(d))  # Response{msg_id, entity_id, table_update_resp(33){}}
    assert (ok.msg_id, ok.entity_id, ok.field, ok.body) == (d.msg_id, "sales/main", 33, b"")
    err = edit_error(d, ErrorCode.BAD_VALUE, "qty takes whole numbers")
    again = check_request(err)
    assert (again.msg_id, again.field) == (d.msg_id, 50)
    assert f"{EDIT_REFUSED} (bad_value): qty takes whole numbers".encode() in err


# ---------------------------------------------------------------- in-process: the editor and a room


def _room() -> Room:
    df, catalog = normalize_frame(small_frame())
    room = Room("sales", "main", State(df, catalog, df.height))
    room.start()
    return room


def _decision(rows: list[dict[str, Any]], msg_id: int) -> Decision:
    return Gate("sales/main", editable=True).check(_update(4, json.dumps(rows), msg_id=msg_id))


class Answers:
    """What an editor pushes back to the browser, by msg_id; ``got`` is set on each."""

    def __init__(self) -> None:
        self.by_id: dict[int, Decision] = {}
        self.got = asyncio.Event()

    def push(self, data: bytes) -> None:
        self.by_id[check_request(data).msg_id] = check_request(data)
        self.got.set()

    async def wait(self, msg_id: int) -> Decision:
        while msg_id not in self.by_id:
            self.got.clear()
            await asyncio.wait_for(self.got.wait(), timeout(10))
        return self.by_id[msg_id]


async def test_editor_submits_as_its_connection_and_answers_from_the_room() -> None:
    room = _room()
    watcher = FakeTransport()
    room.join(Hello("watcher"), watcher, binary=False)
    editor = DashboardEditor(room)
    answers = Answers()
    try:
        editor.submit(_decision([{"__INDEX__": 1, "qty": 4}], msg_id=1), answers.push)
        assert (await answers.wait(1)).field == 33  # table_update_resp: the room acked it
        _, delta = await asyncio.wait_for(watcher.next_of("delta"), timeout(10))
        assert delta.by == (editor.client,) and editor.client.startswith("dashboard-")  # type: ignore[attr-defined]
        assert room.state.frame.filter(pl.col("_rid") == 1)["qty"].item() == 4
        assert editor.client not in room.sessions  # replies only: no deltas to the editor

        seq = room.seq
        editor.submit(_decision([{"__INDEX__": 1, "qty": 1.5}], msg_id=2), answers.push)
        bad = await answers.wait(2)
        assert bad.field == 50 and b"coframe edit refused (bad_value): column 'qty'" in bad.body
        editor.submit(_decision([{"__INDEX__": 999, "qty": 1}], msg_id=3), answers.push)
        assert b"(no_such_row)" in (await answers.wait(3)).body
        assert room.seq == seq and editor.pending == 0
    finally:
        await editor.close()
        await room.close()


async def test_editor_rate_and_in_flight_limits() -> None:
    room = _room()
    answers = Answers()
    slow = DashboardEditor(room, ops_per_second=1e-9, ops_burst=1)
    queued = DashboardEditor(room, max_pending=1)
    try:
        slow.submit(_decision([{"__INDEX__": 1, "qty": 1}], msg_id=1), answers.push)
        slow.submit(_decision([{"__INDEX__": 1, "qty": 2}], msg_id=2), answers.push)
        assert b"(rate_limited)" in (await answers.wait(2)).body  # refused at once, before the room
        assert (await answers.wait(1)).field == 33
        queued.submit(_decision([{"__INDEX__": 2, "qty": 1}], msg_id=3), answers.push)
        queued.submit(_decision([{"__INDEX__": 2, "qty": 2}], msg_id=4), answers.push)  # before any tick
        assert b"(too_many)" in (await answers.wait(4)).body
        assert (await answers.wait(3)).field == 33
        queued.submit(_decision([{"__INDEX__": 2}], msg_id=5), answers.push)  # no cells: nothing to do
        assert (await answers.wait(5)).field == 33
    finally:
        await slow.close()
        await queued.close()
        await room.close()


# ---------------------------------------------------------------- a real server


@asynccontextmanager
async def dashboard(srv: LiveServer, query: str) -> AsyncIterator[Any]:
    """perspective-python's ``AsyncClient`` on ``/perspective/sales?<query>`` over a real WebSocket."""
    async with websockets.connect(f"{srv.url}/perspective/sales?{query}", max_size=None) as ws:
        client = perspective.AsyncClient(ws.send)

        async def pump() -> None:
            async for msg in ws:
                await client.handle_response(msg)

        reader = asyncio.create_task(pump())
        try:
            yield client
        finally:
            reader.cancel()
            try:
                await reader
            except (asyncio.CancelledError, websockets.ConnectionClosed):
                pass


async def test_an_edit_over_the_endpoint_reaches_a_python_mirror(server: LiveServer) -> None:
    async with connect(server.url, "sales") as room, dashboard(server, "edit=1") as client:
        deltas = room.deltas()
        table = await client.open_table("sales/main")
        await table.update([{"__INDEX__": 2, "qty": 40, "name": "edited"}])
        async with asyncio.timeout(timeout(10)):
            async for d in deltas:
                if not d.upserts.is_empty() and 2 in d.upserts["_rid"].to_list():
                    break
        assert d.by[0].startswith("dashboard-")
        row = room.frame.filter(pl.col("_rid") == 2).row(0, named=True)
        assert (row["qty"], row["name"]) == (40, "edited")
        seq = room.seq
        with pytest.raises(perspective.PerspectiveError, match=r"coframe edit refused \(bad_value\)"):
            await table.update([{"__INDEX__": 2, "qty": 1.5}])
        with pytest.raises(perspective.PerspectiveError, match=r"\(no_such_column\)"):
            await table.update([{"__INDEX__": 2, "nope": 1}])
        with pytest.raises(perspective.PerspectiveError, match="read-only"):
            await table.remove([2.0])  # edit=1 opens updates only
        await room.sync()
        assert room.seq == seq


async def test_captured_grid_frame_is_refused_without_edit_1_and_applied_with_it(server: LiveServer) -> None:
    async with connect(server.url, "sales") as room:
        seq = room.seq
        async with websockets.connect(f"{server.url}/perspective/sales") as ws:
            await ws.send(GRID_EDIT)
            reply = check_request(await asyncio.wait_for(ws.recv(), timeout(10)))  # type: ignore[arg-type]
            assert reply.field == 50 and b"read-only" in reply.body
        await room.sync()
        assert room.seq == seq
        async with websockets.connect(f"{server.url}/perspective/sales?edit=1") as ws:
            await ws.send(GRID_EDIT)
            reply = check_request(await asyncio.wait_for(ws.recv(), timeout(10)))  # type: ignore[arg-type]
            assert reply.field == 33
        await asyncio.wait_for(room.wait_for_seq(seq + 1), timeout(10))
        assert room.frame.filter(pl.col("_rid") == 1)["qty"].item() == 42
