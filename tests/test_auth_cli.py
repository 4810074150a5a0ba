"""Identity from the command line (issue 12 §1-2): `coframe serve` on tokens, and the operator commands.

Real processes: ``coframe serve --auth token`` on a data directory, and
``coframe user|grant|token|revoke`` on the same directory while it runs.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import httpx
import pytest

from client import connect
from client.errors import ConnectionClosed, OpRejected
from tests.conftest import timeout
from tests.procs import cli, start_server


async def test_serve_prints_a_sign_in_url_and_the_operator_commands_work_on_a_running_server(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    server = await start_server("--auth", "token", "--demo-rows", "50", data_dir=data)
    try:
        line = await server.wait_log(r"Sign in: http://127\.0\.0\.1:\d+/login\?token=\S+", within=timeout(30))
        admin_token = line.split("token=", 1)[1]
        async with httpx.AsyncClient(base_url=server.http) as http:
            assert (await http.get("/api/datasets")).status_code == 401
            r = await http.get(f"/login?token={admin_token}")
            assert r.status_code == 303 and "coframe_session" in r.headers["set-cookie"]
            assert [d["name"] for d in (await http.get("/api/datasets")).json()] == ["sales"]

        code, out, err = await cli("user", "add", "alice", "--display", "Alice B.", data=data)
        assert code == 0, err
        code, out, err = await cli("grant", "sales", "alice", "viewer", data=data)
        assert code == 0 and "granted viewer on sales to alice" in out, err
        code, out, err = await cli("token", "create", "alice", "--expires", "8h", data=data)
        assert code == 0, err
        token = out.strip().splitlines()[-1]  # the token alone on its last line
        token_id = out.split()[1]
        code, out, _ = await cli("user", "list", data=data)
        assert "alice (Alice B.)  sales:viewer" in out and "admin (Admin)  *:admin" in out

        async with connect(server.url, "sales", token=token, reconnect=False) as room:
            assert room.frame.height == 50
            with pytest.raises(OpRejected) as e:
                await room.set_cells([0], "qty", [1])
            assert e.value.code == "forbidden"
            code, out, err = await cli("token", "revoke", token_id, data=data)
            assert code == 0, err
            assert room._task is not None  # the link's loop ends when the server closes for good
            await asyncio.wait_for(asyncio.shield(room._task), timeout(5))
            with pytest.raises(ConnectionClosed, match="4401"):
                await room.set_cells([0], "qty", [1])
        code, out, err = await cli("audit", "--since", "1h", data=data)
        assert code == 0, err
        assert "grant  (operator) sales  alice viewer" in out and "token_revoke  (operator)" in out
        assert token not in out
        log = "\n".join(server.log)
        assert admin_token not in log.replace(line, "") and token not in log  # only the sign-in line
    finally:
        await server.stop()


async def test_auth_none_is_refused_off_loopback_and_bad_commands_say_why(tmp_path: Path) -> None:
    data = tmp_path / "data"
    code, _, err = await cli("serve", "--auth", "none", "--host", "0.0.0.0", data=data)
    assert code == 2 and "--auth none is refused on 0.0.0.0" in err
    code, _, err = await cli("token", "create", "nobody", data=data)
    assert code == 2 and "nobody" in err
    code, _, err = await cli("token", "create", "x", "--expires", "soon", data=data)
    assert code == 2 and "bad duration" in err
    code, _, err = await cli("grant", "sales", "nobody", "viewer", data=data)
    assert code == 2 and "nobody" in err
    assert sys.executable
