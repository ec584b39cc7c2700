"""The values the workspace hands out: file and version records, pages, search hits.

Plain frozen dataclasses with ``to_dict()`` so REST, MCP, events and the CLI all
show the same field names.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from microhive.errors import PayloadTooLarge, UsageError
from microhive.workspace.paths import in_folder

__all__ = [
    "EVENT_TYPES",
    "FileInfo",
    "FileTooLarge",
    "Grant",
    "IndexState",
    "Page",
    "PermissionDenied",
    "SearchHit",
]

IndexState = Literal["pending", "indexed", "failed", "skipped", "superseded"]

#: Events the workspace publishes (bus subject ``workspace.<type>``, webhook ``type``).
EVENT_TYPES = ("file.created", "file.updated", "file.deleted", "file.indexed")


class FileTooLarge(PayloadTooLarge):
    """The content is larger than the workspace's ``max_file_bytes``."""

    code = "too_large"


class PermissionDenied(UsageError):
    """The caller's token does not allow this operation on this path."""

    code = "forbidden"


@dataclass(frozen=True)
class FileInfo:
    """One version of one file (the current one unless asked otherwise)."""

    workspace: str
    path: str
    version: int
    size: int
    content_type: str
    sha256: str
    author: str | None
    trace_id: str | None
    created_at: float  # when the file first appeared (its first version)
    updated_at: float  # when this version was written
    deleted: bool = False
    index_state: IndexState = "pending"
    index_error: str | None = None

    @property
    def etag(self) -> str:
        return f'"{self.version}"'

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Page:
    """A page of a listing; pass ``next_cursor`` back to get the next one."""

    items: list[FileInfo]
    folders: list[str]
    next_cursor: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "items": [i.to_dict() for i in self.items],
            "folders": self.folders,
            "next_cursor": self.next_cursor,
        }


@dataclass(frozen=True)
class SearchHit:
    """One matching chunk of one file version."""

    path: str
    version: int
    chunk: int
    score: float
    snippet: str
    content_type: str
    keyword_rank: int | None = None
    vector_rank: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Grant:
    """What a caller may do: every folder or some, read-write or read-only."""

    folders: tuple[str, ...] = field(default_factory=tuple)  # empty: everything
    read_only: bool = False

    def check(self, path: str, *, write: bool) -> None:
        """Raise PermissionDenied unless this grant covers ``path`` (and writing)."""
        if write and self.read_only:
            raise PermissionDenied(f"this token is read-only; cannot change {path!r}")
        if self.folders and not any(in_folder(path, f) for f in self.folders):
            raise PermissionDenied(
                f"this token is limited to {', '.join(self.folders)}; {path!r} is outside"
            )

    def covers_folder(self, folder: str) -> bool:
        """True when a listing/search of ``folder`` may be answered (perhaps filtered)."""
        return not self.folders or any(
            in_folder(folder, f) or in_folder(f, folder) for f in self.folders
        )

    def allows(self, path: str) -> bool:
        return not self.folders or any(in_folder(path, f) for f in self.folders)


FULL_ACCESS = Grant()
