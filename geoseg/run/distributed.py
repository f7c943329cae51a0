"""The Dask adapter: segment blocks of tiles on a `dask.distributed` cluster.

Work units are (file, block of tiles). Each worker builds the segmenter once
and keeps it; it reads its tiles itself (paths and URLs, window by window) and
sends back compact detections (bit-packed masks). The client stages them in the
run's work folder as they arrive, so resume works as in a local run, and merges
each file once. A task lost with its worker is run again elsewhere by Dask.

Needs Dask's distributed scheduler (the `dask` extra); imported only when a cluster is asked for.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dask.distributed import Client, LocalCluster, as_completed

from geoseg.core import staging
from geoseg.core.exemplars import Exemplars, WithExemplars
from geoseg.core.merge import Piece
from geoseg.core.refine import Refine
from geoseg.core.segmenter import Backend, Segmenter, as_segmenter, check_takes_exemplars
from geoseg.core.staging import TileStore
from geoseg.core.tiling import TilePlan, plan_tiles
from geoseg.errors import UsageError, option
from geoseg.io.raster import RasterSource, ReadOptions
from geoseg.io.sources import is_remote
from geoseg.run.engine import AtLimit, segment_tiles
from geoseg.run.progress import Progress

_SEGMENTERS: dict[str, Backend] = {}  # per worker process: built once, kept
_EXEMPLARS: dict[tuple[str, str], WithExemplars] = {}  # per worker: tokens encoded once per box and level


def _segmenter(key: str, spec: Any) -> Backend:
    seg = _SEGMENTERS.get(key)
    if seg is None:
        seg = Backend(spec if not isinstance(spec, tuple) else as_segmenter(spec[0], **spec[1]))
        _SEGMENTERS[key] = seg
    return seg


def _check(key: str, spec: Any, prompts: list[str], exemplars: bool = False) -> tuple[dict[str, Any], int | None]:
    segmenter = _segmenter(key, spec)
    segmenter.check_prompts(prompts)
    if exemplars:
        check_takes_exemplars(segmenter.segmenter)
    return segmenter.config(), segmenter.max_objects


def _backend(key: str, spec: Any, exemplars: tuple[str, Exemplars] | None) -> Any:
    """The worker's segmenter, with the run's exemplars (`(digest, exemplars)`) where there are some."""
    segmenter = _segmenter(key, spec)
    if exemplars is None:
        return segmenter
    digest, placed = exemplars
    if (key, digest) not in _EXEMPLARS:
        _EXEMPLARS[key, digest] = WithExemplars(segmenter, placed)
    return _EXEMPLARS[key, digest]


def _segment_block(key: str, spec: Any, path: str, read: ReadOptions, limits: Any, grid: tuple[int, int, int, int],
                   tiles: list[int], prompts: list[str], refine: Refine,
                   exemplars: tuple[str, Exemplars] | None = None) -> tuple[Any, ...]:
    """On a worker: read and segment `tiles` of `path`; (tiles, nodata tiles, packed pieces,
    tiles refined, tiles still saturated, the cost of each tile)."""
    plan = plan_tiles(*grid)
    nodata: list[int] = []
    packed = []
    refined: dict[int, tuple[int, int]] = {}
    at_limit: dict[int, set[str]] = {}
    cost: dict[int, tuple[int, int]] = {}
    with RasterSource(path, read, stretch_limits=limits) as src:
        for batch in segment_tiles(src, plan, tiles, _backend(key, spec, exemplars), prompts, refine):
            nodata += batch.nodata
            packed += [(p.label, p.score, p.tile, p.row, p.col, p.mask.shape, staging.pack(p.mask), p.level)
                       for p in batch.pieces]
            refined.update(batch.refined)
            at_limit.update(batch.at_limit)
            cost.update(batch.cost)
    return tiles, nodata, packed, refined, at_limit, cost


class DaskEngine:
    """Runs the segmenter on a Dask cluster through `client`.

    Args:
        client: a `dask.distributed.Client`.
        segmenter: a backend name ("sam3"), built on each worker once with
            `options`, or a picklable `Segmenter` object.
        block: tiles per task.
        resources: what each task needs of a worker, e.g. {"GPU": 1}, so
            that a GPU runs one model (workers started with `--resources GPU=1`).

    Workers segment blocks of tiles independently, so every tile starts at the
    plan's level (the cascade of `geoseg.core.refine`): no neighbour start.
    """

    neighbour_start = False

    def __init__(self, client: Client, segmenter: str | Segmenter, options: dict[str, Any] | None = None, *,
                 block: int = 8, resources: dict[str, float] | None = None) -> None:
        self.client, self.block, self.resources = client, block, resources
        options = {k: v for k, v in (options or {}).items() if v is not None}
        self.spec: Any = (segmenter, options) if isinstance(segmenter, str) else segmenter
        self.backend = segmenter if isinstance(segmenter, str) else Backend(segmenter).name
        self.options: dict[str, Any] = {}
        self.max_objects: int | None = None
        self.key = hashlib.sha1(pickle.dumps(self.spec)).hexdigest()
        self.exemplars: Any = None  #: the run's exemplars, scattered to every worker once

    def check(self, prompts: list[str], exemplars: Exemplars | None = None) -> None:
        """Build the segmenter on a worker, check the prompts there and learn its options
        (so a bad model or prompt fails before any work); send the exemplars (their
        tiles' pixels) to every worker once, where each encodes them once per level."""
        self.options, self.max_objects = self.client.submit(_check, self.key, self.spec, prompts,
                                                            exemplars is not None, pure=False,
                                                            resources=self.resources).result()
        self.exemplars = None
        if exemplars is not None:
            blob = pickle.dumps(exemplars)
            self.exemplars = self.client.scatter([(hashlib.sha1(blob).hexdigest(), exemplars)], broadcast=True)[0]

    def stage(self, src: RasterSource, plan: TilePlan, todo: list[int], prompts: list[str], store: TileStore,
              progress: Progress, staged: Callable[[list[int]], None] = lambda tiles: None, *,
              refine: Refine | None = None, profile: Any = None) -> None:
        # `profile`: the stages run on the cluster, not timed here
        if not src.opened_from_path:
            raise UsageError(f"{src.path}: with Dask, inputs must be paths or URLs the workers can open")
        path = src.path if is_remote(src.path) else str(Path(src.path).resolve())
        grid = (plan.height, plan.width, plan.tile_size, plan.overlap)
        limits = src.stretch_limits
        futures = [
            self.client.submit(_segment_block, self.key, self.spec, path, src.options, limits, grid,
                               todo[i:i + self.block], prompts, refine or Refine(), self.exemplars, pure=False,
                               resources=self.resources)
            for i in range(0, len(todo), self.block)
        ]
        cols = plan.shape[1]
        at_limit = AtLimit(src, plan)
        try:
            for fut in as_completed(futures):
                tiles, nodata, packed, refined, saturated, cost = fut.result()
                fut.release()
                pieces = [Piece(label, score, tile, row, col, staging.unpack(blob, *shape), level=level)
                          for label, score, tile, row, col, shape, blob, level in packed]
                store.put(tiles, pieces, cols, nodata, refined, cost)
                staged(tiles)
                progress.advance(len(tiles), len(pieces), sum(n for n, _ in refined.values()),
                                 sum(n for n, _ in cost.values()))
                at_limit.add(saturated)
            at_limit.close()
        finally:  # a failed file or an interrupt: its other blocks stop too
            self.client.cancel([f for f in futures if not f.done()])


def connect(*, workers: int | None = None, scheduler: str | None = None,
            resources: dict[str, float] | None = None, timeout: str = "10s") -> Client:
    """A client of the cluster at `scheduler`, or of a new LocalCluster of
    `workers` processes (one thread each) on 127.0.0.1."""
    if scheduler is not None:
        try:
            return Client(scheduler, timeout=timeout)
        except OSError as e:
            raise UsageError(f"{option('scheduler', scheduler)}: cannot reach the Dask scheduler ({e})") from None
    cluster = LocalCluster(n_workers=workers or 1, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None, resources=resources)
    return Client(cluster)


def parse_resources(text: str | None) -> dict[str, float] | None:
    """'GPU=1,MEM=8e9' -> {'GPU': 1.0, 'MEM': 8e9}."""
    if not text:
        return None
    try:
        return {k.strip(): float(v) for k, v in (item.split("=") for item in text.split(","))}
    except ValueError:
        raise UsageError(f"{option('resources', text)}: give NAME=AMOUNT pairs, "
                         f"e.g. {option('resources', 'GPU=1')}") from None

