"""Linking a user's files into the raw-data folder: their copies stay where they are."""
from __future__ import annotations

import os
from pathlib import Path

from dreamdiffusion.core.fileio import DataError


def link_file(source: Path, dest: Path) -> None:
    """Symlink `dest` -> absolute `source` (the user's copy stays where it is)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(source.resolve(), dest)


def link_tree(source: Path, dest: Path, pattern: str) -> int:
    """Link every file matching `pattern` under `source` into the same place under `dest`."""
    files = sorted(p for p in source.rglob(pattern) if p.is_file())
    for path in files:
        link_file(path, dest / path.relative_to(source))
    return len(files)


def existing(path_text: str, key: str, base: Path) -> Path:
    """A user-supplied path (relative to `base`) that must exist."""
    path = Path(path_text) if Path(path_text).is_absolute() else base / path_text
    if not path.exists():
        raise DataError(f"download.{key}: {path} does not exist")
    return path
