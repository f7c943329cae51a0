"""Running a segmenter over tiles in this process: read ahead, segment in
batches (two in flight: one in the model, one in post-processing), stage
behind. `distributed` does the same on a Dask cluster."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import numpy as np

from geoseg.core import merge
from geoseg.core.exemplars import Exemplars, WithExemplars
from geoseg.core.refine import Neighbours, Refine
from geoseg.core.refine import segment as segment_refined
from geoseg.core.segmenter import Backend, Segmenter, as_backend, check_takes_exemplars
from geoseg.core.staging import TileStore
from geoseg.core.tiling import Tile, TilePlan, Window
from geoseg.errors import GeosegError, RunError, option
from geoseg.io.raster import RasterSource
from geoseg.io.sources import source_name
from geoseg.run.profile import Profile
from geoseg.run.progress import Progress

log = logging.getLogger("geoseg")


def read_ahead(src: RasterSource, tiles: list[Tile], depth: int,
               profile: Profile | None = None) -> Iterator[tuple[Tile, np.ndarray, np.ndarray]]:
    """Read tiles in a background thread, `depth` ahead of the consumer
    (the time taken counted in `profile`).

    One thread only: a GDAL dataset handle must not be read concurrently.
    """
    read = src.read if profile is None else partial(_timed_read, src, profile)
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="geoseg-read")
    try:
        queue: deque[tuple[Tile, Future[tuple[np.ndarray, np.ndarray]]]] = deque()
        it = iter(tiles)
        for tile in it:
            queue.append((tile, pool.submit(read, tile.window)))
            if len(queue) >= depth:
                break
        while queue:
            tile, fut = queue.popleft()
            nxt = next(it, None)
            if nxt is not None:
                queue.append((nxt, pool.submit(read, nxt.window)))
            rgb, valid = fut.result()
            yield tile, rgb, valid
    finally:  # a failed read or consumer: the reads queued behind it are dropped, not waited for
        pool.shutdown(wait=True, cancel_futures=True)


def _timed_read(src: RasterSource, profile: Profile, window: Window) -> tuple[np.ndarray, np.ndarray]:
    with profile.time("read"):
        return src.read(window)


class _OneAtATime:
    """A backend shared by the two batches in flight: one call of its `segment`
    at a time (the other batch meanwhile in its post-processing), each counted in
    `profile` as "model"; the calling thread's time in them, waits included, in `held`.
    Batches make their first call in the order they were submitted (`held.turn`),
    so the model sees the tiles in plan order whichever thread is first ready."""

    held = threading.local()

    def __init__(self, backend: Backend, profile: Profile | None) -> None:
        self._backend, self._profile, self._lock = backend, profile, threading.Lock()
        self._turns, self._turn = threading.Condition(), 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def pass_turn(self) -> None:
        """The calling batch's turn is over (its first call has the model, or it made none)."""
        turn, self.held.turn = getattr(self.held, "turn", None), None
        if turn is not None:
            with self._turns:
                self._turn = max(self._turn, turn + 1)
                self._turns.notify_all()

    def segment(self, tiles: np.ndarray, prompts: list[str]) -> Any:
        asked = time.perf_counter()
        turn = getattr(self.held, "turn", None)
        if turn is not None:
            with self._turns:
                self._turns.wait_for(lambda: self._turn >= turn)
        with self._lock:
            self.pass_turn()
            t = time.perf_counter()
            try:
                return self._backend.segment(tiles, prompts)
            finally:
                end = time.perf_counter()
                if self._profile is not None:
                    self._profile.add("model", end - t)
                self.held.seconds = getattr(self.held, "seconds", 0.0) + end - asked


@dataclass
class Batch:
    """What one call of the segmenter gave."""

    tiles: list[int]  #: every tile read since the batch before, in order
    nodata: list[int]  #: those of `tiles` without a valid pixel, never segmented
    pieces: list[merge.Piece]
    refined: dict[int, tuple[int, int]] = field(default_factory=dict)  #: see `refine.Outcome`
    at_limit: dict[int, set[str]] = field(default_factory=dict)  #: see `refine.Outcome`
    cost: dict[int, tuple[int, int]] = field(default_factory=dict)  #: see `refine.Outcome`
    needed: dict[int, dict[str, int]] = field(default_factory=dict)  #: see `refine.Outcome`

    @property
    def passes(self) -> int:
        """Forward passes: the images given to the model in this batch's calls."""
        return sum(n for n, _ in self.cost.values())


def segment_tiles(src: RasterSource, plan: TilePlan, todo: list[int], backend: Backend,
                  prompts: list[str], refine: Refine | None = None, profile: Profile | None = None,
                  neighbours: Neighbours | None = None) -> Iterator[Batch]:
    """The one read -> skip nodata -> batch -> segment loop (local, Dask, session):
    tiles `todo` of `src` read ahead in a thread, those with valid pixels
    segmented `backend.batch_size` at a time, saturated ones refined (`geoseg.core.refine`).

    Two batches are in flight, in two threads: while one is in the model, the
    other's masks become pieces, so a GPU does not wait for the CPU between
    calls. The model takes one call at a time; batches come out in order. With
    a `profile`, the time spent reading, in the model and in the rest of the
    segment step (masks -> pieces) is counted there. With `neighbours` (the
    levels the tiles staged before needed), each tile starts where its
    neighbours ended: a tile waits until they are done (the batches in flight
    are finished first), so its start never depends on timing."""
    size, refine = backend.batch_size, refine or Refine()
    turns = itertools.count()
    step = partial(_step, _OneAtATime(backend, profile), profile, prompts=prompts, refine=refine, plan=plan)
    done: list[int] = []
    nodata: list[int] = []
    batch: list[tuple[Tile, np.ndarray, np.ndarray]] = []
    starts: list[dict[str, int]] = []
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="geoseg-segment") as pool:

        def submit(batch: list[Any], done: list[int], nodata: list[int], starts: list[Any]) -> Future[Batch]:
            return pool.submit(step, turn=next(turns), batch=batch, done=done, nodata=nodata, start=starts)

        flying: deque[Future[Batch]] = deque()
        for tile, rgb, valid in read_ahead(src, [plan.tile(k) for k in todo], depth=2 * size, profile=profile):
            if neighbours is not None and not neighbours.ready(tile.index):
                if done:
                    flying.append(submit(batch, done, nodata, starts))
                    done, nodata, batch, starts = [], [], [], []
                while flying:
                    yield _result(flying, neighbours)
            done.append(tile.index)
            if valid.any():
                batch.append((tile, rgb, valid))
                starts.append(neighbours.start(tile.index) if neighbours is not None else {})
            else:
                nodata.append(tile.index)
                if neighbours is not None:
                    neighbours.add(tile.index, {})
            if len(batch) == size:
                flying.append(submit(batch, done, nodata, starts))
                done, nodata, batch, starts = [], [], [], []
                if len(flying) == 2:
                    yield _result(flying, neighbours)
        if done:
            flying.append(submit(batch, done, nodata, starts))
        while flying:
            yield _result(flying, neighbours)


def _result(flying: deque[Future[Batch]], neighbours: Neighbours | None = None) -> Batch:
    """The oldest batch in flight (its tiles' levels told to `neighbours`); on
    its failure, the other is cancelled unless it has begun."""
    try:
        batch = flying.popleft().result()
    except BaseException:
        for fut in flying:
            fut.cancel()
        raise
    if neighbours is not None:
        for k in batch.tiles:
            neighbours.add(k, batch.needed.get(k, {}))
    return batch


def _step(backend: _OneAtATime, profile: Profile | None, turn: int, **kwargs: Any) -> Batch:
    t = time.perf_counter()
    backend.held.seconds, backend.held.turn = 0.0, turn
    try:
        return _segment(backend, **kwargs)  # type: ignore[arg-type]
    finally:  # the segment step less the model's calls and waits: stacking tiles, masks -> pieces
        backend.pass_turn()  # a batch of nodata tiles, or a failure, never called the model
        if profile is not None:
            profile.add("post", time.perf_counter() - t - backend.held.seconds)


def _segment(backend: Backend, batch: list[tuple[Tile, np.ndarray, np.ndarray]], prompts: list[str],
             refine: Refine, plan: TilePlan, done: list[int], nodata: list[int], start: list[dict[str, int]]) -> Batch:
    if not batch:
        return Batch(done, nodata, [])
    try:
        out = segment_refined(backend, batch, prompts, refine, tile_size=plan.tile_size, overlap=plan.overlap,
                              start=start)
        return Batch(done, nodata, [p for pieces in out.pieces for p in pieces], out.refined, out.at_limit,
                     out.cost, out.needed)
    except GeosegError:
        raise
    except Exception as e:  # the backend's own failure: one geoseg error naming where it happened
        tiles = ", ".join(str(t.index) for t, _, _ in batch)
        raise RunError(f"the {backend.name} segmenter failed on tile(s) {tiles}: {type(e).__name__}: {e}") from e


class Engine(Protocol):
    """Where a run's segmenter runs: in this process (`LocalEngine`) or on a
    Dask cluster (`geoseg.run.distributed.DaskEngine`)."""

    backend: str  #: the backend's name
    options: dict[str, Any]  #: its `config()`, known once `check` has run
    max_objects: int | None  #: its capacity per tile and prompt, known once `check` has run
    neighbour_start: bool  #: whether tiles start at the level their neighbours needed (`Refine.neighbours`)

    def check(self, prompts: list[str], exemplars: Exemplars | None = None) -> None:
        """Make the segmenter ready (load the model where it runs) and check the text prompts;
        with `exemplars`, check that it takes them and keep them for every tile staged."""

    def stage(self, src: RasterSource, plan: TilePlan, todo: list[int], prompts: list[str], store: TileStore,
              progress: Progress, staged: Callable[[list[int]], None] = ..., *, refine: Refine | None = None,
              profile: Profile | None = None) -> None:
        """Segment the tiles `todo` of `src` and stage their pieces in `store`,
        refining saturated tiles as `refine` says; `staged(tiles)` once each batch is committed.
        Time spent per stage, where known, goes in `profile`."""


class LocalEngine:
    """Runs the segmenter in this process. Tiles are read and decoded in a
    background thread ahead of the model; a batch's masks become pieces while
    the next batch is in the model; pieces are packed and staged in another
    thread behind, so the model never waits on I/O.
    """

    neighbour_start = True

    def __init__(self, segmenter: Segmenter | Backend) -> None:
        self.segmenter = as_backend(segmenter)
        self.backend = self.segmenter.name
        self.options = self.segmenter.config()
        self.max_objects = self.segmenter.max_objects
        self.exemplars: WithExemplars | None = None

    def check(self, prompts: list[str], exemplars: Exemplars | None = None) -> None:
        self.segmenter.check_prompts(prompts)
        self.exemplars = None
        if exemplars is not None:
            check_takes_exemplars(self.segmenter.segmenter)
            self.exemplars = WithExemplars(self.segmenter, exemplars)

    def stage(self, src: RasterSource, plan: TilePlan, todo: list[int], prompts: list[str], store: TileStore,
              progress: Progress, staged: Callable[[list[int]], None] = lambda tiles: None, *,
              refine: Refine | None = None, profile: Profile | None = None) -> None:
        """Segment the tiles `todo` of `src` and stage their pieces in `store`,
        refining saturated tiles as `refine` says; `staged(tiles)` is called
        once each batch is committed. Time spent per stage goes in `profile`."""
        self.segmenter.begin(len(todo), prompts)
        at_limit = AtLimit(src, plan)
        refine = refine or Refine()
        neighbours = None
        if refine.neighbours and self.max_objects is not None and refine.depth > 0:
            neighbours = Neighbours(plan.shape, store.needed())
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="geoseg-stage") as writer:
            pending: Future[None] | None = None
            backend = self.segmenter if self.exemplars is None else self.exemplars
            for batch in segment_tiles(src, plan, todo, backend, prompts, refine, profile, neighbours):
                if pending is not None:
                    pending.result()
                pending = writer.submit(_put, store, batch, plan, staged, profile)
                progress.found(src.transform, src.crs, batch.pieces)
                progress.advance(len(batch.tiles), len(batch.pieces), sum(n for n, _ in batch.refined.values()),
                                 batch.passes)
                if profile is not None:
                    profile.add("passes", batch.passes)
                at_limit.add(batch.at_limit)
            if pending is not None:
                pending.result()
        at_limit.close()


def _put(store: TileStore, batch: Batch, plan: TilePlan, staged: Callable[[list[int]], None],
         profile: Profile | None = None) -> None:
    t = time.perf_counter()
    store.put(batch.tiles, batch.pieces, plan.shape[1], set(batch.nodata), batch.refined, batch.cost, batch.needed)
    if profile is not None:
        profile.add("stage", time.perf_counter() - t)
    staged(batch.tiles)


class AtLimit:
    """Warns of the tiles still saturated at the deepest level, with where they
    lie on the map: the first few one by one, then how many more."""

    SHOWN = 5

    def __init__(self, src: RasterSource, plan: TilePlan) -> None:
        self.src, self.plan, self.count = src, plan, 0

    def add(self, at_limit: dict[int, set[str]]) -> None:
        for k, prompts in sorted(at_limit.items()):
            self.count += 1
            if self.count > self.SHOWN:
                continue
            w = self.plan.tile(k).window
            x, y = self.src.transform @ (w.col + w.width / 2, w.row + w.height / 2)
            crs = f" {self.src.crs.to_string()}" if self.src.crs is not None else ""
            log.warning("%s: tile %d (centre x=%.1f, y=%.1f%s) is still saturated for %s at the deepest level: "
                        "objects may be missing there; raise %s or %s", source_name(self.src.path), k, x, y, crs,
                        ", ".join(repr(p) for p in sorted(prompts)), option("refine_depth"), option("zoom"))

    def close(self) -> None:
        if self.count > self.SHOWN:
            log.warning("%s: %d more tiles are still saturated at the deepest level", source_name(self.src.path),
                        self.count - self.SHOWN)
