"""Run ``coframe serve`` as a real subprocess on port 0 (for crash tests)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.serving import timeout

__all__ = ["ServerProcess", "start_server", "cli"]

_READY = re.compile(r"coframe listening on https?://[\d.]+:(\d+)")


@dataclass
class ServerProcess:
    proc: asyncio.subprocess.Process
    port: int
    log: list[str]
    logged: asyncio.Event = field(default_factory=asyncio.Event)  # set on every new log line
    drainer: asyncio.Task[None] | None = None  # reads the output into ``log``

    async def wait_log(self, pattern: str, within: float = 30.0, since: int = 0) -> str:
        """The first log line from index ``since`` on that matches ``pattern`` (a regex);
        waits for it on :attr:`logged`."""
        found = re.compile(pattern)
        seen = since
        async with asyncio.timeout(within):
            while True:
                for line in self.log[seen:]:
                    seen += 1
                    if found.search(line):
                        return line
                self.logged.clear()
                await self.logged.wait()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)

    async def wait(self) -> int:
        return await self.proc.wait()

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 20)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def _drain(stream: asyncio.StreamReader, server: ServerProcess) -> None:
    while line := await stream.readline():
        server.log.append(line.decode(errors="replace").rstrip())
        server.logged.set()


async def start_server(
    *args: str,
    data_dir: Path,
    within: float = 60.0,
    preexec_fn: Callable[[], None] | None = None,
    module: str = "server.cli",
) -> ServerProcess:
    """Start ``coframe serve --port 0 ...`` and wait for its "listening" line.

    ``preexec_fn`` runs in the child before ``exec`` (e.g. to set a resource limit);
    ``module`` is what ``python -m`` runs (a test's variant of the CLI).
    """
    auth = [] if "--auth" in args else ["--auth", "none"]  # the identity tests pass their own
    cmd = [sys.executable, "-m", module, "serve", "--port", "0", "--data-dir", str(data_dir), *auth, *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env, preexec_fn=preexec_fn
    )
    assert proc.stdout is not None
    log: list[str] = []
    async with asyncio.timeout(within):
        while True:
            raw = await proc.stdout.readline()
            if not raw:
                raise RuntimeError("server exited before listening:\n" + "\n".join(log))
            line = raw.decode(errors="replace").rstrip()
            log.append(line)
            m = _READY.search(line)
            if m:
                break
    server = ServerProcess(proc, int(m.group(1)), log)
    server.drainer = asyncio.get_running_loop().create_task(_drain(proc.stdout, server))
    return server


async def cli(*args: str, data: Path, catalog: str | None = None) -> tuple[int, str, str]:
    """Run ``python -m server.cli ARGS --data-dir DATA [--catalog URL]``; (exit code, stdout, stderr)."""
    cmd = [sys.executable, "-m", "server.cli", *args, "--data-dir", str(data)]
    if catalog:
        cmd += ["--catalog", catalog]
    env = {**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
    env.pop("COFRAME_DATA", None)
    env.pop("COFRAME_CATALOG", None)
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=data.parent, env=env
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout(120))
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
