"""Files and versions on a real store: versions, conflicts, idempotency, limits, grants."""

from __future__ import annotations

from pathlib import Path

import pytest

from microhive.errors import Conflict, InvalidInput, NotFound
from microhive.workspace import FileTooLarge, Grant, PermissionDenied, Workspace

from .wshelp import settings


async def test_every_write_is_a_version_and_old_ones_stay_readable(ws: Workspace) -> None:
    first = await ws.write("p/findings.json", '{"a": 1}', author="researcher")
    second = await ws.write("p/findings.json", '{"a": 2}', author="writer")
    assert (first.version, second.version) == (1, 2)
    assert first.content_type == "application/json"
    assert second.author == "writer"
    assert second.created_at == first.created_at <= second.updated_at
    info, data = await ws.read("p/findings.json")
    assert (info.version, data) == (2, b'{"a": 2}')
    _, old = await ws.read("p/findings.json", version=1)
    assert old == b'{"a": 1}'
    restored = await ws.restore("p/findings.json", 1)
    assert restored.version == 3
    assert (await ws.read("p/findings.json"))[1] == b'{"a": 1}'
    assert [v.version for v in await ws.versions("p/findings.json")] == [1, 2, 3]


async def test_a_stale_write_is_refused_and_nothing_is_lost(ws: Workspace) -> None:
    v1 = await ws.write("doc.md", "first")
    await ws.write("doc.md", "second (someone else)", expected_version=v1.version)
    with pytest.raises(Conflict, match="expected version 1"):
        await ws.write("doc.md", "third (stale)", expected_version=v1.version)
    info, data = await ws.read("doc.md")
    assert (info.version, data) == (2, b"second (someone else)")
    assert len(await ws.versions("doc.md")) == 2
    with pytest.raises(Conflict):
        await ws.write("doc.md", "create only", expected_version=0)
    with pytest.raises(Conflict):
        await ws.delete("doc.md", expected_version=1)
    assert (await ws.info("doc.md")).version == 2


async def test_an_idempotent_retry_is_applied_once(ws: Workspace) -> None:
    a = await ws.write("log.txt", "line\n", append=True, idempotency_key="req-1")
    b = await ws.write("log.txt", "line\n", append=True, idempotency_key="req-1")
    assert a == b
    assert (await ws.read("log.txt"))[1] == b"line\n"
    with pytest.raises(Conflict, match="different request"):
        await ws.write("log.txt", "other\n", append=True, idempotency_key="req-1")


async def test_append_move_copy_delete(ws: Workspace) -> None:
    await ws.write("a/log.txt", "one\n")
    await ws.write("a/log.txt", "two\n", append=True)
    assert (await ws.read("a/log.txt"))[1] == b"one\ntwo\n"
    await ws.copy("a/log.txt", "b/copy.txt")
    moved = await ws.move("a/log.txt", "c/moved.txt")
    assert moved.path == "c/moved.txt"
    with pytest.raises(NotFound):
        await ws.read("a/log.txt")
    deleted = await ws.delete("b/copy.txt")
    assert deleted.deleted
    with pytest.raises(NotFound):
        await ws.read("b/copy.txt")
    assert (await ws.read("b/copy.txt", version=1))[1] == b"one\ntwo\n"
    assert [i.path for i in (await ws.list()).items] == ["c/moved.txt"]
    again = await ws.write("b/copy.txt", "reborn")
    assert again.version == 3 and not again.deleted


async def test_binary_content_and_the_size_limit(tmp_path: Path) -> None:
    pdf = b"%PDF-1.4\n" + bytes(range(256)) * 4
    async with Workspace(settings(tmp_path, max_file_bytes=2000)) as ws:
        info = await ws.write("docs/paper", pdf)
        assert info.content_type == "application/pdf"
        assert (await ws.read("docs/paper"))[1] == pdf
        with pytest.raises(FileTooLarge, match="limit is 2000"):
            await ws.write("big.bin", b"x" * 2001)
        with pytest.raises(FileTooLarge):
            await ws.write("docs/paper", b"x" * 1000, append=True)
        assert (await ws.read("docs/paper"))[1] == pdf
        with pytest.raises(NotFound):
            await ws.info("big.bin")


async def test_listing_with_globs_folders_and_pages(ws: Workspace) -> None:
    for i in range(7):
        await ws.write(f"notes/n{i}.md", f"note {i}")
    await ws.write("notes/deep/x.json", "{}")
    await ws.write("other.txt", "x")
    await ws.mkdir("empty")
    top = await ws.list(recursive=False)
    assert [i.path for i in top.items] == ["other.txt"]
    assert top.folders == ["empty", "notes"]
    seen: list[str] = []
    cursor = None
    while True:
        page = await ws.list("notes", glob="*.md", limit=3, cursor=cursor)
        seen += [i.path for i in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == [f"notes/n{i}.md" for i in range(7)]
    assert [i.path for i in (await ws.list("notes", glob="deep/*.json")).items] == [
        "notes/deep/x.json"
    ]
    with pytest.raises(InvalidInput, match="cursor"):
        await ws.list(cursor="%%%")


async def test_workspaces_are_separate(ws: Workspace) -> None:
    await ws.write("a.md", "one", workspace="alpha")
    await ws.write("a.md", "two", workspace="beta")
    assert (await ws.read("a.md", workspace="alpha"))[1] == b"one"
    assert {"alpha", "beta"} <= set(await ws.workspaces())
    with pytest.raises(InvalidInput, match="workspace name"):
        await ws.write("a.md", "x", workspace="../etc")


async def test_grants_limit_folders_and_writing(ws: Workspace) -> None:
    await ws.write("team/a.md", "mine")
    await ws.write("team-evil/b.md", "not mine")
    reader = Grant(folders=("team",), read_only=True)
    assert (await ws.read("team/a.md", grant=reader))[1] == b"mine"
    with pytest.raises(PermissionDenied, match="read-only"):
        await ws.write("team/a.md", "x", grant=reader)
    with pytest.raises(PermissionDenied, match="outside"):
        await ws.read("team-evil/b.md", grant=reader)
    listed = await ws.list(grant=reader)
    assert [i.path for i in listed.items] == ["team/a.md"]
    writer = Grant(folders=("team",))
    await ws.write("team/c.md", "ok", grant=writer)
    with pytest.raises(PermissionDenied):
        await ws.move("team/c.md", "elsewhere/c.md", grant=writer)


async def test_trace_id_of_the_writer_is_recorded(ws: Workspace) -> None:
    from microhive.context import CallContext

    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    ctx = CallContext.from_headers({"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
    with ctx.activate():
        info = await ws.write("t.md", "traced")
    assert info.trace_id == trace_id
