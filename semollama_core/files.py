"""Writing files so that a reader never sees half of one: the one atomic-write helper."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any], *, mode: int | None = 0o644) -> Path:
    """Call write(tmp) on a fresh temporary path beside `path` (same suffix, so writers that
    pick a format from it work), then rename it over `path`; on any error the temporary file
    goes and `path` is untouched. `mode` (default 0o644: shipped files are shared; mkstemp
    alone makes 0600) is applied before the rename; None keeps mkstemp's."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix or ".tmp")
    os.close(handle)
    tmp = Path(name)
    try:
        write(tmp)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str, *, mode: int | None = 0o644) -> Path:
    """atomic_write of UTF-8 text (newlines written as given), flushed to disk before the rename."""
    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    return atomic_write(path, write, mode=mode)
