"""The pycrdt metadata doc (column order, names, descriptions) and presence."""

from __future__ import annotations

import pycrdt
from pycrdt import Array, Doc, Map

from client import connect
from tests.conftest import LiveServer
from tests.wire import RawPeer


def doc_from(update: bytes) -> Doc:
    d = Doc()
    d.apply_update(update)
    return d


def names(doc: Doc) -> list[str]:
    cols = doc.get("columns", type=Map)
    return [cols[k]["name"] for k in doc.get("order", type=Array)]


async def test_welcome_doc_tracks_schema_changes(server: LiveServer) -> None:
    peer = await RawPeer.open(server.url)
    w = await peer.hello("yjs-watcher")
    doc = doc_from(w.meta)
    assert names(doc) == ["name", "price", "qty", "region"]
    async with connect(server.url, "sales") as room:
        await room.rename_column("price", "cost")
    delta = await peer.recv_until("delta")
    assert delta.meta is not None
    doc.apply_update(delta.meta)
    assert names(doc) == ["name", "cost", "qty", "region"]
    await peer.close()


async def test_yjs_sync_and_description_edits(server: LiveServer) -> None:
    a = await RawPeer.open(server.url)
    b = await RawPeer.open(server.url)
    wa = await a.hello("ya")
    await b.hello("yb")
    # Standard sync step 1 → step 2 reply.
    await a.send({"type": "meta", "id": 1, "update": pycrdt.create_sync_message(Doc())})
    reply = await a.recv_until("meta")
    assert reply.update[:2] == b"\x00\x01"
    # A description edit made with pycrdt is relayed to the other client.
    local = doc_from(wa.meta)
    before = local.get_state()
    cols = local.get("columns", type=Map)
    first = next(iter(local.get("order", type=Array)))
    cols[first]["description"] = "product name"
    await a.send({"type": "meta", "id": 2, "update": pycrdt.create_update_message(local.get_update(before))})
    relayed = await b.recv_until("meta")
    remote = doc_from(server.room().meta.state())
    assert remote.get("columns", type=Map)[first]["description"] == "product name"
    assert relayed.update[0] == 0
    # Renaming through the doc is refused: names change through ops only.
    before = local.get_state()
    cols[first]["name"] = "hijacked"
    await a.send({"type": "meta", "id": 3, "update": pycrdt.create_update_message(local.get_update(before))})
    err = await a.recv_until("error")
    assert err.code == "read_only" and "rename_column" in err.message
    assert names(doc_from(server.room().meta.state()))[0] == "name"
    await a.close()
    await b.close()


async def test_presence_is_relayed_and_cleared(server: LiveServer) -> None:
    watcher = await RawPeer.open(server.url)
    await watcher.hello("watcher")
    async with connect(server.url, "sales", client_id="alice") as alice:
        await alice.set_presence({"cursor": [3, "price"], "name": "Alice"})
        p = await watcher.recv_until("presence")
        assert p.states == {"alice": {"cursor": [3, "price"], "name": "Alice"}}
        # The awareness update is the standard y-protocols encoding.
        aw = pycrdt.Awareness(Doc())
        aw.apply_awareness_update(p.update, "test")
        assert {"cursor": [3, "price"], "name": "Alice"} in aw.states.values()
    gone = await watcher.recv_until("presence")
    assert gone.states == {"alice": None}
    await watcher.close()
