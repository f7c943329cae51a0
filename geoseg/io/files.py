"""Files moved into place durably: after a power cut a reader finds the old
file or the new one, never a renamed but empty one."""

from __future__ import annotations

import errno
import os
from pathlib import Path


def replace(tmp: str | os.PathLike[str], path: str | os.PathLike[str]) -> None:
    """Rename the finished file (or folder) `tmp` to `path`, as os.replace does,
    with its data on disk before the rename and the rename on disk after it."""
    if not os.path.isdir(tmp):  # a folder's files are its writer's to flush
        _sync(tmp, os.O_RDWR if os.name == "nt" else os.O_RDONLY)  # Windows flushes only a writable handle
    os.replace(tmp, path)
    _sync(Path(path).parent, os.O_RDONLY, folder=True)


def _sync(path: str | os.PathLike[str], flags: int, *, folder: bool = False) -> None:
    try:
        fd = os.open(path, flags)
    except OSError:
        if folder:  # Windows cannot open a folder: its renames are its own to keep
            return
        raise
    try:
        os.fsync(fd)
    except OSError as e:
        if not (folder and e.errno in (errno.EINVAL, errno.ENOTSUP)):  # a file system that cannot sync a folder
            raise
    finally:
        os.close(fd)
