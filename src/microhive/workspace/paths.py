"""Workspace path rules: one canonical spelling per file, nothing that can escape.

Paths inside a workspace are POSIX-style, relative and canonical: ``a/b/c.md``.
Anything that could mean something else on some filesystem or to some reader is
refused rather than "fixed", so a caller never writes to a place it did not name:
``..`` and ``.`` segments, absolute paths, empty segments, backslashes, NUL and
other control characters, and text that changes under Unicode NFC normalisation.

Content never lives at a path derived from these names (blobs are stored by
hash), but :func:`confine` still guards every filesystem path we build, so a
symlink planted in the store cannot lead a read or write outside it.
"""

from __future__ import annotations

import fnmatch
import re
import unicodedata
from pathlib import Path

from microhive.errors import InvalidInput

__all__ = [
    "MAX_PATH_LENGTH",
    "clean_folder",
    "clean_path",
    "clean_workspace_name",
    "confine",
    "in_folder",
    "matches_glob",
]

MAX_PATH_LENGTH = 1024
_WS_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


def _refuse(path: object, why: str) -> InvalidInput:
    return InvalidInput(f"invalid path {path!r}: {why}")


def clean_path(path: str, *, what: str = "path") -> str:
    """Return ``path`` in canonical form, or raise InvalidInput saying what is wrong.

    A single leading ``/`` is accepted as "workspace root" (``/a.md`` == ``a.md``),
    since agents often write paths that way; ``//x`` and OS-absolute forms are not.
    """
    if not isinstance(path, str):
        raise InvalidInput(f"{what} must be a string, got {type(path).__name__}")
    if not path or path == "/":
        raise _refuse(path, f"{what} is empty")
    if len(path) > MAX_PATH_LENGTH:
        raise _refuse(path[:40] + "...", f"longer than {MAX_PATH_LENGTH} characters")
    if "\x00" in path:
        raise _refuse(path, "contains a NUL byte")
    if "\\" in path:
        raise _refuse(path, "contains a backslash; use '/' between folders")
    for ch in path:
        if unicodedata.category(ch) in {"Cc", "Cf", "Cs", "Co", "Cn"}:
            raise _refuse(path, f"contains the control or unassigned character U+{ord(ch):04X}")
    if unicodedata.normalize("NFC", path) != path:
        raise _refuse(path, "is not in Unicode NFC form; normalise it before sending")
    if re.match(r"^[A-Za-z]:", path):
        raise _refuse(path, "looks like a drive-letter path")
    body = path[1:] if path.startswith("/") else path
    if body.startswith("/") or body.startswith("~"):
        raise _refuse(path, "absolute paths are not allowed")
    if body.endswith("/"):
        raise _refuse(path, f"{what} ends with '/'")
    parts = body.split("/")
    for part in parts:
        if part == "":
            raise _refuse(path, "has an empty segment ('//')")
        if part in {".", ".."}:
            raise _refuse(path, f"has a '{part}' segment; paths cannot leave the workspace")
        if part != part.strip():
            raise _refuse(path, "a segment starts or ends with whitespace")
    return "/".join(parts)


def clean_folder(folder: str | None) -> str:
    """A folder prefix in canonical form: ``''`` for the root, else ``a/b`` (no slashes)."""
    if folder is None or folder.strip("/") == "":
        return ""
    return clean_path(folder.rstrip("/") if folder != "/" else folder, what="folder")


def clean_workspace_name(name: str) -> str:
    """Workspace names are short slugs (they appear in URLs and file names)."""
    if not isinstance(name, str) or not _WS_NAME.match(name):
        raise InvalidInput(
            f"invalid workspace name {name!r}: use 1-63 lowercase letters, digits, '-' or '_'"
        )
    return name


def in_folder(path: str, folder: str) -> bool:
    """True when ``path`` is inside ``folder`` -- a segment match, so ``ws`` != ``ws-evil``."""
    return folder == "" or path == folder or path.startswith(folder + "/")


def matches_glob(path: str, pattern: str) -> bool:
    """Glob match where ``*`` stays within a segment and ``**`` crosses folders."""
    regex = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            regex += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            regex += ".*"
            i += 2
        elif pattern[i] == "*":
            regex += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            regex += "[^/]"
            i += 1
        else:
            regex += re.escape(pattern[i])
            i += 1
    return re.fullmatch(regex, path) is not None or (
        "/" not in pattern and fnmatch.fnmatchcase(path.rsplit("/", 1)[-1], pattern)
    )


def confine(root: Path, relative: str) -> Path:
    """Join ``relative`` under ``root`` and prove the real result stays inside ``root``.

    Resolves symlinks on both sides and compares whole path components, so a
    sibling such as ``/data/ws-evil`` never passes for ``/data/ws``.
    """
    base = root.resolve()
    target = (base / relative).resolve()
    if target != base and base not in target.parents:
        raise InvalidInput(f"path {relative!r} resolves outside the workspace store")
    return target
