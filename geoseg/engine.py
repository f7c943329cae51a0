"""Running a segmenter over tiles in this process: read ahead, segment in
batches, stage behind. `distributed` does the same on a Dask cluster."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np

from geoseg import merge
from geoseg.errors import GeosegError, RunError
from geoseg.progress import Progress
from geoseg.raster import RasterSource
from geoseg.segmenter import Backend, Segmenter, as_backend
from geoseg.staging import TileStore
from geoseg.tiling import Tile, TilePlan

T = TypeVar("T")


def read_ahead(src: RasterSource, tiles: list[Tile], depth: int) -> Iterator[tuple[Tile, np.ndarray, np.ndarray]]:
    """Read tiles in a background thread, `depth` ahead of the consumer.

    One thread only: a GDAL dataset handle must not be read concurrently.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="geoseg-read") as pool:
        queue: deque[tuple[Tile, Future[tuple[np.ndarray, np.ndarray]]]] = deque()
        it = iter(tiles)
        for tile in it:
            queue.append((tile, pool.submit(src.read, tile.window)))
            if len(queue) >= depth:
                break
        while queue:
            tile, fut = queue.popleft()
            nxt = next(it, None)
            if nxt is not None:
                queue.append((nxt, pool.submit(src.read, nxt.window)))
            rgb, valid = fut.result()
            yield tile, rgb, valid


def batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """`items` in lists of `size` (the last may be shorter)."""
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def segment_batch(segmenter: Segmenter, batch: list[tuple[Tile, np.ndarray, np.ndarray]],
                   prompts: list[str]) -> list[merge.Piece]:
    tiles = np.stack([rgb for _, rgb, _ in batch])
    results = segmenter.segment(tiles, prompts)
    if len(results) != len(batch):
        raise RunError(f"the segmenter returned {len(results)} results for {len(batch)} tiles")
    pieces = []
    for (tile, _, valid), dets in zip(batch, results):  # per tile: a list of Detection or a Detections
        pieces.extend(merge.to_pieces(dets, tile, valid))
    return pieces


@dataclass
class Batch:
    """What one call of the segmenter gave."""

    tiles: list[int]  #: every tile read since the batch before, in order
    nodata: list[int]  #: those of `tiles` without a valid pixel, never segmented
    pieces: list[merge.Piece]


def segment_tiles(src: RasterSource, plan: TilePlan, todo: list[int], backend: Backend,
                  prompts: list[str]) -> Iterator[Batch]:
    """The one read -> skip nodata -> batch -> segment loop (local, Dask, session):
    tiles `todo` of `src` read ahead in a thread, those with valid pixels
    segmented `backend.batch_size` at a time."""
    size = backend.batch_size
    done: list[int] = []
    nodata: list[int] = []
    batch: list[tuple[Tile, np.ndarray, np.ndarray]] = []
    for tile, rgb, valid in read_ahead(src, [plan.tile(k) for k in todo], depth=2 * size):
        done.append(tile.index)
        if valid.any():
            batch.append((tile, rgb, valid))
        else:
            nodata.append(tile.index)
        if len(batch) == size:
            yield Batch(done, nodata, _segment(backend, batch, prompts))
            done, nodata, batch = [], [], []
    if done:
        yield Batch(done, nodata, _segment(backend, batch, prompts) if batch else [])


def _segment(backend: Backend, batch: list[tuple[Tile, np.ndarray, np.ndarray]],
             prompts: list[str]) -> list[merge.Piece]:
    try:
        return segment_batch(backend, batch, prompts)
    except GeosegError:
        raise
    except Exception as e:  # the backend's own failure: one geoseg error naming where it happened
        tiles = ", ".join(str(t.index) for t, _, _ in batch)
        raise RunError(f"the {backend.name} segmenter failed on tile(s) {tiles}: {type(e).__name__}: {e}") from e


class Engine(Protocol):
    """Where a run's segmenter runs: in this process (`LocalEngine`) or on a
    Dask cluster (`geoseg.distributed.DaskEngine`)."""

    backend: str  #: the backend's name
    options: dict[str, Any]  #: its `config()`, known once `check` has run

    def check(self, prompts: list[str]) -> None:
        """Make the segmenter ready (load the model where it runs) and check the prompts."""

    def stage(self, src: RasterSource, plan: TilePlan, todo: list[int], prompts: list[str], store: TileStore,
              progress: Progress, staged: Callable[[list[int]], None] = ...) -> None:
        """Segment the tiles `todo` of `src` and stage their pieces in `store`;
        `staged(tiles)` once each batch is committed."""


class LocalEngine:
    """Runs the segmenter in this process. Tiles are read and decoded in a
    background thread ahead of the model; detections are packed and staged in
    another behind it, so the model never waits on I/O.
    """

    def __init__(self, segmenter: Segmenter | Backend) -> None:
        self.segmenter = as_backend(segmenter)
        self.backend = self.segmenter.name
        self.options = self.segmenter.config()

    def check(self, prompts: list[str]) -> None:
        self.segmenter.check_prompts(prompts)

    def stage(self, src: RasterSource, plan: TilePlan, todo: list[int], prompts: list[str], store: TileStore,
              progress: Progress, staged: Callable[[list[int]], None] = lambda tiles: None) -> None:
        """Segment the tiles `todo` of `src` and stage their pieces in `store`;
        `staged(tiles)` is called once each batch is committed."""
        self.segmenter.begin(len(todo), prompts)
        cols = plan.shape[1]
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="geoseg-stage") as writer:
            pending: Future[None] | None = None
            for batch in segment_tiles(src, plan, todo, self.segmenter, prompts):
                if pending is not None:
                    pending.result()
                pending = writer.submit(_put, store, batch.tiles, batch.pieces, cols, set(batch.nodata), staged)
                progress.advance(len(batch.tiles), len(batch.pieces))
            if pending is not None:
                pending.result()


def _put(store: TileStore, done: list[int], pieces: list[merge.Piece], cols: int, nodata: set[int],
         staged: Callable[[list[int]], None]) -> None:
    store.put(done, pieces, cols, nodata)
    staged(done)
