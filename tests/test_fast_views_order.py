"""A room's fast views follow each delta on the event loop, and read the frame only when they must.

After its first read, a fast view moves with the deltas' rows
(server/perspective/fasttop.py, ``GroupedPlan.follow``): a grouped view's
tally takes the changed rows out and in, a sorted viewport re-sorts its
kept rows with the changed ones. Only when that cannot tell the new
content (a row left the top, and the next one is somewhere in the frame)
is the view read in full, in a worker thread; the views that could follow
do not wait for that read. Over the protocol, with a real server.
"""

from __future__ import annotations

from typing import Any

from tests.conftest import small_frame
from tests.wire import RawPeer

GROUPED = {"group_by": ["region"], "columns": ["price"], "aggregates": {"price": "sum"}}
SORTED = {"columns": ["name", "price"], "sort": [["price", "desc"]]}


async def _edit(peer: RawPeer, i: int, row: int, price: float) -> int:
    ops = [{"op": "set", "rows": [row], "col": "price", "values": [price]}]
    await peer.send({"type": "op", "client_seq": i, "base_seq": 0, "ops": ops})
    ack = await peer.recv_until("ack", client_seq=i)
    for view in ("sorted", "grouped"):  # in either order: a message received is kept in peer.seen
        if not any(m.view == view for m in _updates(peer, ack.seq)):
            await peer.recv_until("view", view=view, seq=ack.seq)
    return int(ack.seq)


def _updates(peer: RawPeer, seq: int) -> list[Any]:
    return [m for m in peer.seen if m.type == "view" and m.kind == "update" and m.seq == seq]


async def test_fast_views_follow_edits_without_reading_the_frame(make_server: Any) -> None:
    async with make_server(frames={"sales": small_frame(200)}) as srv:
        peer = await RawPeer.open(srv.url, "sales")
        await peer.hello("raw")
        viewport = {"start_row": 0, "end_row": 10}
        await peer.send(
            {"type": "subscribe", "id": 1, "view": "sorted", "config": SORTED, "viewport": viewport}
        )
        await peer.recv_until("view", re=1)
        await peer.send({"type": "subscribe", "id": 2, "view": "grouped", "config": GROUPED})
        await peer.recv_until("view", re=2)
        views = srv.room().views
        assert all(s.fast is not None for s in views.subs.values())  # both served from the frame
        reads = views.full_reads
        for i in range(3):  # new maxima: each row enters the top, the grouped sums move
            seq = await _edit(peer, i + 1, i, 10_000.0 + i)
            top = next(m.data for m in _updates(peer, seq) if m.view == "sorted")
            assert top.column("price").to_pylist()[0] == 10_000.0 + i
        assert views.full_reads == reads  # followed from the deltas alone

        # Row 2 (the top) drops to the bottom: the row after the 10th is somewhere in the frame.
        seq = await _edit(peer, 4, 2, -1.0)
        assert views.full_reads == reads + 1
        order = [m.view for m in _updates(peer, seq)]
        assert order == ["grouped", "sorted"], order  # the grouped view did not wait for that read
        top = next(m.data for m in _updates(peer, seq) if m.view == "sorted")
        prices = sorted(
            (p for p in srv.room().state.frame.get_column("price").to_list() if p is not None), reverse=True
        )
        assert top.column("price").to_pylist() == prices[:10]
        await peer.close()
