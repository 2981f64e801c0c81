"""Writing files so that a reader never sees half of one: write beside the target, then rename.

Every file adatsq writes (artifacts, policies, reports, figures, weights) goes through these: the
content is written to a hidden temporary path in the target's folder and renamed onto the target
only when complete (``os.replace`` is atomic on one file system); on any error the temporary path
is removed and the target is left as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(target: str | Path, suffix: str = "") -> Iterator[Path]:
    """A temporary file path beside ``target``, renamed onto it when the block completes.

    Args:
        target: the file to write (its folder is created).
        suffix: ending of the temporary name (``".png"`` where a writer infers the format).

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> with atomic_path(folder / "a.txt") as tmp:
        ...     _ = tmp.write_text("done")
        >>> (folder / "a.txt").read_text(), sorted(p.name for p in folder.iterdir())
        ('done', ['a.txt'])
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{suffix}",
                                dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextmanager
def atomic_dir(target: str | Path, replace: bool = False) -> Iterator[Path]:
    """A temporary folder beside ``target``, renamed onto it when the block completes.

    Folders are never merged: an existing ``target`` is removed just before the rename when
    ``replace`` is set (else the rename fails)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        if replace and target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_text(text: str, path: str | Path) -> Path:
    """Writes ``text`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(data: Any, path: str | Path, indent: int | None = 1) -> Path:
    """Writes ``data`` as JSON to ``path`` atomically; returns the path."""
    return write_text(json.dumps(data, indent=indent) + "\n", path)
