"""The tool-service kinds as real mesh processes: ``microhive serve NAME`` per service."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from mcp import Client, StdioServerParameters

from .conftest import wait_until as wait_for

MESH = """
name: tools-test
services:
  calc-rest:
    kind: calculator-rest
  calculator:
    kind: openapi-tools
    depends_on: [calc-rest]
    settings: {upstream: calc-rest}
  mytools:
    kind: tool
    settings: {tools: "mytools:greet,divide"}
  mood:
    kind: sentiment
  docs:
    kind: pdf
    settings: {root: docs}
  web:
    kind: web
"""

MYTOOLS = '''
def greet(name: str) -> str:
    """Say hello."""
    return f"hello {name}"


def divide(a: float, b: float) -> float:
    """Divide a by b."""
    return a / b
'''


def _microhive() -> str:
    return str(Path(sys.executable).parent / "microhive")


@pytest.fixture
def mesh_dir(tmp_path: Path) -> Path:
    (tmp_path / "microhive.yaml").write_text(MESH)
    (tmp_path / "mytools.py").write_text(MYTOOLS)
    (tmp_path / "docs").mkdir()
    return tmp_path


@pytest.fixture
def start(mesh_dir: Path) -> Iterator[object]:
    procs: list[subprocess.Popen[bytes]] = []

    def run(*names: str) -> dict[str, str]:
        """Start the named services together; return their base URLs once they listen."""
        started = {}
        for name in names:
            with (mesh_dir / f"{name}.log").open("wb") as log:  # a file: a pipe could fill up
                proc = subprocess.Popen(
                    [_microhive(), "serve", name, "-f", str(mesh_dir / "microhive.yaml")],
                    cwd=mesh_dir,
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                )
            procs.append(proc)
            started[name] = proc
        urls = {}
        for name, proc in started.items():
            port_file = mesh_dir / ".microhive" / "ports" / f"{name}-0.port"

            def up(
                proc: subprocess.Popen[bytes] = proc, port_file: Path = port_file, name: str = name
            ) -> bool:
                if proc.poll() is not None:
                    err = (mesh_dir / f"{name}.log").read_text(errors="replace")
                    pytest.fail(f"{name} exited with {proc.returncode}: {err[-2000:]}")
                return port_file.exists() and port_file.read_text().strip().isdigit()

            wait_for(up, timeout=30, what=f"{name} to write its port file")
            urls[name] = f"http://127.0.0.1:{port_file.read_text().strip()}"
        return urls

    yield run
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def test_tool_kinds_run_as_mesh_services(start: object) -> None:
    run = start  # type: ignore[assignment]
    rest = run("calc-rest")["calc-rest"]  # type: ignore[operator]
    urls = run("calculator", "mytools", "mood", "docs", "web")  # type: ignore[operator]
    async with httpx.AsyncClient() as http:
        assert (await http.get(rest + "/openapi.json")).status_code == 200
        for url in urls.values():
            wait_for(lambda u=url: httpx.get(u + "/readyz").status_code == 200, what=f"{url}")
            assert (await http.get(url + "/healthz")).status_code == 200
        evil = await http.post(
            urls["mytools"] + "/mcp",
            json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
            headers={"origin": "http://evil.example", "accept": "application/json"},
        )
        assert evil.status_code == 403
    async with Client(urls["calculator"] + "/mcp") as client:
        result = await client.call_tool("divide", {"a": 10, "b": 4})
        assert result.structured_content == {"result": 2.5}
        failed = await client.call_tool("divide", {"a": 1, "b": 0})
        assert failed.is_error and "HTTP 400" in str(failed.content)
    async with Client(urls["mytools"] + "/mcp") as client:
        assert {t.name for t in (await client.list_tools()).tools} == {"greet", "divide"}
        assert (await client.call_tool("greet", {"name": "bee"})).structured_content == {
            "result": "hello bee"
        }
        crashed = await client.call_tool("divide", {"a": 1, "b": 0})
        assert crashed.is_error and "ZeroDivisionError" in str(crashed.content)
        assert not (await client.call_tool("divide", {"a": 1, "b": 2})).is_error
    async with Client(urls["mood"] + "/mcp") as client:
        mood = await client.call_tool("analyze", {"text": "This is awful."})
        assert (
            mood.structured_content is not None and mood.structured_content["label"] == "negative"
        )
    async with Client(urls["web"] + "/mcp") as client:
        refused = await client.call_tool("fetch", {"url": rest + "/openapi.json"})
        assert refused.is_error and "target_refused" in str(refused.content)


async def test_tool_service_over_stdio(tmp_path: Path) -> None:
    script = tmp_path / "stdio_tools.py"
    script.write_text(
        textwrap.dedent(
            """
            from microhive.mcp import tool_service

            def square(x: int) -> int:
                '''Square a number.'''
                return x * x

            tool_service("stdio-demo", [square], read_only=["square"]).run_stdio()
            """
        )
    )
    params = StdioServerParameters(command=sys.executable, args=[str(script)], cwd=str(tmp_path))
    async with Client(params) as client:
        tools = (await client.list_tools()).tools
        assert [t.name for t in tools] == ["square"]
        result = await client.call_tool("square", {"x": 12})
        assert result.structured_content == {"result": 144}
