"""What is text, how to get it out, and how to cut it into chunks for the index."""

from __future__ import annotations

import io
import mimetypes
import re

from microhive.errors import MissingDependency

__all__ = ["chunk_text", "extract_text", "guess_content_type", "is_indexable"]

_CODE = {
    ".py": "text/x-python",
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".ts": "text/x-typescript",
    ".js": "text/javascript",
    ".rs": "text/x-rust",
    ".go": "text/x-go",
    ".java": "text/x-java",
    ".c": "text/x-c",
    ".h": "text/x-c",
    ".cpp": "text/x-c++",
    ".rb": "text/x-ruby",
    ".sh": "text/x-shellscript",
    ".toml": "text/x-toml",
    ".yaml": "text/yaml",
    ".yml": "text/yaml",
    ".json": "application/json",
    ".jsonl": "application/jsonl",
    ".csv": "text/csv",
    ".txt": "text/plain",
    ".html": "text/html",
    ".htm": "text/html",
    ".xml": "application/xml",
    ".sql": "text/x-sql",
    ".pdf": "application/pdf",
}
_TEXTLIKE_APP = {
    "application/json",
    "application/jsonl",
    "application/xml",
    "application/pdf",
    "application/javascript",
    "application/x-yaml",
}


def guess_content_type(path: str, data: bytes) -> str:
    """From the extension first, then by sniffing (PDF magic, valid UTF-8)."""
    dot = path.rfind(".")
    ext = path[dot:].lower() if dot > path.rfind("/") else ""
    if ext in _CODE:
        return _CODE[ext]
    guessed, _ = mimetypes.guess_type(path)
    if guessed:
        return guessed
    if data.startswith(b"%PDF-"):
        return "application/pdf"
    try:
        data[:65536].decode("utf-8")
    except UnicodeDecodeError:
        return "application/octet-stream"
    return "text/plain"


def is_indexable(content_type: str) -> bool:
    return content_type.startswith("text/") or content_type in _TEXTLIKE_APP


_TAG = re.compile(r"<(script|style)\b.*?</\1>|<[^>]+>", re.S | re.I)


def extract_text(data: bytes, content_type: str) -> str:
    """The searchable text of a file (PDF text via pypdf, HTML without tags)."""
    if content_type == "application/pdf":
        try:
            from pypdf import PdfReader
        except ImportError as exc:
            raise MissingDependency("pypdf", "workspace", "Indexing PDF files") from exc
        reader = PdfReader(io.BytesIO(data))
        return "\n\n".join((page.extract_text() or "") for page in reader.pages)
    text = data.decode("utf-8", errors="replace")
    if content_type == "text/html":
        text = _TAG.sub(" ", text)
    return text


def chunk_text(text: str, *, size: int = 800, overlap: int = 100) -> list[str]:
    """Split into ~``size``-character chunks on paragraph, then sentence, then space bounds.

    Consecutive chunks overlap by up to ``overlap`` characters so a phrase cut at a
    boundary is still found whole in one of them.
    """
    text = text.strip()
    if not text:
        return []
    if len(text) <= size:
        return [text]
    chunks: list[str] = []
    start = 0
    while start < len(text):
        end = min(start + size, len(text))
        if end < len(text):
            window = text[start:end]
            cut = max(window.rfind("\n\n"), window.rfind(". "), window.rfind("\n"))
            if cut < size // 2:
                cut = window.rfind(" ")
            if cut >= size // 2:
                end = start + cut + 1
        piece = text[start:end].strip()
        if piece:
            chunks.append(piece)
        if end >= len(text):
            break
        nxt = end - overlap
        space = text.find(" ", nxt, end)
        start = space + 1 if space != -1 else max(end - overlap, start + 1)
    return chunks
