"""Merging detections across tile seams. Pure numpy + shapely's STRtree.

Two detections of one label from two overlapping tiles are the same object
when their masks agree inside the window both tiles see: IoU >= `iou`, or the
smaller lies mostly (>= `containment`) inside the larger. Both tiles see that
window whole, so a perfect model gives identical masks there; two distinct
objects that only touch share no pixel there and never match. Matches are
joined transitively (an object larger than a tile is seen by many tiles).

Each merged object takes every pixel from the tile that owns it (the tile's
core), where that tile saw the object; pixels owned by a tile that did not see
it come from the tiles that did, unless the owner saw another object there.
So the result has no seam, no double edge and no pixel counted twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import shapely

from geoseg.segmenter import Detection
from geoseg.tiling import Tile, TilePlan


@dataclass
class Piece:
    """A detection in raster pixels: a tight boolean crop at (row, col)."""

    label: str
    score: float
    tile: int
    row: int
    col: int
    mask: np.ndarray

    @property
    def row_stop(self) -> int:
        return self.row + self.mask.shape[0]

    @property
    def col_stop(self) -> int:
        return self.col + self.mask.shape[1]


@dataclass
class Instance:
    """One merged object: a tight boolean crop at (row, col) in raster pixels."""

    label: str
    score: float
    n_tiles: int
    row: int
    col: int
    mask: np.ndarray


def _tight(mask: np.ndarray) -> tuple[int, int, np.ndarray] | None:
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    return int(r0), int(c0), mask[r0:r1, c0:c1]


def to_piece(det: Detection, tile: Tile, valid: np.ndarray) -> Piece | None:
    """Place a tile's detection on the raster, keeping only valid pixels.

    `valid` is the tile's valid-pixel mask (False on nodata and on padding
    past the raster edge), so padding never yields detections.
    """
    r, c = det.origin
    mask = np.asarray(det.mask, dtype=bool)
    h, w = mask.shape
    if r < 0 or c < 0 or r + h > valid.shape[0] or c + w > valid.shape[1]:
        raise ValueError(f"detection mask {mask.shape} at {det.origin} falls outside the {valid.shape} tile")
    tight = _tight(mask & valid[r:r + h, c:c + w])
    if tight is None:
        return None
    tr, tc, crop = tight
    return Piece(det.label, float(det.score), tile.index, tile.window.row + r + tr, tile.window.col + c + tc, crop)


class _Sets:
    """Union-find over piece indices."""

    def __init__(self, n: int) -> None:
        self.parent = np.arange(n)

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:
            self.parent[i], i = root, self.parent[i]
        return int(root)

    def union(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


def _boxes(pieces: Sequence[Piece]) -> np.ndarray:
    return np.array([(p.col, p.row, p.col_stop, p.row_stop) for p in pieces], dtype=float).reshape(-1, 4)


def _overlapping_pairs(tree: shapely.STRtree, boxes: np.ndarray) -> np.ndarray:
    """Pairs (i < j) whose boxes share pixels (touching boxes share none)."""
    i, j = tree.query(shapely.box(*boxes.T), predicate="intersects")
    keep = i < j
    i, j = i[keep], j[keep]
    shares = (
        (np.maximum(boxes[i, 0], boxes[j, 0]) < np.minimum(boxes[i, 2], boxes[j, 2]))
        & (np.maximum(boxes[i, 1], boxes[j, 1]) < np.minimum(boxes[i, 3], boxes[j, 3]))
    )
    return np.stack([i[shares], j[shares]], axis=1)


def _count(p: Piece, r0: int, c0: int, r1: int, c1: int) -> int:
    """Pixels of `p` inside rows [r0, r1) and cols [c0, c1)."""
    r0, c0 = max(r0, p.row), max(c0, p.col)
    r1, c1 = min(r1, p.row_stop), min(c1, p.col_stop)
    if r1 <= r0 or c1 <= c0:
        return 0
    return int(p.mask[r0 - p.row:r1 - p.row, c0 - p.col:c1 - p.col].sum())


def _same_object(a: Piece, b: Piece, plan: TilePlan, iou: float, containment: float) -> bool:
    shared = plan.tile(a.tile).window.intersection(plan.tile(b.tile).window)
    if shared is None:
        return False
    r0, c0 = max(shared.row, a.row, b.row), max(shared.col, a.col, b.col)
    r1 = min(shared.row_stop, a.row_stop, b.row_stop)
    c1 = min(shared.col_stop, a.col_stop, b.col_stop)
    if r1 <= r0 or c1 <= c0:
        return False
    inter = int(np.count_nonzero(
        a.mask[r0 - a.row:r1 - a.row, c0 - a.col:c1 - a.col] & b.mask[r0 - b.row:r1 - b.row, c0 - b.col:c1 - b.col]
    ))
    if inter == 0:
        return False
    sr0, sc0, sr1, sc1 = shared.row, shared.col, shared.row_stop, shared.col_stop
    area_a, area_b = _count(a, sr0, sc0, sr1, sc1), _count(b, sr0, sc0, sr1, sc1)
    return inter / (area_a + area_b - inter) >= iou or inter / min(area_a, area_b) >= containment


def _inside(p: Piece, plan: TilePlan) -> bool:
    core = plan.tile(p.tile).core
    return core.row <= p.row and core.col <= p.col and p.row_stop <= core.row_stop and p.col_stop <= core.col_stop


def _compose(
    members: list[int], pieces: Sequence[Piece], plan: TilePlan, tree: shapely.STRtree,
) -> Instance | None:
    group = [pieces[k] for k in members]
    tiles = {p.tile for p in group}
    best = max(p.score for p in group)
    if len(group) == 1 and _inside(group[0], plan):
        p = group[0]
        return Instance(p.label, p.score, 1, p.row, p.col, p.mask)
    r0, c0 = min(p.row for p in group), min(p.col for p in group)
    r1, c1 = max(p.row_stop for p in group), max(p.col_stop for p in group)
    owner = plan.owner(np.arange(r0, r1)[:, None], np.arange(c0, c1)[None, :])
    keep = np.zeros((r1 - r0, c1 - c0), bool)
    seen = np.zeros_like(keep)
    for p in group:
        sub = (slice(p.row - r0, p.row_stop - r0), slice(p.col - c0, p.col_stop - c0))
        seen[sub] |= p.mask
        keep[sub] |= p.mask & (owner[sub] == p.tile)
    # pixels whose owning tile did not see this object: take them from the
    # tiles that did, unless the owner saw another object of this label there
    fallback = seen & ~np.isin(owner, list(tiles))
    if fallback.any():
        owners = set(np.unique(owner[fallback]).tolist())
        member_set = set(members)
        for k in tree.query(shapely.box(c0, r0, c1, r1)):
            q = pieces[int(k)]
            if int(k) in member_set or q.label != group[0].label or q.tile not in owners:
                continue
            qr0, qc0 = max(q.row, r0), max(q.col, c0)
            qr1, qc1 = min(q.row_stop, r1), min(q.col_stop, c1)
            if qr1 <= qr0 or qc1 <= qc0:
                continue
            sub = (slice(qr0 - r0, qr1 - r0), slice(qc0 - c0, qc1 - c0))
            claimed = q.mask[qr0 - q.row:qr1 - q.row, qc0 - q.col:qc1 - q.col] & (owner[sub] == q.tile)
            fallback[sub] &= ~claimed
        keep |= fallback
    tight = _tight(keep)
    if tight is None:
        return None
    tr, tc, crop = tight
    return Instance(group[0].label, best, len(tiles), r0 + tr, c0 + tc, crop)


def merge(
    pieces: Sequence[Piece], plan: TilePlan, *, iou: float = 0.5, containment: float = 0.8,
) -> list[Instance]:
    """Merge pieces seen by overlapping tiles into one instance per object.

    The score of a merged object is its best member's score; `n_tiles` counts
    the tiles that saw it. Cost is O(n log n) in the number of pieces.
    """
    if not pieces:
        return []
    boxes = _boxes(pieces)
    tree = shapely.STRtree(shapely.box(*boxes.T))
    sets = _Sets(len(pieces))
    for i, j in _overlapping_pairs(tree, boxes):
        a, b = pieces[i], pieces[j]
        if a.tile != b.tile and a.label == b.label and _same_object(a, b, plan, iou, containment):
            sets.union(int(i), int(j))
    groups: dict[int, list[int]] = {}
    for k in range(len(pieces)):
        groups.setdefault(sets.find(k), []).append(k)
    out = [_compose(members, pieces, plan, tree) for members in groups.values()]
    return [inst for inst in out if inst is not None]
