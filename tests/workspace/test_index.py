"""The index follows the files: searchable soon after a write, gone after delete."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from microhive.errors import InvalidInput
from microhive.workspace import Workspace

from .wshelp import eventually, settings


async def paths_for(ws: Workspace, query: str, **kw: object) -> list[str]:
    return [h.path for h in await ws.search(query, **kw)]  # type: ignore[arg-type]


async def indexed(ws: Workspace, path: str) -> bool:
    return (await ws.info(path)).index_state == "indexed"


async def test_a_write_becomes_searchable_and_a_delete_leaves(ws: Workspace) -> None:
    await ws.write("zoo/bees.md", "# Bees\nHoneybees make honey from flower nectar.")
    await ws.write("zoo/ants.txt", "Ant colonies are ruled by a queen.")
    await eventually(lambda: indexed(ws, "zoo/ants.txt"), what="indexing")
    hits = await ws.search("honey nectar")
    assert hits[0].path == "zoo/bees.md"
    assert hits[0].version == 1 and hits[0].chunk == 0
    assert "**honey**" in hits[0].snippet.lower()
    assert hits[0].keyword_rank == 1
    await ws.delete("zoo/bees.md")
    assert "zoo/bees.md" not in await paths_for(ws, "honey nectar")
    assert "zoo/bees.md" not in await paths_for(ws, "honey", mode="keyword")


async def test_overwritten_content_leaves_the_index(ws: Workspace) -> None:
    await ws.write("doc.md", "The password is swordfish.")
    await eventually(lambda: indexed(ws, "doc.md"))
    assert await paths_for(ws, "swordfish", mode="keyword") == ["doc.md"]
    await ws.write("doc.md", "Nothing to see here.")
    assert await paths_for(ws, "swordfish", mode="keyword") == []
    await eventually(lambda: indexed(ws, "doc.md"))
    assert await paths_for(ws, "swordfish", mode="keyword") == []
    hits = await ws.search("nothing to see", mode="keyword")
    assert [(h.path, h.version) for h in hits] == [("doc.md", 2)]
    states = [v.index_state for v in await ws.versions("doc.md")]
    assert states == ["indexed", "indexed"]


async def test_filters_by_folder_and_type(ws: Workspace) -> None:
    await ws.write("a/x.md", "solar panels and batteries")
    await ws.write("a-evil/y.md", "solar panels everywhere")
    await ws.write("b/z.json", '{"note": "solar panels"}')
    await eventually(lambda: indexed(ws, "b/z.json"))
    assert await paths_for(ws, "solar panels", folder="a") == ["a/x.md"]
    assert await paths_for(ws, "solar panels", content_types=["application/json"]) == ["b/z.json"]
    assert set(await paths_for(ws, "solar panels")) == {"a/x.md", "a-evil/y.md", "b/z.json"}


async def test_index_states_for_binary_and_broken_files(ws: Workspace) -> None:
    binary = await ws.write("img.bin", bytes([0, 255, 1, 254]) * 10)
    assert binary.index_state == "skipped"
    await ws.write("broken.pdf", b"%PDF-1.4 this is not really a pdf")
    info = await eventually(
        lambda: _state_not_pending(ws, "broken.pdf"), what="the broken PDF to be processed"
    )
    assert info.index_state == "failed"
    assert info.index_error


async def _state_not_pending(ws: Workspace, path: str) -> object:
    info = await ws.info(path)
    return info if info.index_state != "pending" else None


async def test_pdf_text_is_indexed(ws: Workspace) -> None:
    pypdf = pytest.importorskip("pypdf")
    writer = pypdf.PdfWriter()
    writer.add_blank_page(width=200, height=200)
    from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

    font = DictionaryObject(
        {
            NameObject("/Type"): NameObject("/Font"),
            NameObject("/Subtype"): NameObject("/Type1"),
            NameObject("/BaseFont"): NameObject("/Helvetica"),
        }
    )
    page = writer.pages[0]
    page[NameObject("/Resources")] = DictionaryObject(
        {NameObject("/Font"): DictionaryObject({NameObject("/F1"): font})}
    )
    stream = DecodedStreamObject()
    stream.set_data(b"BT /F1 12 Tf 20 100 Td (Photosynthesis converts light) Tj ET")
    page[NameObject("/Contents")] = writer._add_object(stream)
    buf = io.BytesIO()
    writer.write(buf)
    await ws.write("papers/plants.pdf", buf.getvalue())
    await eventually(lambda: indexed(ws, "papers/plants.pdf"))
    hits = await ws.search("photosynthesis", mode="keyword")
    assert [h.path for h in hits] == ["papers/plants.pdf"]


async def test_bad_queries_are_refused(ws: Workspace) -> None:
    with pytest.raises(InvalidInput, match="empty"):
        await ws.search("   ")
    with pytest.raises(InvalidInput, match="mode"):
        await ws.search("x", mode="magic")
    # FTS operators in user text are plain words, never syntax.
    await ws.search('NEAR("a" b) OR * AND -', mode="keyword")


async def test_a_restart_resumes_pending_indexing(tmp_path: Path) -> None:
    cfg = settings(tmp_path)
    ws = Workspace(cfg)
    await ws.start(background=False)  # a process that dies before indexing
    await ws.write("later.md", "resumable indexing works")
    await ws.aclose()
    async with Workspace(cfg) as again:
        await eventually(lambda: indexed(again, "later.md"), what="indexing after restart")
        assert await paths_for(again, "resumable", mode="keyword") == ["later.md"]
        # The vectors were reloaded from disk too.
        assert "later.md" in await paths_for(again, "resumable indexing", mode="vector")
