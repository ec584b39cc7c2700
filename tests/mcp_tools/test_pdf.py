"""The pdf tool service on real PDF files written by a minimal writer in this test."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from mcp import Client

from microhive.errors import InvalidInput, NotFound
from microhive.tools.pdf import (
    PdfSource,
    build_service,
    parse_page_range,
    pdf_metadata,
    read_pdf,
)

from .conftest import serve


def make_pdf(pages: list[str], title: str = "Quarterly Report", author: str = "Ada") -> bytes:
    """A valid PDF 1.4 with one line of Helvetica text per page (hand-built xref)."""
    objects: list[bytes] = []
    n = len(pages)
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(n))
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {n} >>".encode())
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    for i, text in enumerate(pages):
        escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        stream = f"BT /F1 18 Tf 72 720 Td ({escaped}) Tj ET".encode()
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            f"/Resources << /Font << /F1 3 0 R >> >> /Contents {5 + 2 * i} 0 R >>".encode()
        )
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    info_number = len(objects) + 1
    objects.append(
        f"<< /Title ({title}) /Author ({author}) /Producer (microhive-tests) >>".encode()
    )
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R /Info %d 0 R >>\n" % (len(objects) + 1, info_number)
    out += b"startxref\n%d\n%%%%EOF\n" % xref
    return bytes(out)


PAGES = ["Revenue grew by twelve percent", "Costs were flat", "Outlook is positive"]


def test_text_metadata_and_page_ranges() -> None:
    data = make_pdf(PAGES)
    meta = pdf_metadata(data)
    assert meta.page_count == 3
    assert (meta.title, meta.author, meta.producer) == (
        "Quarterly Report",
        "Ada",
        "microhive-tests",
    )
    everything = read_pdf(data)
    assert [p.number for p in everything.pages] == [1, 2, 3]
    assert "Revenue grew by twelve percent" in everything.text
    some = read_pdf(data, "2-")
    assert [p.text for p in some.pages] == ["Costs were flat", "Outlook is positive"]
    assert [p.number for p in read_pdf(data, "3,1").pages] == [3, 1]
    cut = read_pdf(data, max_chars=10)
    assert cut.truncated and len(cut.text) <= 10


def test_page_range_parsing_and_bad_input() -> None:
    assert parse_page_range("1-3,5,8-", 9) == [1, 2, 3, 5, 8, 9]
    assert parse_page_range(None, 2) == [1, 2]
    for bad in ["0", "3-1", "x", "10"]:
        with pytest.raises(InvalidInput):
            parse_page_range(bad, 5)
    with pytest.raises(InvalidInput, match="not a PDF"):
        read_pdf(b"hello")
    with pytest.raises(InvalidInput, match="cannot read"):
        read_pdf(b"%PDF-1.4\ngarbage")


def test_paths_are_confined_to_the_allowed_folder(tmp_path: Path) -> None:
    root = tmp_path / "docs"
    root.mkdir()
    (root / "a.pdf").write_bytes(make_pdf(["inside"]))
    (tmp_path / "secret.pdf").write_bytes(make_pdf(["outside"]))
    (root / "link.pdf").symlink_to(tmp_path / "secret.pdf")
    source = PdfSource(root)
    assert source.load("a.pdf", None).startswith(b"%PDF")
    for escape in ["../secret.pdf", str(tmp_path / "secret.pdf"), "link.pdf"]:
        with pytest.raises(InvalidInput, match="outside the allowed folder"):
            source.load(escape, None)
    with pytest.raises(NotFound):
        source.load("missing.pdf", None)
    with pytest.raises(InvalidInput, match="exactly one"):
        source.load(None, None)
    with pytest.raises(InvalidInput, match="reads no files"):
        PdfSource(None).load("a.pdf", None)


async def test_pdf_tools_over_mcp(tmp_path: Path) -> None:
    (tmp_path / "report.pdf").write_bytes(make_pdf(PAGES))
    svc = build_service(PdfSource(tmp_path))
    with serve(svc.asgi_app()) as base:
        async with Client(base + "/mcp") as client:
            text = await client.call_tool("pdf_text", {"path": "report.pdf", "pages": "2"})
            assert not text.is_error
            assert text.structured_content is not None
            assert text.structured_content["pages"] == [{"number": 2, "text": "Costs were flat"}]
            inline = base64.b64encode(make_pdf(["inline page"])).decode()
            info = await client.call_tool("pdf_info", {"content_base64": inline})
            assert info.structured_content is not None
            assert info.structured_content["page_count"] == 1
            escape = await client.call_tool("pdf_text", {"path": "../../etc/passwd"})
            assert escape.is_error and "outside the allowed folder" in str(escape.content)
            broken = await client.call_tool("pdf_info", {"content_base64": "!!!"})
            assert broken.is_error and "base64" in str(broken.content)
