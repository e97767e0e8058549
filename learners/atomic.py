"""Write files so that a reader never sees half of one: write a temporary file beside the
target, flush it to disk, then rename it over the target (``os.replace`` is atomic on POSIX
and Windows). A process killed at any moment leaves either the old file or the new one, plus
at worst a stale ``*.tmp<pid>*`` file that :func:`remove_stale_temporaries` clears.

>>> from learners.atomic import atomic_write_text
>>> atomic_write_text("/tmp/example.json", "{}\\n")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Marker in the name of every temporary file written here (``<name>.tmp<pid><suffix>``).
TMP_MARK = ".tmp"


def temporary_path(path: str | os.PathLike[str]) -> Path:
    """The temporary file a write of ``path`` goes through: same folder, same suffix (some
    writers, e.g. ``zipfile`` users, look at it), the writer's pid in the name."""
    path = Path(path)
    return path.with_name(f"{path.stem}{TMP_MARK}{os.getpid()}{path.suffix}")


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], Any], *, fsync: bool = True) -> Path:
    """Call ``write(tmp)`` to write the file's content to a temporary path, then rename it to
    ``path``. The temporary file is removed if ``write`` fails. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        write(tmp)
        if fsync:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str, *, fsync: bool = True) -> Path:
    """Replace ``path`` with ``text`` (UTF-8) atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), fsync=fsync)


def atomic_torch_save(obj: Any, path: str | os.PathLike[str], *, fsync: bool = True) -> Path:
    """``torch.save(obj, path)`` atomically (load it back with ``weights_only=True``: keep
    ``obj`` to tensors, numbers, strings and containers of them)."""
    import torch

    return atomic_write(path, lambda tmp: torch.save(obj, tmp), fsync=fsync)


def remove_stale_temporaries(folder: str | os.PathLike[str], pattern: str = "*") -> list[Path]:
    """Delete temporary files left in ``folder`` by writers that were killed mid-write
    (names matching ``pattern`` and holding :data:`TMP_MARK` followed by a pid)."""
    removed = []
    for p in Path(folder).glob(pattern):
        stem = p.stem
        if TMP_MARK in stem and stem.rsplit(TMP_MARK, 1)[1].isdigit() and p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed
