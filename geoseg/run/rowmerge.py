"""The row merge behind the model: a raster's staged rows of tiles are merged,
vectorised and written in a background thread as soon as they are complete."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np
import shapely

from geoseg.core import heap, merge, vectorize
from geoseg.core.staging import TileStore
from geoseg.core.tiling import TilePlan
from geoseg.errors import GeosegError, RunError, option
from geoseg.io import export
from geoseg.io.sources import is_mosaic
from geoseg.run import workers
from geoseg.run.inspection import RasterInfo
from geoseg.run.profile import Profile
from geoseg.run.settings import Settings

log = logging.getLogger("geoseg")


class FileMerge:
    """Merges a raster's staged rows of tiles in a background thread as they
    complete (behind the model), vectorising each batch of finished objects
    into `target`. Rows are fed with `feed(n)`: rows 0..n-1 are staged.

    A failure stops the run at once: the next `feed` (called as each batch of
    tiles is staged) raises it, naming the row of tiles.
    """

    def __init__(self, store_path: Path, info: RasterInfo, settings: Settings, target: Path,
                 pool: workers.Pool | None = None, profile: Profile | None = None) -> None:
        self.store_path, self.info, self.settings, self.target = store_path, info, settings, target
        self.pool = pool or workers.Pool(0)  #: vectorises rows of objects (with 0 workers, in this thread)
        self.profile = profile or Profile()
        self.started = time.perf_counter()
        self.rows: queue.Queue[int | None] = queue.Queue()
        self.next = 0
        self.objects, self.area_m2, self.cut = 0, 0.0, 0  #: written so far
        self.merged = 0  #: objects merged so far (written a little later, by the CPU workers)
        self.open = 0  #: candidates still open: seen in rows of tiles, joinable by rows to come
        self.all_nodata = False  #: set by the caller once every tile is staged
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="geoseg-merge", daemon=True)
        self.thread.start()

    def feed(self, complete: int) -> None:
        if self.error is not None:
            raise self.error
        while self.next < complete:
            self.rows.put(self.next)
            self.next += 1

    def abort(self) -> None:
        """Stop after the row being merged, and wait: the work folder's store is closed when this returns
        (its SQLite files were still open, and vanishing, after a failed run had returned)."""
        self.rows.put(None)
        self.thread.join()

    def join(self) -> None:
        self.thread.join()
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        info, settings = self.info, self.settings
        plan: TilePlan = info.plan
        if info.zone is not None:
            shapely.prepare(info.zone)
        job = workers.VectorJob(info.transform, info.crs, info.name, settings.simplify, settings.dst_crs,
                                settings.min_area, info.utm, info.zone, info.window, info.grid,
                                info.path if is_mosaic(info.path) else None)
        merger = merge.RowMerger(plan, iou=settings.match_iou, trace=vectorize.trace,  # regions as outlines
                                  region=merge.REGION, split=merge.SPLIT, centres=info.zone is not None)
        # objects vectorised in the pool, written in order; a few chunks ahead keep the workers busy
        pending: deque[tuple[int, Future[tuple[Any, int, float]], merge.Instance | None]] = deque()
        strips = _RegionStrips(settings.min_area)
        depth = 2 * self.pool.workers
        row = 0  # the row of tiles a failure is reported in
        try:
            with TileStore(self.store_path) as store, \
                    export.Writer(self.target, layer="objects", overwrite=True, multi=False) as w:
                for fed in iter(self.rows.get, None):
                    row = fed
                    with self.profile.time("merge"):
                        instances = merger.add(fed, store.pieces_in_row(fed))
                    self.open = len(merger.groups)
                    step = workers.CHUNK if self.pool.workers else 1 << 62  # with no worker, in one call
                    for chunk in _chunks(instances, step):  # a region's strips made one at a time, as sent
                        self.merged += sum(inst.part == 0 for inst in chunk)
                        strip = chunk[0] if chunk[0].parts > 1 else None
                        pending.append((fed, self.pool.submit(workers.vectorise, chunk, job), strip))
                        while len(pending) > depth:  # all workers busy, memory bounded
                            row, done, strip = pending.popleft()
                            self._write(w, done, strip, strips)
                    heap.trim()  # what composing a region freed: else the run's until its end
                    last = fed == plan.shape[0] - 1
                    while pending and last:
                        row, done, strip = pending.popleft()
                        self._write(w, done, strip, strips)
                    if last:
                        self._commit(w)
                        return
        except BaseException as e:  # handed to the caller by feed() or join()
            for _, fut, _ in pending:
                fut.cancel()
            self.error = e
            if isinstance(e, BrokenProcessPool):
                self.error = RunError(f"{info.name}: a CPU worker process died while vectorising row {row} of "
                                      f"tiles (out of memory?): rerun to resume, with fewer "
                                      f"{option('cpu_workers')} or {option('cpu_workers', 0)}")
                self.error.__cause__ = e
            elif isinstance(e, Exception) and not isinstance(e, GeosegError):
                self.error = RunError(f"{info.name}: merging row {row} of tiles failed: {type(e).__name__}: {e}")
                self.error.__cause__ = e

    def _write(self, w: export.Writer, done: Future[tuple[Any, int, float]], strip: merge.Instance | None,
               strips: _RegionStrips) -> None:
        gdf, cut, seconds = done.result()
        t = time.perf_counter()
        frames, cut = ([gdf], cut) if strip is None else strips.add(gdf, cut, strip)
        self.cut += cut
        for gdf in frames:
            if gdf is not None:
                w.write(gdf)
                self.objects += int((gdf["part"] == 0).sum())  # a region's strips are one object
                self.area_m2 += float(np.nansum(gdf["area_m2"]))
        self.profile.add("write", seconds + time.perf_counter() - t)

    def _commit(self, w: export.Writer) -> None:
        info, settings = self.info, self.settings
        if self.cut:
            log.warning("%s: %d objects kept reach the edge of the window read (%s px around the area) "
                        "and may be cut there: raise %s to read them whole", info.name, self.cut,
                        option("overlap", settings.overlap), option("overlap"))
        empty = vectorize.to_frame([], info.transform, info.crs, source=info.name)
        w.commit(vectorize.finish(empty, info.transform, settings.dst_crs))


def _chunks(instances: Iterable[merge.Instance], size: int) -> Iterator[list[merge.Instance]]:
    """`instances` in runs of about `size`; each strip of a region past `merge.SPLIT` vertices
    in a run of its own (a worker holds one strip at a time, never the whole region)."""
    chunk: list[merge.Instance] = []
    for inst in instances:
        if chunk and (len(chunk) >= size or inst.parts > 1 or chunk[-1].parts > 1):
            yield chunk
            chunk = []
        chunk.append(inst)
    if chunk:
        yield chunk


class _RegionStrips:
    """The strips of the region being written, vectorised one per task (see `_chunks`); the area
    decided whether they are kept already (each strip carries its whole object's centre).
    `--min-area` is for the whole object: strips are held until their summed area reaches it
    (written at once without it), and dropped if the whole object stays under it."""

    def __init__(self, min_area: float | None) -> None:
        self.min_area = min_area or 0.0
        self.held: list[Any] = []
        self.area, self.cut = 0.0, 0

    def add(self, gdf: Any, cut: int, strip: merge.Instance) -> tuple[list[Any], int]:
        """A strip's frame (None where the area dropped it) and whether it reaches the edge of the
        window read: the frames to write now, and after the last strip, 1 if the object was written
        and reaches that edge."""
        if gdf is not None:
            self.held.append(gdf)
            self.area += float(np.nansum(gdf["area_m2"]))
        self.cut = max(self.cut, cut)
        out: list[Any] = []
        if self.area >= self.min_area:
            out, self.held = self.held, []
        if strip.part < strip.parts - 1:
            return out, 0
        cut = self.cut if self.area >= self.min_area else 0  # under --min-area: dropped, held frames and all
        self.held, self.area, self.cut = [], 0.0, 0
        return out, cut


class Rows:
    """Which rows of tiles are completely staged (tiles arrive in any order)."""

    def __init__(self, plan: TilePlan, done: set[int]) -> None:
        self.cols = plan.shape[1]
        self.left = [self.cols] * plan.shape[0]
        self.complete = 0
        self.add(done)

    def add(self, tiles: Iterable[int]) -> int:
        """Count `tiles` as staged; the number of leading rows complete."""
        for k in tiles:
            self.left[k // self.cols] -= 1
        while self.complete < len(self.left) and self.left[self.complete] == 0:
            self.complete += 1
        return self.complete
