"""Row predicates and hidden columns over the coframe protocol (issue 12 §3).

The leak test records every frame a restricted user receives while others
edit both sentinels, and checks that none appears in any encoding; the
other tests check what the user sees (its rows and columns, rows moving in
and out, restricted aggregates) and what it may write.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import polars as pl
import pyarrow as pa
import pytest
from pycrdt import Doc

from client import connect
from client.errors import OpRejected
from client.link import RoomLink
from protocol import Delete, decode_server
from server.storage.auth_types import Grant
from tests.helpers import signed_in

HIDDEN_CELL = "ZQSENTINELCELL"  # a hidden column's values
HIDDEN_ROW = "ZQSENTINELROW"  # a value in a row outside alice's predicate
HIDDEN_NAME = "zqsentinelcolumn"  # the hidden column's name
SENTINELS = (HIDDEN_CELL, HIDDEN_ROW, HIDDEN_NAME)
RULE = "owner = current_user()"


def _frame() -> pl.DataFrame:
    n = 12
    return pl.DataFrame(
        {
            "name": [f"item{i}" if i % 3 else f"{HIDDEN_ROW}{i}" for i in range(n)],
            "region": ["EU", "US", "APAC"] * 4,
            "owner": ["alice" if i % 3 else "bob" for i in range(n)],
            "qty": list(range(1, n + 1)),
            HIDDEN_NAME: [f"{HIDDEN_CELL}{i}" for i in range(n)],
        }
    )


async def _setup(srv: Any, role: str = "editor") -> tuple[str, str, int]:
    """(admin token, alice token, the hidden column's id)."""
    admin = await signed_in(srv, "root", "admin", dataset="*")
    alice = await signed_in(srv, "alice", None)
    state = await srv.registry.live_state("sales")
    hid = next(c.id for c in state.catalog.columns if c.name == HIDDEN_NAME)
    await srv.app.state.auth.store.put_grant(Grant("sales", "alice", role, RULE, (hid,)))
    return admin, alice, hid


def _visible(frame: pl.DataFrame, user: str = "alice") -> pl.DataFrame:
    return frame.filter(pl.col("owner") == user).drop(HIDDEN_NAME)


class Recorder:
    """Every frame the links of one test receive, by link."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.frames: dict[int, list[bytes | str]] = {}
        original = RoomLink._on_message

        def on_message(link: RoomLink, data: bytes | str) -> None:
            self.frames.setdefault(id(link), []).append(data)
            original(link, data)

        monkeypatch.setattr(RoomLink, "_on_message", on_message)

    def of(self, room: Any) -> list[bytes | str]:
        return self.frames.get(id(room), [])


def _texts(value: Any, out: list[str]) -> None:
    """Every string inside a decoded message, with tables, frames and Yjs docs opened up."""
    if isinstance(value, (pa.Table, pl.DataFrame)):
        frame = value if isinstance(value, pl.DataFrame) else pl.from_arrow(value)
        out.extend(frame.columns)
        _texts(frame.to_dicts(), out)
    elif isinstance(value, bytes):
        out.append(value.decode("latin-1"))
        doc: Doc = Doc()
        try:
            doc.apply_update(value)
            out.append(json.dumps({k: str(doc.get(k)) for k in doc.keys()}))
        except Exception:  # not a Yjs update (an awareness update, raw bytes): scanned raw above
            pass
    elif isinstance(value, dict):
        for k, v in value.items():
            _texts(k, out)
            _texts(v, out)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _texts(v, out)
    elif hasattr(value, "__dataclass_fields__"):
        for name in value.__dataclass_fields__:
            _texts(getattr(value, name), out)
    elif value is not None:
        out.append(str(value))


def assert_no_sentinel(frames: list[bytes | str]) -> None:
    assert frames, "nothing was recorded"
    for raw in frames:
        data = raw if isinstance(raw, bytes) else raw.encode()
        for s in SENTINELS:
            for encoded in (s.encode(), s.encode("utf-16-le"), base64.b64encode(s.encode())[:12]):
                assert encoded not in data, f"{s} leaked in a raw frame"
        texts: list[str] = []
        _texts(decode_server(raw), texts)
        blob = "\n".join(texts)
        for s in SENTINELS:
            assert s not in blob, f"{s} leaked in a decoded {type(decode_server(raw)).__name__}"


async def test_nothing_hidden_reaches_a_restricted_user_on_any_protocol_channel(
    make_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = Recorder(monkeypatch)
    async with make_server(auth="token", frames={"sales": _frame()}) as srv:
        admin, alice, hid = await _setup(srv)
        async with (
            connect(srv.url, "sales", token=admin) as root,
            connect(srv.url, "sales", token=alice) as a,
        ):
            first = await root.commit("before")
            full = root.frame
            bob_rows = full.filter(pl.col("owner") == "bob").get_column("_rid").to_list()
            mine = full.filter(pl.col("owner") == "alice").get_column("_rid").to_list()
            # The welcome: only alice's rows and visible columns.
            assert a.frame.equals(_visible(full))
            assert [c["name"] for c in a.schema] == ["name", "region", "owner", "qty"]

            # Views, over visible rows only; one names the hidden column.
            grouped = await a.subscribe_view(group_by=["region"], columns=["qty"], aggregates={"qty": "sum"})
            plain = await a.subscribe_view(columns=["name", "qty"], sort=[["qty", "desc"]])
            with pytest.raises(OpRejected) as bad_view:
                await a.subscribe_view(columns=["name"], expressions={"x": f'"{HIDDEN_NAME}"'})
            assert bad_view.value.code == "no_such_column"

            # Others edit both sentinels, move rows across the predicate, insert and delete.
            await root.set_cells(mine[:3], HIDDEN_NAME, [f"{HIDDEN_CELL}new{i}" for i in range(3)])
            await root.set_cells(bob_rows[:2], "name", [f"{HIDDEN_ROW}new", f"{HIDDEN_ROW}new2"])
            await root.set_cells([mine[0]], "owner", ["bob"])  # leaves alice's rows
            await root.set_cells([mine[0]], "name", [f"{HIDDEN_ROW}moved"])  # edited while hidden
            await root.set_cells([bob_rows[3]], "name", ["plain"])  # no sentinel left in it...
            await root.set_cells([bob_rows[3]], "owner", ["alice"])  # ...as it enters her rows
            await root.insert_rows(
                pl.DataFrame({"name": [f"{HIDDEN_ROW}ins"], "owner": ["bob"], HIDDEN_NAME: [HIDDEN_CELL]})
            )
            await root.delete_rows([bob_rows[1]])
            await root.set_presence({"cursor": {"rid": bob_rows[0], "col": "name"}, "who": "root"})
            await root.set_presence({"cursor": {"rid": mine[1], "col": HIDDEN_NAME}, "who": "root"})
            await root.set_presence({"cursor": {"rid": mine[1], "col": "qty"}, "who": "root"})
            await root.rename_column(HIDDEN_NAME, HIDDEN_NAME + "2")
            last = await root.set_cells([mine[2]], "qty", [100])
            await root.commit("after")
            await root.ping()

            # Alice reads and writes: queries, errors, acks, undo.
            await a.wait_for_seq(last.seq)
            await a.ping()
            diff = await a.diff(first)
            log = await a.log()
            assert all("rows" not in c for c in log)
            for rid, code in ((bob_rows[0], "no_such_row"), (mine[0], "no_such_row")):
                with pytest.raises(OpRejected) as e:
                    await a.set_cells([rid], "qty", [1])
                assert e.value.code == code
            with pytest.raises(OpRejected) as e:
                await a.set_cells([mine[1]], hid, ["x"])
            assert e.value.code == "no_such_column"
            with pytest.raises(OpRejected) as e:
                await a.delete_rows(where="qty > 0")
            assert e.value.code == "forbidden"
            with pytest.raises(OpRejected) as e:
                await a.set_cells([mine[1]], "owner", ["bob"])  # would leave her rows: WITH CHECK
            assert e.value.code == "forbidden"
            ack = await a.set_cells([mine[1]], "qty", [7])
            await a.undo()
            assert ack.seq > 0

            # What she holds is exactly her rows and columns, and her views agree.
            await root.sync()
            await a.wait_for_seq(root.seq)
            now = root.frame
            assert a.frame.equals(now.filter(pl.col("owner") == "alice").drop(HIDDEN_NAME + "2"))
            expect = a.frame.group_by("region").agg(pl.col("qty").sum())
            want = sorted(expect.iter_rows())
            got = await grouped.wait_for(lambda f: sorted(f.iter_rows()) == want)
            assert sorted(got.iter_rows()) == want  # aggregates over her rows only
            assert plain.frame.height == a.frame.height
            presence = a.presence
            assert all(
                s is None or s.get("cursor") is None or s["cursor"]["rid"] in a.frame["_rid"].to_list()
                for s in presence.values()
            )
            assert diff["summary"] is not None

            assert_no_sentinel(rec.of(a))
            sentinel_seen = "\n".join(f if isinstance(f, str) else f.decode("latin-1") for f in rec.of(root))
            assert HIDDEN_CELL in sentinel_seen  # the recorder sees what an unrestricted user gets


async def test_rows_that_an_edit_moves_across_the_predicate_arrive_and_leave(make_server: Any) -> None:
    async with make_server(auth="token", frames={"sales": _frame()}) as srv:
        admin, alice, _ = await _setup(srv, role="viewer")
        async with (
            connect(srv.url, "sales", token=admin) as root,
            connect(srv.url, "sales", token=alice) as a,
        ):
            bob = root.frame.filter(pl.col("owner") == "bob")["_rid"].to_list()
            mine = root.frame.filter(pl.col("owner") == "alice")["_rid"].to_list()
            ack = await root.set_cells([bob[0], mine[0]], "owner", ["alice", "carol"])
            await a.wait_for_seq(ack.seq)
            rids = a.frame["_rid"].to_list()
            assert bob[0] in rids and mine[0] not in rids
            assert a.frame.equals(_visible(root.frame))
            # An edit of a row she cannot see changes nothing she holds, but her seq moves on.
            ack = await root.set_cells([mine[0]], "qty", [999])
            await a.wait_for_seq(ack.seq)
            assert a.frame.equals(_visible(root.frame))
            with pytest.raises(OpRejected) as e:  # a viewer may not write at all
                await a.set_cells([bob[0]], "qty", [1])
            assert e.value.code == "forbidden"


async def test_a_restricted_user_may_only_address_rows_by_rid(make_server: Any) -> None:
    async with make_server(auth="token", frames={"sales": _frame()}) as srv:
        admin, alice, hid = await _setup(srv, role="admin")  # even an admin of the dataset
        async with connect(srv.url, "sales", token=alice) as a:
            for call in (
                a.fill_null("qty", 0),
                a.add_column("twice", expr="qty * 2"),
                a.add_column("plain", default=1),
                a.rename_column("qty", "q"),
                a.drop_column("region"),
                a.cast_column("qty", "Float64"),
                a.apply([Delete(None, "owner = 'bob'")]),
            ):
                with pytest.raises(OpRejected) as e:
                    await call
                assert e.value.code == "forbidden"
            rids = await a.insert_rows(pl.DataFrame({"name": ["n"], "owner": ["alice"], "qty": [5]}))
            assert rids and rids[0] in a.frame["_rid"].to_list()
            with pytest.raises(OpRejected) as e:  # a row outside her predicate
                await a.insert_rows(pl.DataFrame({"name": ["n"], "owner": ["bob"]}))
            assert e.value.code == "forbidden"
            with pytest.raises(OpRejected) as e:  # the hidden column, by name
                await a.insert_rows(pl.DataFrame({"owner": ["alice"], HIDDEN_NAME: ["x"]}))
            assert e.value.code == "no_such_column" and HIDDEN_NAME not in e.value.message
            await a.delete_rows(rids)
            assert rids[0] not in a.frame["_rid"].to_list()
            await a.undo()  # restores her own deleted row
            assert rids[0] in a.frame["_rid"].to_list()


async def test_a_grant_change_refilters_an_open_connection(make_server: Any) -> None:
    async with make_server(auth="token", frames={"sales": _frame()}) as srv:
        admin, alice, hid = await _setup(srv, role="viewer")
        auth = srv.app.state.auth
        async with (
            connect(srv.url, "sales", token=alice) as a,
            connect(srv.url, "sales", token=admin) as root,
        ):
            view = await a.subscribe_view(columns=["qty"], group_by=["owner"], aggregates={"qty": "sum"})
            assert a.frame.height == 8
            await auth.store.put_grant(Grant("sales", "alice", "viewer", "owner = 'bob'", (hid,)))
            auth.forget("alice")
            await auth.recheck()  # what the poll does within a second of the change
            await a.ping()  # the resync welcome was queued before the pong
            assert a.frame.equals(root.frame.filter(pl.col("owner") == "bob").drop(HIDDEN_NAME))
            assert view.closed and "access changed" in (view.reason or "")
