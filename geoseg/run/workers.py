"""Worker processes for the CPU side of a run: vectorising, areas,
reprojection and the area filter behind the merge.

Python threads share one GIL, so with a fast model the per-tile work in
Python, not the GPU, sets the pace. `Pool` hands it to `workers` processes;
with 0 workers each task runs in the calling thread, as before.

Workers are started with "forkserver" where there is one (else "spawn"),
never "fork": the run's process has threads (reads, staging, the merge) and
may hold a CUDA context, neither of which survives a fork. The fork server
is a fresh interpreter that imports this module only (no torch, no model),
and forks each worker from that clean state. Workers ignore Ctrl-C: the run's
process stops them. What crosses between processes is a chunk of a row's
objects at a time, as plain dataclasses and numpy arrays.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.spawn
import multiprocessing.util
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, TypeVar

import shapely

from geoseg.core import merge, vectorize
from geoseg.core.tiling import Window
from geoseg.errors import UsageError, option
from geoseg.io import mosaic
from geoseg.io.area import cut_by_window

T = TypeVar("T")

CHUNK = 1000  #: objects vectorised per task: a few MB of masks


def default_workers() -> int:
    """One worker process per core but one (the run's own process uses that one)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(cores - 1, 0)


def check_workers(n: int | None) -> int:
    """`cpu_workers` as given, or the default for None; a UsageError when negative."""
    if n is None:
        return default_workers()
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise UsageError(f"{option('cpu_workers', n)}: give a number of worker processes, 0 or more "
                         f"(0: all CPU work in the run's own process)")
    return n


_NAME = "geoseg-cpu"
_prepare = multiprocessing.spawn.get_preparation_data


def _preparation_data(name: str) -> dict[str, Any]:
    """What a new process imports first, less the caller's __main__ for ours: the
    tasks are geoseg functions, and a script without a main guard (or one that
    loads a model at the top) must not run again in every worker."""
    data = _prepare(name)
    if name.startswith(_NAME):
        data.pop("init_main_from_path", None)
        data.pop("init_main_from_name", None)
    return data


# the fork server listens on a UNIX socket in multiprocessing's temporary folder, whose path
# must fit in 107 bytes: "pymp-XXXXXXXX/listener-XXXXXXXX" leaves about 70 for the folder above it
_LONGEST_TEMP = 64


def _short_temp_dir() -> None:
    """Make multiprocessing's temporary folder in a short place when $TMPDIR is deep (Python
    before 3.13 fails with 'AF_UNIX path too long' there): /tmp, /dev/shm or /var/tmp, the
    first writable. It is private to this process and removed at its exit, as always."""
    if len(tempfile.gettempdir()) <= _LONGEST_TEMP:
        return
    saved = tempfile.tempdir
    try:
        for folder in ("/tmp", "/dev/shm", "/var/tmp"):
            if os.path.isdir(folder) and os.access(folder, os.W_OK | os.X_OK):
                tempfile.tempdir = folder  # the documented way to set where mkdtemp makes folders
                multiprocessing.util.get_temp_dir()  # made now, kept for the process's life
                return
    finally:
        tempfile.tempdir = saved
    raise UsageError(f"the temporary folder {tempfile.gettempdir()} is too deep for the CPU workers' socket and "
                     f"no short one is writable: set TMPDIR to a shorter folder, or pass {option('cpu_workers', 0)}")


class _Context:
    """A forkserver (or spawn) context whose processes are named as ours."""

    def __init__(self) -> None:
        if "forkserver" in multiprocessing.get_all_start_methods():
            _short_temp_dir()
            self._ctx: Any = multiprocessing.get_context("forkserver")
            self._ctx.set_forkserver_preload(["geoseg.run.workers"])  # imported once, in the server
        else:
            self._ctx = multiprocessing.get_context("spawn")
        multiprocessing.spawn.get_preparation_data = _preparation_data  # type: ignore[assignment]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)

    def Process(self, *args: Any, **kwargs: Any) -> Any:  # noqa: N802 (multiprocessing's name)
        proc = self._ctx.Process(*args, **kwargs)
        proc.name = f"{_NAME}-{proc.name}"
        return proc


def _init(alive: Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the run's process, which stops the pool
    threading.Thread(target=_watch, args=(alive,), name="geoseg-cpu-watch", daemon=True).start()


def _watch(alive: Connection) -> None:
    """Exit once the run's process is gone. Killed with SIGKILL, it cannot stop
    its workers; then its end of `alive` closes (the only writer), and this
    read ends."""
    try:
        alive.recv_bytes()
    except (EOFError, OSError):
        pass
    os._exit(1)


class Pool:
    """`workers` processes for CPU work, started on first use and shared by
    the files of a run; with 0, tasks run in the calling thread. Use as a
    context manager: leaving it stops the workers, also on errors and Ctrl-C."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._executor: ProcessPoolExecutor | None = None
        self._closed = False
        self._lock = threading.Lock()
        self._alive: tuple[Connection, ...] = ()

    def start(self) -> None:
        """Start the workers in the background now, so that the first task does
        not wait for them (the first pool of a process starts the fork server:
        a second or so)."""
        if self.workers and self._executor is None and not self._closed:
            threading.Thread(target=self._warm, name="geoseg-cpu-start", daemon=True).start()

    def _warm(self) -> None:
        try:
            self._start()
        except Exception:  # closed meanwhile, or the workers cannot start: the first task says why
            pass

    def _start(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._executor is None:
                if self._closed:
                    raise RuntimeError("the CPU worker pool is closed")
                for end in self._alive:  # a broken pool's: what is left of it exits
                    end.close()
                # the workers hold the read end of a pipe whose one writer is this process
                self._alive = multiprocessing.Pipe(duplex=False)
                self._executor = ProcessPoolExecutor(self.workers, mp_context=_Context(),  # type: ignore[arg-type]
                                                     initializer=_init, initargs=(self._alive[0],))
                self._executor.submit(int)  # starts a worker
            return self._executor

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """`fn(*args)` in a worker; with no workers, run now, its result or error in the future."""
        if self.workers == 0:
            fut: Future[T] = Future()
            try:
                fut.set_result(fn(*args))
            except BaseException as e:
                if not isinstance(e, Exception):
                    raise
                fut.set_exception(e)
            return fut
        ex = self._executor or self._start()
        try:
            return ex.submit(fn, *args)
        except BrokenProcessPool:  # a worker died (and failed its file): a new pool for the next
            with self._lock:
                if self._executor is ex:
                    self._executor = None
            ex.shutdown(wait=False, cancel_futures=True)
            return self._start().submit(fn, *args)

    def close(self) -> None:
        """Stop the workers: tasks not started are dropped, running ones finish (each is one batch)."""
        with self._lock:
            self._closed = True
            ex, self._executor = self._executor, None
        if ex is not None:
            ex.shutdown(wait=True, cancel_futures=True)
        for end in self._alive:  # after the workers have exited: closing the writer ends them
            end.close()
        self._alive = ()

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- tasks: plain functions of plain values, run in a worker or in the calling thread


def loaded(modules: Sequence[str]) -> list[str]:
    """Those of `modules` imported in this process (to check what a worker holds)."""
    return [m for m in modules if m in sys.modules]


@dataclass
class VectorJob:
    """What vectorising a raster's objects needs besides the objects."""

    transform: Any
    crs: Any
    source: str
    simplify: float | None = None
    dst_crs: Any = None
    min_area: float | None = None
    utm: Any = None
    zone: Any = None  #: keep objects whose centroid is in this area (the raster's CRS)
    window: Window | None = None  #: the area's window in the grid read
    grid: tuple[int, int] = (0, 0)
    mosaic: str | None = None  #: a mosaic's VRT: each object's `source` is the files it was read from


def vectorise(instances: list[merge.Instance], job: VectorJob) -> tuple[Any, int, float]:
    """Objects -> a finished GeoDataFrame (areas, `min_area`, `dst_crs`), or
    None when none is kept; the number kept that reach the edge of the area's
    window; the seconds taken. The strip of a region (`Instance.parts` > 1) comes
    alone and is not held to `min_area`: its whole object is, by the caller."""
    t = time.perf_counter()
    gdf = vectorize.to_frame(instances, job.transform, job.crs, source=job.source, simplify=job.simplify)
    if job.mosaic is not None:
        gdf["source"] = mosaic.sources(job.mosaic, gdf.geometry.values)
    cut = 0
    if job.zone is not None:  # kept whole when the centroid (of its pixels) is in the area, else dropped
        keep = shapely.contains(job.zone, vectorize.centroids(instances, job.transform))
        cut = int((keep & cut_by_window(instances, job.window, job.grid)).sum())
        gdf = gdf[keep]
    min_area = None if instances[0].parts > 1 else job.min_area
    out = vectorize.finish(gdf, job.transform, job.dst_crs, min_area, utm=job.utm) if len(gdf) else None
    return out, cut, time.perf_counter() - t
