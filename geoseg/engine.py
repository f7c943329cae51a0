"""Running a segmenter over tiles in this process: read ahead, segment in
batches, stage behind. `distributed` does the same on a Dask cluster."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

from geoseg import merge
from geoseg.errors import RunError
from geoseg.progress import Progress
from geoseg.raster import RasterSource
from geoseg.segmenter import Segmenter
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


def batch_size_of(segmenter: Segmenter) -> int:
    """Tiles per `segment` call: the segmenter's `batch_size`, else 4."""
    return max(1, int(getattr(segmenter, "batch_size", 4) or 4))


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
    for (tile, _, valid), dets in zip(batch, results):
        for det in dets:
            piece = merge.to_piece(det, tile, valid)
            if piece is not None:
                pieces.append(piece)
    return pieces


def _plain(value: Any) -> Any:
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


SEGMENTER_OPTIONS = ("model", "dtype", "score_threshold", "mask_threshold", "max_detections", "nms_iou")


def describe_segmenter(segmenter: Any) -> dict[str, Any]:
    """The options that decide what a segmenter finds, read off its attributes."""
    return {k: _plain(getattr(segmenter, "model_id" if k == "model" else k, None)) for k in SEGMENTER_OPTIONS}


class LocalEngine:
    """Runs the segmenter in this process. Tiles are read and decoded in a
    background thread ahead of the model; detections are packed and staged in
    another behind it, so the model never waits on I/O.
    """

    def __init__(self, segmenter: Segmenter) -> None:
        self.segmenter = segmenter
        self.backend = getattr(segmenter, "name", type(segmenter).__name__)
        self.options = describe_segmenter(segmenter)

    def check(self, prompts: list[str]) -> None:
        check = getattr(self.segmenter, "check_prompts", None)
        if callable(check):
            check(prompts)

    def stage(self, src: RasterSource, plan: TilePlan, todo: list[int], prompts: list[str], store: TileStore,
              progress: Progress, staged: Callable[[list[int]], None] = lambda tiles: None) -> None:
        """Segment the tiles `todo` of `src` and stage their pieces in `store`;
        `staged(tiles)` is called once each batch is committed."""
        segmenter = self.segmenter
        begin = getattr(segmenter, "begin", None)
        if callable(begin):
            begin(len(todo), prompts)
        size = batch_size_of(segmenter)
        cols = plan.shape[1]
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="geoseg-stage") as writer:
            pending: Future[None] | None = None

            def flush(done: list[int], batch: list[tuple[Tile, np.ndarray, np.ndarray]]) -> None:
                nonlocal pending
                pieces = segment_batch(segmenter, batch, prompts) if batch else []
                if pending is not None:
                    pending.result()
                nodata = set(done) - {tile.index for tile, _, _ in batch}
                pending = writer.submit(_put, store, done, pieces, cols, nodata, staged)
                progress.advance(len(done), len(pieces))

            done: list[int] = []
            batch: list[tuple[Tile, np.ndarray, np.ndarray]] = []
            for tile, rgb, valid in read_ahead(src, [plan.tile(k) for k in todo], depth=2 * size):
                done.append(tile.index)
                if valid.any():
                    batch.append((tile, rgb, valid))
                if len(batch) == size:
                    flush(done, batch)
                    done, batch = [], []
            if done:
                flush(done, batch)
            if pending is not None:
                pending.result()


def _put(store: TileStore, done: list[int], pieces: list[merge.Piece], cols: int, nodata: set[int],
         staged: Callable[[list[int]], None]) -> None:
    store.put(done, pieces, cols, nodata)
    staged(done)
