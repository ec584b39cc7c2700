"""Text and metadata of PDF documents, by page range.

The PDF comes either as a path inside the service's allowed folder
(``settings.root``; a path that leaves it -- ``..``, an absolute path elsewhere, a
symlink pointing out -- is refused) or as base64 content in the call. Parsing is
done by `pypdf <https://pypi.org/project/pypdf/>`_, pure Python; it runs in a
worker thread so one large document does not stall other calls.

Plain API: :func:`read_pdf` and :func:`pdf_metadata` (bytes in, pydantic models
out); :func:`build_service` / :func:`create_service` make the MCP tool service
(tools ``pdf_text`` and ``pdf_info``).
"""

from __future__ import annotations

import base64
import binascii
import importlib
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from pydantic import BaseModel, ConfigDict

from microhive.errors import ConfigError, InvalidInput, MissingDependency, NotFound

if TYPE_CHECKING:
    from microhive.mcp.server import ToolService
    from microhive.service import Service, ServiceContext

__all__ = [
    "MAX_PDF_BYTES",
    "MAX_TEXT_CHARS",
    "PdfMetadata",
    "PdfPage",
    "PdfSource",
    "PdfText",
    "build_service",
    "create_service",
    "parse_page_range",
    "pdf_metadata",
    "read_pdf",
]

MAX_PDF_BYTES = 50 * 1024 * 1024
MAX_TEXT_CHARS = 1_000_000


class PdfMetadata(BaseModel):
    """The document information of a PDF."""

    model_config = ConfigDict(frozen=True)

    page_count: int
    title: str | None = None
    author: str | None = None
    subject: str | None = None
    creator: str | None = None
    producer: str | None = None
    keywords: str | None = None
    created: str | None = None
    modified: str | None = None
    encrypted: bool = False


class PdfPage(BaseModel):
    """The text of one page (``number`` counts from 1)."""

    model_config = ConfigDict(frozen=True)

    number: int
    text: str


class PdfText(BaseModel):
    """The text of the requested pages; ``truncated`` when the text limit cut it short."""

    model_config = ConfigDict(frozen=True)

    page_count: int
    pages: list[PdfPage]
    truncated: bool = False

    @property
    def text(self) -> str:
        return "\n\n".join(page.text for page in self.pages)


def _pypdf() -> Any:
    try:
        return importlib.import_module("pypdf")
    except ImportError:
        raise MissingDependency("pypdf", "tools", "PDF extraction") from None


def parse_page_range(spec: str | None, page_count: int) -> list[int]:
    """Page numbers (1-based) from ``"1-3,5,8-"``; ``None``/``""``/``"all"`` means every page."""
    if spec is None or not spec.strip() or spec.strip().lower() == "all":
        return list(range(1, page_count + 1))
    pages: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        try:
            if "-" in part:
                start_text, end_text = part.split("-", 1)
                start = int(start_text) if start_text.strip() else 1
                end = int(end_text) if end_text.strip() else page_count
            else:
                start = end = int(part)
        except ValueError:
            raise InvalidInput(
                f"pages: {part!r} is not a page number or range like '2-5'"
            ) from None
        if start < 1 or end < start:
            raise InvalidInput(f"pages: {part!r} is not a valid range")
        if start > page_count:
            raise InvalidInput(f"pages: {part!r} is past the last page ({page_count})")
        pages.extend(n for n in range(start, min(end, page_count) + 1) if n not in pages)
    return pages


def _reader(data: bytes) -> Any:
    if len(data) > MAX_PDF_BYTES:
        raise InvalidInput(f"the PDF is {len(data)} bytes; the limit is {MAX_PDF_BYTES}")
    if not data.lstrip()[:5] == b"%PDF-":
        raise InvalidInput("not a PDF document (no %PDF- header)")
    pypdf = _pypdf()
    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            reader.decrypt("")
        _ = len(reader.pages)
    except Exception as exc:
        raise InvalidInput(f"cannot read the PDF: {exc}") from None
    return reader


def _info(reader: Any, key: str) -> str | None:
    meta = reader.metadata or {}
    value = meta.get(key)
    return str(value) if value not in (None, "") else None


def pdf_metadata(data: bytes) -> PdfMetadata:
    """The metadata of the PDF in ``data``."""
    reader = _reader(data)
    return PdfMetadata(
        page_count=len(reader.pages),
        title=_info(reader, "/Title"),
        author=_info(reader, "/Author"),
        subject=_info(reader, "/Subject"),
        creator=_info(reader, "/Creator"),
        producer=_info(reader, "/Producer"),
        keywords=_info(reader, "/Keywords"),
        created=_info(reader, "/CreationDate"),
        modified=_info(reader, "/ModDate"),
        encrypted=bool(reader.is_encrypted),
    )


def read_pdf(data: bytes, pages: str | None = None, max_chars: int = MAX_TEXT_CHARS) -> PdfText:
    """The text of the PDF in ``data``, for the pages in ``pages`` (e.g. ``"1-3,7"``)."""
    reader = _reader(data)
    count = len(reader.pages)
    out: list[PdfPage] = []
    used = 0
    truncated = False
    for number in parse_page_range(pages, count):
        try:
            text = reader.pages[number - 1].extract_text() or ""
        except Exception as exc:
            raise InvalidInput(f"cannot extract the text of page {number}: {exc}") from None
        if used + len(text) > max_chars:
            text = text[: max(0, max_chars - used)]
            truncated = True
        used += len(text)
        out.append(PdfPage(number=number, text=text.strip()))
        if truncated:
            break
    return PdfText(page_count=count, pages=out, truncated=truncated)


class PdfSource:
    """Where PDFs may come from: files under ``root`` (if any) and inline base64 content."""

    def __init__(self, root: str | Path | None) -> None:
        self.root = Path(root).expanduser().resolve() if root is not None else None

    def load(self, path: str | None, content_base64: str | None) -> bytes:
        if (path is None) == (content_base64 is None):
            raise InvalidInput("give exactly one of 'path' and 'content_base64'")
        if content_base64 is not None:
            if len(content_base64) > MAX_PDF_BYTES * 4 // 3 + 4:
                raise InvalidInput(f"the PDF is larger than the {MAX_PDF_BYTES}-byte limit")
            try:
                return base64.b64decode(content_base64, validate=True)
            except (binascii.Error, ValueError):
                raise InvalidInput("content_base64 is not valid base64") from None
        assert path is not None
        if self.root is None:
            raise InvalidInput("this service reads no files: send the PDF as content_base64")
        candidate = (self.root / path).resolve()
        if not candidate.is_relative_to(self.root):
            raise InvalidInput(f"path {path!r} is outside the allowed folder")
        if not candidate.is_file():
            raise NotFound(f"no PDF file {path!r} in the allowed folder")
        size = candidate.stat().st_size
        if size > MAX_PDF_BYTES:
            raise InvalidInput(f"{path!r} is {size} bytes; the limit is {MAX_PDF_BYTES}")
        return candidate.read_bytes()


def build_service(source: PdfSource, name: str = "pdf") -> ToolService:
    """The PDF tools as an MCP tool service."""
    from microhive.mcp.server import ToolService

    svc = ToolService(name, description="Text and metadata of PDF documents.")

    @svc.tool(read_only=True, idempotent=True, open_world=False)
    async def pdf_text(
        path: str | None = None,
        content_base64: str | None = None,
        pages: str | None = None,
    ) -> PdfText:
        """Extract the text of a PDF, optionally only some pages.

        Args:
            path: a PDF file, relative to the service's allowed folder
            content_base64: the PDF itself, base64-encoded (instead of path)
            pages: page numbers or ranges counted from 1, e.g. "1-3,7" (default: all)
        """
        data = source.load(path, content_base64)
        return await anyio.to_thread.run_sync(read_pdf, data, pages)

    @svc.tool(read_only=True, idempotent=True, open_world=False)
    async def pdf_info(path: str | None = None, content_base64: str | None = None) -> PdfMetadata:
        """The metadata of a PDF: page count, title, author, dates, producer.

        Args:
            path: a PDF file, relative to the service's allowed folder
            content_base64: the PDF itself, base64-encoded (instead of path)
        """
        data = source.load(path, content_base64)
        return await anyio.to_thread.run_sync(pdf_metadata, data)

    return svc


def create_service(ctx: ServiceContext) -> Service:
    """Mesh kind ``pdf``: ``settings.root`` is the folder PDFs may be read from.

    A relative root is taken from the mesh file's folder; without a root, only
    inline (base64) PDFs are accepted.
    """
    from microhive.mcp.services import mesh_service

    _pypdf()
    root = ctx.spec.settings.get("root")
    if root is not None:
        root_path = Path(str(root)).expanduser()
        if not root_path.is_absolute() and ctx.config_path is not None:
            root_path = ctx.config_path.parent / root_path
        if not root_path.is_dir():
            raise ConfigError(f"service {ctx.name!r}: settings.root {root!r} is not a folder")
        root = root_path
    return mesh_service(build_service(PdfSource(root), ctx.name), ctx)
