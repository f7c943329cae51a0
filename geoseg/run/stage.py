"""Staging one raster: its tiles segmented into the work folder's store, rows merged behind the model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from geoseg.core.staging import TileStore
from geoseg.io.raster import RasterSource
from geoseg.run import workers
from geoseg.run.engine import Engine
from geoseg.run.inspection import RasterInfo
from geoseg.run.profile import Profile
from geoseg.run.progress import Progress
from geoseg.run.rowmerge import FileMerge, Rows
from geoseg.run.settings import Settings
from geoseg.run.summary import FileResult
from geoseg.run.workdir import WorkDir


def stage_one(path: Any, settings: Settings, engine: Engine, work: WorkDir, info: RasterInfo,
              progress: Progress, pool: workers.Pool | None = None, *,
              result: FileResult | None = None) -> FileMerge | None:
    """Stage the detections of one raster's tiles not yet staged, merging the
    rows of tiles behind the model as they complete (`stage_rows`); the running
    merge (None when an earlier run merged this raster). `result.refined` is set."""
    plan = info.plan
    store = work.store(path, len(plan), plan.shape)  # refuses an input changed since an earlier run
    if work.result_path(path).exists():
        if result is not None:
            result.refined, result.cost = store.refinement(), store.cost()
        store.close()
        return None
    work.fail(path, None)
    profile = Profile(workers=pool.workers if pool is not None else 0)
    merging = FileMerge(store.path, info, settings, work.result_path(path), pool, profile)
    try:
        if pool is not None:
            pool.start()  # while the first tiles are read and segmented
        stage_rows(path, settings, engine, info, store, progress, profile=profile, complete=merging.feed,
                   objects=lambda: (merging.merged, merging.open))
        merging.all_nodata = store.nodata() == len(plan)
        if result is not None:
            result.refined, result.cost = store.refinement(), store.cost()
    except BaseException:
        merging.abort()
        raise
    finally:
        store.close()
    return merging


def stage_rows(path: Any, settings: Settings, engine: Engine, info: RasterInfo, store: TileStore,
               progress: Progress, *, profile: Profile | None = None,
               complete: Callable[[int], None] = lambda rows: None,
               objects: Callable[[], int | tuple[int, int]] = lambda: 0) -> None:
    """Stage the tiles of `info.plan` not yet in `store` (those in `info.skip`
    staged empty, never read); `complete(n)` whenever rows 0..n-1 of tiles
    are all staged; `objects()` counts the objects merged so far, for progress."""
    plan = info.plan
    done = store.done()
    away = list(info.skip)
    if set(away) - done:  # tiles away from the area: staged empty, never read, so their rows complete
        store.put(away, [], plan.shape[1], nodata=away)
        done |= set(away)
    rows = Rows(plan, done)
    complete(rows.complete)
    todo = [k for k in range(len(plan)) if k not in done]
    if profile is not None:
        profile.tiles = len(todo)
    progress.start(info.name, info.tiles, len(done) - len(away), info.km2_per_tile, objects)
    if todo:
        with RasterSource(path, settings.read) as src:
            engine.stage(src, plan, todo, settings.prompts, store, progress,
                         staged=lambda tiles: complete(rows.add(tiles)), refine=settings.refine, profile=profile)
    progress.finish()
