"""The row merge behind the model: a raster's staged rows of tiles are merged,
vectorised and written in a background thread as soon as they are complete."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import shapely

from geoseg import export, merge, vectorize
from geoseg.area import cut_by_window
from geoseg.errors import GeosegError, RunError, option
from geoseg.inspection import RasterInfo
from geoseg.settings import Settings
from geoseg.staging import TileStore
from geoseg.tiling import TilePlan

log = logging.getLogger("geoseg")


class FileMerge:
    """Merges a raster's staged rows of tiles in a background thread as they
    complete (behind the model), vectorising each batch of finished objects
    into `target`. Rows are fed with `feed(n)`: rows 0..n-1 are staged.

    A failure stops the run at once: the next `feed` (called as each batch of
    tiles is staged) raises it, naming the row of tiles.
    """

    def __init__(self, store_path: Path, info: RasterInfo, settings: Settings, target: Path) -> None:
        self.store_path, self.info, self.settings, self.target = store_path, info, settings, target
        self.rows: queue.Queue[int | None] = queue.Queue()
        self.next = 0
        self.objects, self.area_m2, self.cut = 0, 0.0, 0
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
        self.rows.put(None)

    def join(self) -> None:
        self.thread.join()
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        info, settings = self.info, self.settings
        plan: TilePlan = info.plan
        if info.zone is not None:
            shapely.prepare(info.zone)
        merger = merge.RowMerger(plan, iou=settings.match_iou)
        row = 0
        try:
            with TileStore(self.store_path) as store, \
                    export.Writer(self.target, layer="objects", overwrite=True, multi=False) as w:
                for row in iter(self.rows.get, None):
                    self._write(w, merger.add(row, store.pieces_in_row(row)))
                    if row == plan.shape[0] - 1:
                        self._commit(w)
                        return
        except BaseException as e:  # handed to the caller by feed() or join()
            self.error = e
            if isinstance(e, Exception) and not isinstance(e, GeosegError):
                self.error = RunError(f"{info.name}: merging row {row} of tiles failed: {type(e).__name__}: {e}")
                self.error.__cause__ = e

    def _write(self, w: export.Writer, instances: list[merge.Instance]) -> None:
        if not instances:
            return
        info, settings = self.info, self.settings
        gdf = vectorize.to_frame(instances, info.transform, info.crs, source=info.name, simplify=settings.simplify)
        if info.zone is not None:  # kept whole when the centroid is in the area, else dropped
            keep = shapely.contains(info.zone, shapely.centroid(gdf.geometry.values))
            self.cut += int((keep & cut_by_window(instances, info.window, info.grid)).sum())
            gdf = gdf[keep]
        if len(gdf):
            gdf = vectorize.finish(gdf, info.transform, settings.dst_crs, settings.min_area, utm=info.utm)
            w.write(gdf)
            self.objects += len(gdf)
            self.area_m2 += float(np.nansum(gdf["area_m2"]))

    def _commit(self, w: export.Writer) -> None:
        info, settings = self.info, self.settings
        if self.cut:
            log.warning("%s: %d objects kept reach the edge of the window read (%s px around the area) "
                        "and may be cut there: raise %s to read them whole", info.name, self.cut,
                        option("overlap", settings.overlap), option("overlap"))
        empty = vectorize.to_frame([], info.transform, info.crs, source=info.name)
        w.commit(vectorize.finish(empty, info.transform, settings.dst_crs))


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
