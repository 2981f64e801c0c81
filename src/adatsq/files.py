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


def _umask() -> int:
    """The process's umask (read by setting it, then set back)."""
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


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
        os.chmod(tmp, 0o666 & ~_umask())  # a new file's mode, not mkstemp's owner-only one
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
        os.chmod(tmp, 0o777 & ~_umask())  # a new folder's mode, not mkdtemp's owner-only one
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


def check_output(out: str | Path, kind: str, overwrite: bool = False,
                 inputs: tuple[str | Path | None, ...] = ()) -> Path:
    """Checks an output path before any work is done; returns it resolved.

    The rules, one for the whole command line: an existing output is replaced only with
    ``overwrite``; nothing is written inside (or onto) an input being read; a file is not written
    where a folder is (and the reverse); the folder the output goes in must be a folder. Stale
    temporary files of earlier, killed writes of this output (the hidden names
    :func:`atomic_path` and :func:`atomic_dir` give them) are removed.

    Args:
        out: the output path.
        kind: ``"file"`` or ``"dir"``.
        overwrite: whether an existing output may be replaced.
        inputs: paths being read (an artifact, a model folder, a prompt file); None entries and
            hub ids (no such path) are skipped.

    Raises:
        ValueError: one line naming ``out`` and what to do.
    """
    if kind not in ("file", "dir"):
        raise ValueError(f"kind must be 'file' or 'dir', got {kind!r}")
    target = Path(out).expanduser().resolve()
    for given in inputs:
        if given is None or not Path(given).exists():
            continue
        source = Path(given).expanduser().resolve()
        if target == source or source in target.parents:
            raise ValueError(f"--out {out} would write inside {given}, which is being read; "
                             "write elsewhere")
    ancestor = target.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"--out {out}: {ancestor} is not a folder; write elsewhere")
    if target.exists():
        if kind == "file" and target.is_dir():
            raise ValueError(f"--out {out} is a folder; name a file (e.g. {out}/samples.png)")
        if kind == "dir" and not target.is_dir():
            raise ValueError(f"--out {out} is a file; name a folder")
        if not overwrite:
            raise ValueError(f"--out {out} exists; pass --overwrite to replace it")
    if target.parent.is_dir():
        for stale in target.parent.glob(f".{target.name}.*.tmp*"):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
    return target
