"""Files moved into place durably: after a power cut a reader finds the old
file or the new one, never a renamed but empty one."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

if os.name == "nt":
    import msvcrt
else:
    import fcntl


def replace(tmp: str | os.PathLike[str], path: str | os.PathLike[str]) -> None:
    """Rename the finished file (or folder) `tmp` to `path`, as os.replace does,
    with its data on disk before the rename and the rename on disk after it."""
    if not os.path.isdir(tmp):  # a folder's files are its writer's to flush
        sync(tmp)
    os.replace(tmp, path)
    _sync(Path(path).parent, os.O_RDONLY, folder=True)


def sync(path: str | os.PathLike[str]) -> None:
    """Flush the file `path` to disk (Windows flushes only a writable handle)."""
    _sync(path, os.O_RDWR if os.name == "nt" else os.O_RDONLY)


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


HOST = socket.gethostname()
HOST_TAG = hashlib.sha1(HOST.encode()).hexdigest()[:6]  # this host, in temporary files' names


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs on this host (on Windows, where os.kill would end it: always taken as alive)."""
    if os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # someone else's process: alive
        return True
    return True


class Lock:
    """An exclusive lock on the file `path`, held from `acquire` to `release`: the
    operating system drops it when the process dies, so a killed run never holds
    it. The file records who holds it (pid, host, start time), for messages; a
    record found when taking the lock is a dead holder's (`release` clears it)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.stale: dict[str, Any] = {}  #: the record of a holder that died holding it
        self._file: Any = None

    def acquire(self) -> dict[str, Any] | None:
        """Take the lock: None once taken, or the live holder's record."""
        f = open(self.path, "a+")  # noqa: SIM115  (kept open: closing it releases the lock)
        f.seek(0)  # Windows locks from the position on
        try:
            _try_lock(f)
        except OSError:
            holder = _read_record(f)
            f.close()
            return holder
        self.stale = _read_record(f)
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "host": HOST, "started": time.strftime("%Y-%m-%d %H:%M:%S")}))
        f.flush()
        self._file = f
        return None

    @property
    def held(self) -> bool:
        return self._file is not None

    def release(self) -> None:
        if self._file is not None:
            self._file.truncate(0)
            self._file.close()
            self._file = None


def holder(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The record of the live holder of the lock file `path`; None if nobody holds it."""
    try:
        f = open(path)  # noqa: SIM115
    except FileNotFoundError:
        return None
    with f:
        try:
            _try_lock(f)
        except OSError:
            return _read_record(f)
        return None  # closing the file unlocks it


def _read_record(f: Any) -> dict[str, Any]:
    """The record in the open lock file `f`; {} where there is none (or Windows keeps a locked file from being read)."""
    try:
        f.seek(0)
        value = json.loads(f.read())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _try_lock(f: Any) -> None:
    """Lock the open file `f` without waiting; OSError when another holds it."""
    if os.name == "nt":
        msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
    else:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


def holder_text(holder: dict[str, Any]) -> str:
    """`pid 123 on HOST, started 2026-12-04 00:10:02` (what is known of it)."""
    parts = [f"pid {holder['pid']}" if "pid" in holder else "", f"on {holder['host']}" if "host" in holder else ""]
    text = " ".join(p for p in parts if p)
    return text + (f", started {holder['started']}" if "started" in holder else "")
