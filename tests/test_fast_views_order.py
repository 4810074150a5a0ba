"""A room's fast views are read cheap ones first: a grouped view never waits for a sorted one.

A sorted plain view (a top-k over every row) costs far more to read than a
grouped view (a tally kept up to date) or a plain viewport (a slice); each
costly one is read in a job of its own after the cheap ones, whose updates
go out first (server/perspective/fastviews.py ``_update_fast``). Over the
protocol, with a real server: the sorted view is subscribed first, yet after
an edit the grouped view's update for it arrives before the sorted one's.
"""

from __future__ import annotations

from typing import Any

from tests.conftest import small_frame
from tests.wire import RawPeer

GROUPED = {"group_by": ["region"], "columns": ["price"], "aggregates": {"price": "sum"}}
SORTED = {"columns": ["name", "price"], "sort": [["price", "desc"]]}


async def test_a_grouped_update_does_not_wait_for_a_sorted_views_read(make_server: Any) -> None:
    async with make_server(frames={"sales": small_frame(200)}) as srv:
        peer = await RawPeer.open(srv.url, "sales")
        await peer.hello("raw")
        await peer.send(
            {
                "type": "subscribe",
                "id": 1,
                "view": "sorted",
                "config": SORTED,
                "viewport": {"start_row": 0, "end_row": 10},
            }
        )
        await peer.recv_until("view", re=1)
        await peer.send({"type": "subscribe", "id": 2, "view": "grouped", "config": GROUPED})
        await peer.recv_until("view", re=2)
        assert all(s.fast is not None for s in srv.room().views.subs.values())  # both served from the frame
        for i in range(3):  # one edit at a time: each read after it sees exactly that edit
            ops = [{"op": "set", "rows": [i], "col": "price", "values": [10_000.0 + i]}]
            await peer.send({"type": "op", "client_seq": i + 1, "base_seq": 0, "ops": ops})
            ack = await peer.recv_until("ack", client_seq=i + 1)
            await peer.recv_until("view", view="sorted", seq=ack.seq)
            order = [
                m.view for m in peer.seen if m.type == "view" and m.kind == "update" and m.seq == ack.seq
            ]
            assert order == ["grouped", "sorted"], order
        await peer.close()
