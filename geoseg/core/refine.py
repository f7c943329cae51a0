"""Dense scenes: a tile whose result fills the model's capacity is segmented
again in smaller sub-tiles, recursively. Pure numpy; the model is a callback.

A segmenter returns at most `max_objects` instances per tile and prompt (SAM 3:
200). A tile and prompt whose detections reach `saturation` x that number is
*saturated*: its area is split into 2 x 2 overlapping sub-tiles, each passed to
the segmenter at native resolution (SAM 3 resizes it to its input size, so
objects look about twice as large), with only the prompts that saturated.
Level L+1 halves the overlap and takes sub-tiles of ceil((s_L + o_{L+1}) / 2)
px, so two per side cover the parent exactly: each level costs 1.1 to 1.3 x
the pixels of the level above it.

The sub-tiles' pieces are merged with the seam merge of `geoseg.core.merge` on the
parent's own sub-plan, and replace the parent's result for those prompts: the
parent's pixels are owned by its sub-tiles' cores, nested inside the cores of
the tile plan, so the merge across tiles stays exact and an object is returned
once, whichever level found it. `zoom` starts every tile at a deeper level.

Neighbour start (`Refine.neighbours`): a dense scene's tiles are like their
neighbours, so a tile starts, per prompt, at the level all its finished
neighbours *needed* (`needed`: the level down to which every window of a tile
held `limit` objects of the prompt or more), instead of paying for the coarse
passes that would saturate and be thrown away; it still refines further where
it saturates. `Neighbours` says which tiles a tile waits for: the three above it,
and in the first row the one to its left, so the start levels, and so the
result, depend on the plan and the content only.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from geoseg.core import merge
from geoseg.core.detections import Detections
from geoseg.core.tiling import Tile, plan_tiles
from geoseg.errors import RunError, UsageError, option

MIN_SIZE = 64  #: no sub-tile smaller than this (pixels)


@dataclass(frozen=True)
class Refine:
    """How saturated tiles are refined.

    Attributes:
        saturation: a tile and prompt is saturated when its detections reach
            this fraction of the segmenter's `max_objects`.
        depth: levels of sub-tiles below the first level segmented (0: never refine).
        zoom: the first level segmented: 0 is the tile plan; 1 splits every
            tile in 2 x 2 sub-tiles from the start, and so on.
    """

    saturation: float = 0.8
    depth: int = 2
    zoom: int = 0
    neighbours: bool = True  #: start each tile at the level its finished neighbours needed

    @classmethod
    def of(cls, *, saturation: float = 0.8, depth: int = 2, zoom: int = 0, tile_size: int = 1008,
           overlap: int = 128, neighbours: bool = True) -> Refine:
        """Checked against the tiling: the zoomed tiles must stay >= MIN_SIZE px."""
        if not 0 < saturation <= 1:
            raise UsageError(f"{option('saturation', saturation)} must be in (0, 1]: the share of the model's "
                             f"object capacity that marks a tile saturated, e.g. {option('saturation', 0.8)}")
        if depth < 0:
            raise UsageError(f"{option('refine_depth', depth)} must be 0 (never refine) or more")
        if zoom < 0:
            raise UsageError(f"{option('zoom', zoom)} must be 0 (the tile plan) or more")
        sizes = levels(tile_size, overlap)
        if zoom >= len(sizes):
            raise UsageError(f"{option('zoom', zoom)} would make sub-tiles smaller than {MIN_SIZE} px "
                             f"from {option('tile_size', tile_size)}: use {option('zoom', len(sizes) - 1)} at most")
        return cls(float(saturation), int(depth), int(zoom), bool(neighbours))

    def fingerprint(self) -> dict[str, Any]:
        return {"--saturation": self.saturation, "--refine-depth": self.depth, "--zoom": self.zoom,
                "--neighbour-start": self.neighbours}

    def limit(self, capacity: int) -> int:
        """Detections of one prompt that make a tile saturated."""
        return max(1, math.ceil(self.saturation * capacity - 1e-9))


def levels(tile_size: int, overlap: int) -> list[tuple[int, int]]:
    """(size, overlap) of the tiles at each level, from the plan's (level 0)
    down to the last whose sub-tiles are at least MIN_SIZE px."""
    out = [(tile_size, overlap)]
    while True:
        size, ov = out[-1]
        sub_overlap = ov // 2
        sub = math.ceil((size + sub_overlap) / 2)
        if sub < MIN_SIZE or sub >= size:
            return out
        out.append((sub, sub_overlap))


@dataclass
class Item:
    """A tile at some level: its window in its parent, its pixels, and the
    tile of the plan it lies in (`root`)."""

    tile: Tile
    rgb: np.ndarray
    valid: np.ndarray
    root: int
    start: dict[str, int] = field(default_factory=dict)  #: prompt -> the first level it is segmented at


@dataclass
class Outcome:
    """What segmenting a batch of tiles with refinement gave."""

    pieces: list[list[merge.Piece]]  #: per tile, in raster pixels
    #: plan tile -> (its sub-tiles segmented, the deepest level among them)
    refined: dict[int, tuple[int, int]] = field(default_factory=dict)
    at_limit: dict[int, set[str]] = field(default_factory=dict)  #: plan tile -> prompts still saturated
    #: plan tile -> (forward passes: images given to the model, pixels in them)
    cost: dict[int, tuple[int, int]] = field(default_factory=dict)
    needed: dict[int, dict[str, int]] = field(default_factory=dict)  #: plan tile -> prompt -> level it needed


class _Run:
    def __init__(self, backend: Any, refine: Refine, tile_size: int, overlap: int, iou: float) -> None:
        self.backend, self.refine, self.iou = backend, refine, iou
        self.capacity: int | None = backend.max_objects
        self.levels = levels(tile_size, overlap)
        self.last = min(refine.zoom + refine.depth, len(self.levels) - 1)
        self.out = Outcome([])

    def level(self, items: list[Item], prompts: list[tuple[str, ...]], level: int) -> list[list[merge.Piece]]:
        """Pieces per item (in its parent's pixels) for its prompts, refined where saturated."""
        out: list[list[merge.Piece]] = [[] for _ in items]
        deeper = [tuple(p for p in group if items[i].start.get(p, 0) > level) for i, group in enumerate(prompts)]
        now = [tuple(p for p in group if p not in later) for group, later in zip(prompts, deeper)]
        for i, group in enumerate(now):
            if level and group:
                count, _ = self.out.refined.get(items[i].root, (0, 0))
                self.out.refined[items[i].root] = (count + 1, level)
        again = {i: later for i, later in enumerate(deeper) if later}
        for chunk, group in _calls(now, self.backend.batch_size):
            results = self.backend.segment(np.stack([items[i].rgb for i in chunk]), list(group))
            if len(results) != len(chunk):
                raise RunError(f"the segmenter returned {len(results)} results for {len(chunk)} tiles")
            for i, found in zip(chunk, results):
                root = items[i].root
                passes, pixels = self.out.cost.get(root, (0, 0))
                self.out.cost[root] = (passes + 1, pixels + items[i].rgb.shape[0] * items[i].rgb.shape[1])
                dets = Detections.of(found)
                out[i] = merge.to_pieces(dets, items[i].tile, items[i].valid, level=level)
                full = self._saturated(dets, group)
                if full and level < self.last:
                    again[i] = tuple(p for p in prompts[i] if p in deeper[i] or p in full)  # one order: one call
                elif full:
                    self.out.at_limit.setdefault(root, set()).update(full)
        if again:
            self._split(items, sorted(again.items()), level, out)
        return out

    def _saturated(self, dets: Detections, prompts: tuple[str, ...]) -> tuple[str, ...]:
        if self.capacity is None or not len(dets):
            return ()
        counts = Counter(dets.labels.tolist())
        return tuple(p for p in prompts if counts[p] >= self.refine.limit(self.capacity))

    def _split(self, items: list[Item], again: list[tuple[int, tuple[str, ...]]], level: int,
               out: list[list[merge.Piece]]) -> None:
        """Segment the saturated items again in sub-tiles; their merged pieces
        replace the items' own for the prompts that saturated."""
        size, overlap = self.levels[level + 1]
        parent = self.levels[level][0]
        sub = plan_tiles(parent, parent, size, overlap)
        children: list[Item] = []
        owners: list[int] = []
        child_prompts: list[tuple[str, ...]] = []
        for i, full in again:
            it = items[i]
            for t in sub:
                w = t.window
                valid = it.valid[w.row:w.row_stop, w.col:w.col_stop]
                if valid.any():
                    children.append(Item(t, it.rgb[w.row:w.row_stop, w.col:w.col_stop], valid, it.root, it.start))
                    owners.append(i)
                    child_prompts.append(full)
        found = self.level(children, child_prompts, level + 1)
        by_parent: dict[int, list[merge.Piece]] = {}
        for i, pieces in zip(owners, found):
            by_parent.setdefault(i, []).extend(pieces)
        for i, full in again:
            tile = items[i].tile
            merged = merge.merge(by_parent.get(i, []), sub, iou=self.iou)
            kept = [p for p in out[i] if p.label not in full]
            out[i] = kept + [merge.Piece(m.label, m.score, tile.index, tile.window.row + m.row,
                                         tile.window.col + m.col, m.mask, level=m.level) for m in merged]


def _calls(prompts: Sequence[tuple[str, ...]], size: int) -> Iterator[tuple[list[int], tuple[str, ...]]]:
    """Items with the same prompts, `size` at a time, in order of first appearance (none without prompts)."""
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, p in enumerate(prompts):
        if p:
            groups.setdefault(p, []).append(i)
    for group, idx in groups.items():
        for k in range(0, len(idx), size):
            yield idx[k:k + size], group


def segment(backend: Any, batch: list[tuple[Tile, np.ndarray, np.ndarray]], prompts: list[str], refine: Refine,
            *, tile_size: int, overlap: int, iou: float = 0.5,
            start: list[dict[str, int]] | None = None) -> Outcome:
    """Segment a batch of plan tiles (tile, rgb, valid) with `prompts`, refining
    the saturated ones; pieces in raster pixels, per tile.

    `backend` is a `geoseg.core.segmenter.Backend` (its `segment`, `batch_size`
    and `max_objects` are used); `tile_size` and `overlap` are the plan's.
    `start`: per tile, prompt -> the level to start at (`Neighbours.start`;
    never above `refine.zoom`, never below the deepest level).
    """
    run = _Run(backend, refine, tile_size, overlap, iou)
    items = []
    for k, (tile, rgb, valid) in enumerate(batch):
        first = {p: min(max(refine.zoom, (start[k] if start else {}).get(p, 0)), run.last) for p in prompts}
        items.append(Item(tile, rgb, valid, tile.index, first))
    run.out.pieces = run.level(items, [tuple(prompts)] * len(items), 0)
    if run.capacity is not None:
        limit = refine.limit(run.capacity)
        for it, pieces in zip(items, run.out.pieces):
            run.out.needed[it.root] = needed(pieces, it.tile, prompts, run.levels[:run.last + 1], limit)
    return run.out


def windows_at(levels_: list[tuple[int, int]]) -> list[list[tuple[int, int, int, int]]]:
    """The windows (row, col, height, width) of each level's sub-tiles in a
    plan tile of `levels_[0]`, as `_Run._split` cuts them."""
    out = [[(0, 0, levels_[0][0], levels_[0][0])]]
    for (parent, _), (size, overlap) in zip(levels_, levels_[1:]):
        sub = plan_tiles(parent, parent, size, overlap)
        out.append([(r + t.window.row, c + t.window.col, t.window.height, t.window.width)
                    for r, c, _, _ in out[-1] for t in sub])
    return out


def needed(pieces: list[merge.Piece], tile: Tile, prompts: Sequence[str], levels_: list[tuple[int, int]],
           limit: int) -> dict[str, int]:
    """Per prompt, the level every part of `tile` needed: the first level, from
    the plan's down, at which some sub-tile window holds fewer than `limit` of
    its objects (`pieces`, in raster pixels), so that a model capped at its
    capacity would not have saturated there. A tile starting at that level
    skips only passes that would have saturated everywhere; where only some of
    its sub-tiles are full, those refine further from there. The deepest level
    where every level is full."""
    out = {}
    wins = windows_at(levels_)
    for p in prompts:
        mine = [q for q in pieces if q.label == p]
        level = 0
        if len(mine) >= limit:
            while level + 1 < len(levels_) and all(_inside(mine, tile, w) >= limit for w in wins[level]):
                level += 1
        out[p] = level
    return out


def _inside(pieces: list[merge.Piece], tile: Tile, window: tuple[int, int, int, int]) -> int:
    """How many of `pieces` have a pixel in `window` (relative to `tile`)."""
    row, col, height, width = window
    r0, c0 = tile.window.row + row, tile.window.col + col
    n = 0
    for q in pieces:
        h, w = q.mask.shape
        top, left = max(r0, q.row), max(c0, q.col)
        bottom, right = min(r0 + height, q.row + h), min(c0 + width, q.col + w)
        if top < bottom and left < right and q.mask[top - q.row:bottom - q.row, left - q.col:right - q.col].any():
            n += 1
    return n


class Neighbours:
    """The levels the finished tiles of a plan needed, and where each tile starts.

    A tile waits for the three tiles above it (the first row: the one to its
    left), which come before it in plan order; tiles never segmented (nodata,
    away from the area) needed level 0.
    """

    def __init__(self, shape: tuple[int, int], known: dict[int, dict[str, int]] | None = None) -> None:
        self.rows, self.cols = shape
        self.known: dict[int, dict[str, int]] = dict(known or {})

    def of(self, tile: int) -> list[int]:
        r, c = divmod(tile, self.cols)
        if r == 0:
            return [tile - 1] if c else []
        return [(r - 1) * self.cols + cc for cc in (c - 1, c, c + 1) if 0 <= cc < self.cols]

    def ready(self, tile: int) -> bool:
        return all(n in self.known for n in self.of(tile))

    def add(self, tile: int, levels_: dict[str, int]) -> None:
        self.known[tile] = levels_

    def start(self, tile: int) -> dict[str, int]:
        """Prompt -> the level all its neighbours needed for it (the shallowest of theirs).

        Not the deepest: starting one level too deep costs a tile all the
        sub-tiles of that level (16 passes at level 2, where the cascade from
        level 1 pays 4 and 4 more per full sub-tile), while starting one level
        too shallow costs one pass at level 0, or four at level 1."""
        near = [self.known[n] for n in self.of(tile)]
        return {p: min(k.get(p, 0) for k in near) for p in set().union(*near)} if near else {}


MODEL_INPUT = 1008  #: SAM 3's input side: every tile or sub-tile is resized to it
RESOLVED = 16  #: an object this many model pixels across is well within what SAM 3 resolves


def object_scale(object_px: float, tile_size: int, overlap: int) -> list[dict[str, Any]]:
    """How large an object of `object_px` raster pixels looks to SAM 3 at
    each level: [{"level", "tile_px", "model_px"}]."""
    return [{"level": k, "tile_px": size, "model_px": round(object_px * MODEL_INPUT / size, 1)}
            for k, (size, _) in enumerate(levels(tile_size, overlap))]


def suggested_zoom(scale: list[dict[str, Any]]) -> int:
    """The first level at which the object is `RESOLVED` model pixels or more (else the deepest)."""
    return next((s["level"] for s in scale if s["model_px"] >= RESOLVED), scale[-1]["level"])
