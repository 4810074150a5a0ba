"""The outbound choke point: one function, grouped by audience, encoded once per group."""

from __future__ import annotations

import ast
import pathlib
from dataclasses import dataclass, field
from typing import Any

import pytest

from protocol import Ack, PresenceUpdate, decode_server
from server.ops import normalize_frame
from server.ops.state import State
from server.rooms import outbound as outbound_module
from server.rooms.deltas import DeltaBuilder, DeltaLog, EncodedDelta
from server.rooms.outbound import EVERYONE, Audience, DeltaOut, Message, Outbound, WelcomeOut
from tests.conftest import small_frame

ROOT = pathlib.Path(__file__).resolve().parents[1]


@dataclass
class Sub:
    client: str
    binary: bool = True
    audience: Audience = EVERYONE
    codecs: tuple[str, ...] = ()
    role: str = "editor"
    got: list[tuple[Any, bool]] = field(default_factory=list)

    def push(self, data: Any, *, droppable: bool = False) -> None:
        self.got.append((data, droppable))


def _state() -> State:
    df, catalog = normalize_frame(small_frame(10))
    return State(df, catalog, df.height)


def test_a_message_is_encoded_once_per_envelope_and_the_same_bytes_go_to_everyone() -> None:
    out = Outbound()
    subs = [Sub("a"), Sub("b"), Sub("c", binary=False), Sub("d", binary=False), Sub("e")]
    out.deliver(Message(PresenceUpdate(b"\x00", {"a": {"x": 1}}), droppable=True), subs)
    assert out.encodes == 2  # one msgpack, one JSON
    binary = [s.got[0][0] for s in subs if s.binary]
    text = [s.got[0][0] for s in subs if not s.binary]
    assert all(b is binary[0] for b in binary) and all(t is text[0] for t in text)
    assert isinstance(binary[0], bytes) and isinstance(text[0], str)
    assert all(s.got[0][1] is True for s in subs)  # broadcast traffic may be dropped by a slow reader
    assert decode_server(binary[0]) == decode_server(text[0])


def test_replies_are_never_droppable() -> None:
    out, s = Outbound(), Sub("a")
    out.deliver(Message(Ack(3, 1, (), ())), [s])
    assert s.got[0][1] is False
    assert decode_server(s.got[0][0]).seq == 3


def test_a_delta_reuses_its_encoding_for_every_subscriber_and_the_resume_log() -> None:
    state = _state()
    b = DeltaBuilder()
    b.add_cells(state.catalog.columns[0].id, state.rids()[:2])
    encoded = EncodedDelta(b.build(state, state, 1, 1, ("w",), None))
    structured = DeltaOut(encoded, state)
    assert structured.rids == [0, 1] and structured.columns == [state.catalog.columns[0].name]
    assert structured.deleted == () and structured.after is state
    out = Outbound()
    subs = [Sub(str(i)) for i in range(5)] + [Sub("j", binary=False)]
    out.deliver(DeltaOut(encoded, state), subs)
    assert out.encodes == 0  # the shared EncodedDelta encodes once per envelope, for every room reader
    assert subs[0].got[0][0] is encoded.payload(True) and subs[-1].got[0][0] is encoded.payload(False)
    assert decode_server(subs[0].got[0][0]).seq_to == 1


def test_subscribers_are_grouped_by_audience_and_rendered_once_per_audience(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rendered: list[Audience] = []

    def render(
        payload: Any, audience: Audience, state: Any = None, vis: Any = None, touched: Any = None
    ) -> Any:
        rendered.append(audience)
        return payload.msg

    monkeypatch.setattr(outbound_module, "render", render)
    narrow = Audience(columns=frozenset({"name"}))
    subs = [Sub("a"), Sub("b", audience=narrow), Sub("c"), Sub("d", audience=narrow, binary=False)]
    out = Outbound()
    out.deliver(Message(Ack(1, 1, (), ())), subs)
    assert sorted(map(repr, rendered)) == sorted(map(repr, [EVERYONE, narrow]))  # once per audience
    assert out.encodes == 3  # (EVERYONE, msgpack), (narrow, msgpack), (narrow, JSON)
    assert subs[0].got[0][0] is subs[2].got[0][0]


def test_restricted_audiences_share_the_everyone_bytes_or_one_seqs_only_encoding() -> None:
    """A 1-cell edit of ``price`` on row 0 (region EU): audiences that see the row and the column get
    the very bytes encoded for everyone; the ones that see neither get one shared encoding that
    carries only the seqs; a delta with a metadata update is never passed through whole."""
    import polars as pl

    before = _state()
    price = before.catalog.columns[1]
    after = before.with_frame(before.frame.with_columns(pl.col("price").fill_null(0.0).alias("price")))
    b = DeltaBuilder()
    b.add_cells(price.id, before.rids()[:1])
    encoded = EncodedDelta(b.build(before, after, 4, 4, ("w",), None))
    eu = Audience(rows="region = 'EU'")
    us = Audience(rows="region = 'US'")
    apac = Audience(rows="region = 'APAC'")
    no_price = Audience(hide=frozenset({price.id}))
    subs = [Sub("all"), Sub("eu", audience=eu), Sub("us", audience=us), Sub("apac", audience=apac)]
    subs.append(Sub("np", audience=no_price))
    out = Outbound()
    out.deliver(DeltaOut(encoded, after, before), subs)
    got = {s.client: s.got[0][0] for s in subs}
    assert got["eu"] is got["all"] is encoded.payload(True)
    assert got["us"] is got["apac"] is got["np"] and got["us"] is not got["all"]
    assert out.encodes == 1  # the seqs-only delta, once for the three audiences that see no cell
    bare = decode_server(got["us"])
    assert (bare.seq_from, bare.seq_to, bare.upserts, bare.deleted) == (4, 4, None, ())

    with_meta = EncodedDelta(b.build(before, after, 5, 5, ("w",), b"\x01\x02"))
    subs = [Sub("all"), Sub("eu", audience=eu)]
    out.deliver(DeltaOut(with_meta, after, before), subs)
    assert subs[1].got[0][0] is not subs[0].got[0][0]
    mine = decode_server(subs[1].got[0][0])
    assert mine.meta is None and mine.upserts.column("price").to_pylist() == [0.0]


def test_a_welcome_is_built_per_subscriber_and_big_snapshots_are_cached_per_state() -> None:
    state = _state()
    w = WelcomeOut("sales/main", state, 0, "join", b"", "editor", {}, re=7)
    out, a = Outbound(), Sub("a")
    out.deliver(w, [a])
    msg = decode_server(a.got[0][0])
    assert msg.client == "a" and msg.re == 7 and msg.snapshot.num_rows == 10
    assert a.got[0][1] is False  # a welcome is never dropped


async def test_a_big_snapshot_goes_in_the_first_codec_the_client_reads(monkeypatch: Any) -> None:
    """Parquet or compressed Arrow IPC per hello.codecs, encoded once per state, equal to the frame."""
    import polars as pl
    import pyarrow as pa

    monkeypatch.setattr(outbound_module, "BIG_SNAPSHOT_ROWS", 5)
    state = _state()
    w = WelcomeOut("sales/main", state, 0, "join", b"", "editor", {})
    out = Outbound()
    subs = [Sub("p1", codecs=("parquet", "zstd")), Sub("p2", codecs=("parquet",)), Sub("z", codecs=("zstd",))]
    for s in subs:
        out.deliver(w, [s])
    payloads = [await s.got[0][0]() for s in subs]  # big snapshots are encoded when sent
    p1, p2, z = (decode_server(p).snapshot for p in payloads)
    assert isinstance(p1, pl.DataFrame) and p1.equals(state.frame) and p2.equals(p1)
    assert isinstance(z, pa.Table) and pl.from_arrow(z).equals(state.frame)
    assert len(out._snapshots) == 2  # one Parquet file and one IPC stream for this state


# Dashboards speak Perspective's own wire protocol through the read-only gate,
# not coframe messages; their reply queue is theirs (docs/architecture.md).
NOT_COFRAME_SUBSCRIBERS = {"server/perspective/endpoint.py"}


def test_only_the_choke_point_pushes_to_sessions() -> None:
    """Every ``.push(`` to a coframe subscriber lives in server/rooms/outbound.py."""
    offenders = []
    for path in (ROOT / "server").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "push"
                and path.name != "outbound.py"
                and str(path.relative_to(ROOT)) not in NOT_COFRAME_SUBSCRIBERS
            ):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


def test_the_resume_log_is_bounded_by_bytes() -> None:
    state = _state()
    log = DeltaLog(max_entries=1000, max_bytes=2000)
    for seq in range(1, 50):
        b = DeltaBuilder()
        b.add_cells(state.catalog.columns[0].id, state.rids())
        encoded = EncodedDelta(b.build(state, state, seq, seq, ("w",), None))
        encoded.payload(True)
        log.append(encoded)
    assert 0 < log.bytes <= 2000
    assert log.since(0, 49) is None  # the oldest deltas were dropped to stay under the bound
    kept = log.since(48, 49)
    assert kept is not None and [d.seq_to for d in kept] == [49]
