"""Output folders of datasets, models and distillations: what geoseg wrote, and replacing it safely.

A folder is built as a hidden sibling (`.NAME.PID.tmp`) and renamed into
place only once it is complete; with `--overwrite` the old folder stays until
then. Every finished folder holds `.geoseg-written.json`: each folder and file
geoseg wrote there, with its size and time. `--overwrite` replaces a folder
only when it holds nothing else, and nothing changed since: a file the user
put in (or edited) is never deleted; the run is refused in one line instead.

A build killed before it finished (kill -9, a power cut) leaves its hidden
sibling; the next build of the same folder on this host removes it once its
process is gone.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from geoseg.errors import OutputError, option
from geoseg.io import files

WRITTEN = ".geoseg-written.json"
BUILDING = ".geoseg-building.json"  # in a hidden sibling while it is built: whose it is


def check_out_dir(out_dir: str | os.PathLike[str], overwrite: bool, *, what: str) -> Path:
    """The output folder (absolute) of a `what` ("dataset", "model", "distillation"): new, empty, or
    one geoseg wrote for a `what` and nothing else, replaced only with `overwrite`. OutputError otherwise."""
    out = Path(out_dir).absolute()
    shown = option("out_dir", str(out_dir), flag="-o")
    if not out.parent.is_dir():
        raise OutputError(f"{shown}: folder {str(out.parent)!r} does not exist: create it first")
    if out.exists() and not out.is_dir():
        raise OutputError(f"{shown} is a file: give a folder for the {what}")
    if out.is_dir() and any(out.iterdir()):
        _check_owned(out, shown, what)
        if not overwrite:
            raise OutputError(f"{shown} holds a {what}: pass {option('overwrite', True)} to replace it, "
                              "or choose another folder")
    if not os.access(out.parent, os.W_OK):
        raise OutputError(f"{shown}: folder {str(out.parent)!r} is not writable: choose another output")
    return out


def _check_owned(out: Path, shown: str, what: str) -> None:
    """Refuse a folder holding anything geoseg did not write for a `what` (or changed since)."""
    try:
        record = json.loads((out / WRITTEN).read_text())
        kind, listed = record["what"], record["entries"]
    except (OSError, ValueError, KeyError, TypeError):
        raise OutputError(f"{shown} is not empty and holds no {WRITTEN} (geoseg's list of what it wrote there), "
                          f"so geoseg cannot tell its files from yours: choose a new or empty folder") from None
    if kind != what:
        raise OutputError(f"{shown} holds a {kind} written by geoseg, not a {what}: choose another folder")
    for rel, seen in _entries(out).items():
        if listed.get(rel) != seen:
            change = "geoseg did not write" if rel not in listed else "changed since geoseg wrote it"
            raise OutputError(f"{shown} holds {str(out / rel)!r}, which {change}: move it out of the folder "
                              f"(nothing was deleted), or choose another folder")


def _entries(folder: Path) -> dict[str, Any]:
    """Every folder and file under `folder` (relative POSIX path -> "dir", or [size, mtime_ns]),
    the list itself left out; a link (or anything else) as "other"."""
    out: dict[str, Any] = {}
    for root, dirs, names in os.walk(folder):
        for name in dirs + names:
            path = Path(root) / name
            rel = path.relative_to(folder).as_posix()
            if rel == WRITTEN:
                continue
            if path.is_symlink():
                out[rel] = "other"
            elif path.is_dir():
                out[rel] = "dir"
            elif path.is_file():
                st = path.stat()
                out[rel] = [st.st_size, st.st_mtime_ns]
            else:
                out[rel] = "other"
    return out


def seal(folder: Path, what: str) -> None:
    """Write `folder`'s list of what geoseg wrote there (again, after a change)."""
    text = json.dumps({"geoseg": "written", "what": what, "entries": _entries(folder)}, indent=0)
    (folder / WRITTEN).write_text(text + "\n")


@contextmanager
def building(out: Path, what: str) -> Iterator[Path]:
    """A hidden sibling of `out` to build the `what` in; sealed and renamed to `out` (replacing the
    old folder, checked by `check_out_dir`) when the block ends, removed if it raises."""
    _remove_stale(out)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    (tmp / BUILDING).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    try:
        yield tmp
        (tmp / BUILDING).unlink()
        seal(tmp, what)
        _swap(tmp, out, what)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap(tmp: Path, out: Path, what: str) -> None:
    """Rename the finished `tmp` to `out`; an old `out` goes only now, if it still holds only geoseg's files."""
    if out.is_dir() and any(out.iterdir()):
        try:
            _check_owned(out, option("out_dir", str(out), flag="-o"), what)
        except OutputError as e:  # something appeared there while this ran: keep both
            kept = out.with_name(f"{out.name}.new-{os.getpid()}")
            os.replace(tmp, kept)
            raise OutputError(f"{e} (it appeared while this ran: the new {what} is kept in {str(kept)!r})") from None
    if out.exists():
        old = out.with_name(f".{out.name}.{os.getpid()}.old")
        files.replace(out, old)
        files.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        files.replace(tmp, out)


def _remove_stale(out: Path) -> None:
    """Remove the hidden siblings `.NAME.PID.tmp` that builds of `out` killed on this host left."""
    host = socket.gethostname()
    for sibling in out.parent.glob(f".{glob.escape(out.name)}.*.tmp"):
        pid = sibling.name[len(out.name) + 2:-len(".tmp")]
        try:
            record = json.loads((sibling / BUILDING).read_text())
        except (OSError, ValueError):
            continue  # not a build of geoseg's (or one sealed and being renamed): not ours to remove
        if record.get("host") == host and str(record.get("pid")) == pid and not files.pid_alive(int(pid)):
            shutil.rmtree(sibling, ignore_errors=True)
