"""Small file mechanisms every module shares: atomic writes."""
from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, Callable


def write_atomic(path: str | os.PathLike, data: bytes | Callable[[BinaryIO], object],
                 previous: str | os.PathLike | None = None) -> Path:
    """Write `data` (bytes, or a function that writes to a binary file) so that a reader or a crash
    sees the old file or the new one, never a part: a temp file beside it, flushed to disk, renamed
    over it. With `previous`, the old file is first renamed there instead of being replaced."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        if callable(data):
            data(f)
        else:
            f.write(data)
        f.flush()
        os.fsync(f.fileno())
    if previous is not None and path.exists():
        os.replace(path, previous)
    os.replace(tmp, path)
    return path
