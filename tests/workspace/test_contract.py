"""One contract every workspace backend passes, run against each real engine.

``TestEmbedded`` runs it on the local folder + SQLite store, ``TestPostgres`` on
the machine's PostgreSQL server (a throwaway schema per test, dropped after).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from microhive.embeddings import open_embedder
from microhive.errors import Conflict, InvalidInput, NotFound
from microhive.workspace import FileTooLarge, Grant, PermissionDenied
from microhive.workspace.backend import WorkspaceBackend, open_backend

WS = "contract"
LIMIT = 4096


class BackendContract:
    """Subclasses provide the ``backend`` fixture."""

    async def test_versions_read_old_and_restore(self, backend: WorkspaceBackend) -> None:
        a = await backend.write(WS, "p/f.json", b'{"a": 1}', author="researcher")
        b = await backend.write(WS, "p/f.json", b'{"a": 2}', author="writer")
        assert (a.version, b.version, b.author) == (1, 2, "writer")
        assert b.content_type == "application/json"
        assert (await backend.read(WS, "p/f.json"))[1] == b'{"a": 2}'
        assert (await backend.read(WS, "p/f.json", version=1))[1] == b'{"a": 1}'
        restored = await backend.restore(WS, "p/f.json", 1)
        assert restored.version == 3
        assert (await backend.read(WS, "p/f.json"))[1] == b'{"a": 1}'
        assert [v.version for v in await backend.versions(WS, "p/f.json")] == [1, 2, 3]

    async def test_stale_writes_change_nothing(self, backend: WorkspaceBackend) -> None:
        await backend.write(WS, "d.md", b"one")
        await backend.write(WS, "d.md", b"two", expected_version=1)
        with pytest.raises(Conflict):
            await backend.write(WS, "d.md", b"stale", expected_version=1)
        with pytest.raises(Conflict):
            await backend.write(WS, "d.md", b"create-only", expected_version=0)
        with pytest.raises(Conflict):
            await backend.delete(WS, "d.md", expected_version=1)
        info, data = await backend.read(WS, "d.md")
        assert (info.version, data) == (2, b"two")

    async def test_idempotency_and_append(self, backend: WorkspaceBackend) -> None:
        a = await backend.write(WS, "log", b"x\n", append=True, idempotency_key="k")
        b = await backend.write(WS, "log", b"x\n", append=True, idempotency_key="k")
        assert a == b
        await backend.write(WS, "log", b"y\n", append=True)
        assert (await backend.read(WS, "log"))[1] == b"x\ny\n"
        with pytest.raises(Conflict):
            await backend.write(WS, "log", b"z\n", append=True, idempotency_key="k")

    async def test_concurrent_retries_apply_once(self, backend: WorkspaceBackend) -> None:
        results = await asyncio.gather(
            *(backend.write(WS, "once.txt", b"hello", idempotency_key="same") for _ in range(4))
        )
        assert len({r.version for r in results}) == 1
        assert len(await backend.versions(WS, "once.txt")) == 1

    async def test_limits_and_escapes(self, backend: WorkspaceBackend) -> None:
        with pytest.raises(FileTooLarge):
            await backend.write(WS, "big", b"x" * (LIMIT + 1))
        for bad in ("../x", "a/../../x", "/", "a\\b", "a\x00b", "cafe\u0301"):
            with pytest.raises(InvalidInput):
                await backend.write(WS, bad, b"x")
        assert (await backend.list(WS)).items == []

    async def test_list_move_copy_delete(self, backend: WorkspaceBackend) -> None:
        for i in range(5):
            await backend.write(WS, f"n/{i}.md", b"note")
        await backend.write(WS, "n/sub/x.json", b"{}")
        await backend.write(WS, "n-evil/y.md", b"no")
        seen, cursor = [], None
        while True:
            page = await backend.list(WS, "n", glob="*.md", limit=2, cursor=cursor)
            seen += [i.path for i in page.items]
            if not (cursor := page.next_cursor):
                break
        assert seen == [f"n/{i}.md" for i in range(5)]
        top = await backend.list(WS, "n", recursive=False)
        assert top.folders == ["n/sub"] and len(top.items) == 5
        await backend.copy(WS, "n/0.md", "c/0.md")
        moved = await backend.move(WS, "n/1.md", "m/1.md")
        assert moved.path == "m/1.md"
        with pytest.raises(NotFound):
            await backend.read(WS, "n/1.md")
        deleted = await backend.delete(WS, "c/0.md")
        assert deleted.deleted and deleted.version == 2
        with pytest.raises(NotFound):
            await backend.info(WS, "c/0.md")
        assert (await backend.read(WS, "c/0.md", version=1))[1] == b"note"

    async def test_grants(self, backend: WorkspaceBackend) -> None:
        await backend.write(WS, "team/a.md", b"a")
        await backend.write(WS, "team-evil/b.md", b"b")
        reader = Grant(folders=("team",), read_only=True)
        assert (await backend.read(WS, "team/a.md", grant=reader))[1] == b"a"
        with pytest.raises(PermissionDenied):
            await backend.read(WS, "team-evil/b.md", grant=reader)
        with pytest.raises(PermissionDenied):
            await backend.write(WS, "team/a.md", b"x", grant=reader)
        assert [i.path for i in (await backend.list(WS, grant=reader)).items] == ["team/a.md"]

    async def test_index_follows_the_files(self, backend: WorkspaceBackend) -> None:
        await backend.write(WS, "zoo/bees.md", b"Honeybees make honey from nectar.")
        await backend.write(WS, "zoo/ants.txt", b"Ant colonies are ruled by a queen.")
        await backend.write(WS, "x/bees.json", b'{"note": "honey for sale"}')
        await backend.write(WS, "bad.pdf", b"%PDF-1.4 not really")
        assert (await backend.info(WS, "zoo/bees.md")).index_state == "pending"
        assert await backend.index_pending() == 4
        assert (await backend.info(WS, "zoo/bees.md")).index_state == "indexed"
        failed = await backend.info(WS, "bad.pdf")
        assert failed.index_state == "failed" and failed.index_error
        hits = await backend.search(WS, "honey nectar")
        assert hits[0].path == "zoo/bees.md" and "**honey**" in hits[0].snippet.lower()
        for mode in ("keyword", "vector"):
            found = await backend.search(WS, "honey nectar", mode=mode)
            assert found[0].path == "zoo/bees.md", mode
        in_folder = await backend.search(WS, "honey", folder="x")
        assert [h.path for h in in_folder] == ["x/bees.json"]
        typed = await backend.search(WS, "honey", content_types=["text/markdown"])
        assert [h.path for h in typed] == ["zoo/bees.md"]
        await backend.write(WS, "zoo/bees.md", b"Replaced with something else.")
        assert "zoo/bees.md" not in {h.path for h in await backend.search(WS, "nectar")}
        await backend.index_pending()
        await backend.delete(WS, "zoo/ants.txt")
        assert await backend.search(WS, "queen colonies", mode="keyword") == []
        with pytest.raises(InvalidInput):
            await backend.search(WS, " ")


class TestEmbedded(BackendContract):
    @pytest.fixture
    async def backend(self, tmp_path: Path) -> AsyncIterator[WorkspaceBackend]:
        b = open_backend(f"file://{tmp_path}", open_embedder("hashing"), max_file_bytes=LIMIT)
        await b.start()
        yield b
        await b.aclose()


@pytest.mark.services
class TestPostgres(BackendContract):
    @pytest.fixture
    async def backend(self, postgres_url: str) -> AsyncIterator[WorkspaceBackend]:
        import asyncpg

        schema = f"ws_test_{uuid.uuid4().hex[:12]}"
        b = open_backend(
            f"{postgres_url}?schema={schema}", open_embedder("hashing"), max_file_bytes=LIMIT
        )
        await b.start()
        try:
            yield b
        finally:
            await b.aclose()
            conn = await asyncpg.connect(postgres_url)
            try:
                await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            finally:
                await conn.close()
