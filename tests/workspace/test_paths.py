"""Every path-escape attempt is refused with InvalidInput, naming the problem."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from microhive.errors import InvalidInput
from microhive.workspace import Workspace
from microhive.workspace.paths import clean_path, confine, in_folder, matches_glob

from .wshelp import settings

ESCAPES = [
    ("../secret", "'..'"),
    ("a/../../etc/passwd", "'..'"),
    ("a/./b", "'.'"),
    ("//etc/passwd", "absolute"),
    ("~/x", "absolute"),
    ("a\\..\\b", "backslash"),
    ("a\x00b", "NUL"),
    ("a\nb", "control"),
    ("a\u202eb", "control"),  # right-to-left override
    ("cafe\u0301.md", "NFC"),  # decomposed e-acute
    ("C:/Windows", "drive"),
    ("a//b", "empty segment"),
    ("a/", "ends with"),
    ("", "empty"),
    ("a/ b", "whitespace"),
]


@pytest.mark.parametrize(("path", "why"), ESCAPES)
def test_bad_paths_are_refused_with_a_reason(path: str, why: str) -> None:
    with pytest.raises(InvalidInput, match=why):
        clean_path(path)


@pytest.mark.parametrize(("path", "why"), ESCAPES)
async def test_the_workspace_refuses_them_on_write_and_read(
    ws: Workspace, path: str, why: str
) -> None:
    with pytest.raises(InvalidInput, match=why):
        await ws.write(path, b"x")
    with pytest.raises(InvalidInput, match=why):
        await ws.read(path)
    assert (await ws.list()).items == []


def test_good_paths_are_canonical() -> None:
    assert clean_path("/notes/a.md") == "notes/a.md"
    assert clean_path("caf\u00e9/r\u00e9sum\u00e9.md") == "caf\u00e9/r\u00e9sum\u00e9.md"


def test_sibling_prefix_is_not_inside() -> None:
    assert in_folder("ws/a.md", "ws")
    assert not in_folder("ws-evil/a.md", "ws")
    assert in_folder("anything", "")


def test_confine_refuses_symlinks_and_siblings(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    evil = tmp_path / "ws-evil"
    root.mkdir()
    evil.mkdir()
    os.symlink(evil, root / "link")
    with pytest.raises(InvalidInput, match="outside"):
        confine(root, "link/x")
    with pytest.raises(InvalidInput, match="outside"):
        confine(root, "../ws-evil/x")
    assert confine(root, "a/b") == (root / "a" / "b").resolve()


async def test_a_symlinked_blob_folder_cannot_leak_outside(tmp_path: Path) -> None:
    store = tmp_path / "store"
    outside = tmp_path / "outside"
    outside.mkdir()
    store.mkdir()
    os.symlink(outside, store / "blobs")
    with pytest.raises(InvalidInput, match="outside"):
        Workspace(settings(store))


def test_globs() -> None:
    assert matches_glob("a.md", "*.md")
    assert matches_glob("x/y/a.md", "*.md")  # a bare pattern matches the file name
    assert matches_glob("x/y/a.md", "x/**/*.md")
    assert not matches_glob("x/y/a.md", "x/*.md")
    assert matches_glob("x/a.md", "x/*.md")
