"""SIGKILL a real workspace service mid-write; the restart loses nothing acknowledged.

The service runs as ``serve_service(mesh, "workspace")`` in a child process,
exactly as the supervisor starts it. Writes are fired concurrently, the process
is killed while some are in flight, then restarted: every acknowledged write
reads back intact and becomes searchable, and the webhook deliveries queued for
a receiver that was down all arrive once it comes up.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from standardwebhooks.webhooks import Webhook as Verifier

from tests.conftest import free_port

from .wshelp import Receiver, Server, eventually

_LAUNCH = (
    "import sys; from microhive.service import serve_service; "
    "sys.exit(serve_service(sys.argv[1], 'workspace', port=0))"
)


class Proc:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port_file = folder / ".microhive" / "ports" / "workspace-0.port"
        self.port_file.unlink(missing_ok=True)
        self.log = open(folder / "workspace.log", "ab")  # noqa: SIM115 - closed in kill()
        self.popen = subprocess.Popen(
            [sys.executable, "-c", _LAUNCH, "microhive.yaml"],
            cwd=folder,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ),
        )

    async def ready(self) -> str:
        async def port() -> str | None:
            if self.popen.poll() is not None:
                pytest.fail(
                    "workspace exited early:\n" + (self.folder / "workspace.log").read_text()
                )
            if self.port_file.exists() and self.port_file.read_text().strip():
                return f"http://127.0.0.1:{int(self.port_file.read_text())}"
            return None

        url = await eventually(port, within=30, what="the workspace service to listen")
        return str(url)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(timeout=10)
        self.log.close()


@pytest.fixture
def mesh(tmp_path: Path) -> Path:
    doc: dict[str, Any] = {
        "version": 1,
        "name": "crash",
        "security": {"allow_private_targets": True},
        "stores": {"workspace": "file://./wsdata"},
        "services": {
            "workspace": {
                "kind": "workspace",
                "settings": {
                    "embedder": "hashing",
                    "poll_interval": 0.2,
                    "webhook_schedule": [0.1, 0.2, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3],
                },
            }
        },
    }
    (tmp_path / "microhive.yaml").write_text(yaml.safe_dump(doc))
    return tmp_path


async def test_sigkill_loses_no_acknowledged_write(
    mesh: Path, serve: Callable[..., Awaitable[Server]]
) -> None:
    proc = Proc(mesh)
    try:
        base = await proc.ready()
        hook_port = free_port()  # the receiver is down until after the restart
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            made = await http.post(
                "/v1/webhooks",
                json={"url": f"http://127.0.0.1:{hook_port}/hook", "events": ["file.created"]},
            )
            assert made.status_code == 201, made.text
            secret = made.json()["secret"]
            acked: dict[str, bytes] = {}

            async def put(i: int) -> None:
                body = f"note {i}: the crash-safe hive keeps record {i}".encode()
                try:
                    r = await http.put(f"/v1/ws/default/files/crash/n{i}.md", content=body)
                except httpx.HTTPError:
                    return  # in flight when the process died: not acknowledged
                if r.status_code == 201:
                    acked[f"crash/n{i}.md"] = body

            tasks = [asyncio.create_task(put(i)) for i in range(60)]

            async def enough() -> bool:
                return len(acked) >= 20

            await eventually(enough, what="20 acknowledged writes")
            proc.kill()
            await asyncio.gather(*tasks)
        assert len(acked) >= 20

        proc = Proc(mesh)
        base = await proc.ready()
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            for path, body in acked.items():
                got = await http.get(f"/v1/ws/default/files/{path}")
                assert got.status_code == 200 and got.content == body, path

            async def all_indexed() -> bool:
                for path in acked:
                    info = (await http.get(f"/v1/ws/default/info/{path}")).json()
                    if info["index_state"] != "indexed":
                        return False
                return True

            await eventually(all_indexed, within=30, what="every acknowledged write indexed")
            hits = (
                await http.get(
                    "/v1/ws/default/search",
                    params={"q": "crash-safe hive", "limit": 100, "mode": "keyword"},
                )
            ).json()["hits"]
            assert set(acked) <= {h["path"] for h in hits}

            receiver = Receiver()
            await serve(receiver.app(), hook_port)

            async def delivered() -> bool:
                paths = {
                    Verifier(secret).verify(body, headers)["data"]["path"]
                    for headers, body in receiver.requests
                }
                return set(acked) <= paths

            await eventually(delivered, within=30, what="every pending webhook delivered")
    finally:
        proc.kill()
