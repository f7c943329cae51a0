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

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

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
    key: int = -1  #: the piece's number in its raster (set by the merge or the staging store)

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


def _box_array(pieces: Sequence[Piece]) -> np.ndarray:
    return np.array([(p.col, p.row, p.col_stop, p.row_stop) for p in pieces], dtype=float).reshape(-1, 4)


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


def _compose(group: list[Piece], plan: TilePlan, near: Callable[[tuple[int, int, int, int]], list[Piece]],
             ) -> Instance | None:
    """One object from its pieces; `near(box)` gives the pieces whose boxes meet
    `box` (rows r0, r1, cols c0, c1), for pixels owned by tiles that missed it."""
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
        members = {p.key for p in group}
        for q in near((r0, r1, c0, c1)):
            if q.key in members or q.label != group[0].label or q.tile not in owners:
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


def _reach(plan: TilePlan) -> list[int]:
    """For each row of tiles, the last row whose windows overlap it."""
    starts = np.asarray(plan.row_starts)
    return [int(np.searchsorted(starts, s + plan.tile_size, side="left")) - 1 for s in starts]


def _match(index: dict[str, np.ndarray], load_row: Callable[[int], list[Piece]], plan: TilePlan,
           iou: float, containment: float) -> np.ndarray:
    """Pass 1: join the pieces that are one object; the root key of each piece.

    Rows of tiles are read in order, each with the later rows that overlap it,
    so only a few rows of pieces are in memory at once.
    """
    sets = _Sets(len(index["tile"]))
    cols = plan.shape[1]
    reach = _reach(plan)
    cache: dict[int, list[Piece]] = {}
    for i in range(plan.shape[0]):
        for j in range(i, reach[i] + 1):
            if j not in cache:
                cache[j] = load_row(j)
        for r in [r for r in cache if r < i]:
            del cache[r]
        here = cache[i]
        near = [p for j in range(i, reach[i] + 1) for p in cache[j]]
        if not here or len(near) < 2:
            continue
        boxes = _box_array(near)
        tree = shapely.STRtree(shapely.box(*boxes.T))
        a_idx, b_idx = tree.query(shapely.box(*_box_array(here).T), predicate="intersects")
        for a_k, b_k in zip(a_idx.tolist(), b_idx.tolist()):
            a, b = here[a_k], near[b_k]
            if a.tile == b.tile or a.label != b.label or (b.tile // cols == i and b.key <= a.key):
                continue
            if (max(a.col, b.col) >= min(a.col_stop, b.col_stop)
                    or max(a.row, b.row) >= min(a.row_stop, b.row_stop)):
                continue  # touching boxes share no pixel
            if _same_object(a, b, plan, iou, containment):
                sets.union(a.key, b.key)
    return np.array([sets.find(k) for k in range(len(index["tile"]))], dtype=np.int64)


def merge_rows(
    index: dict[str, np.ndarray], load_row: Callable[[int], list[Piece]], plan: TilePlan, *,
    iou: float = 0.5, containment: float = 0.8,
) -> Iterator[list[Instance]]:
    """Merge pieces into objects, one row of tiles at a time, in bounded memory.

    `index` describes every piece without its mask, in key order (arrays
    `tile`, `label` (codes), `row`, `col`, `row_stop`, `col_stop`); `load_row(i)`
    gives the pieces of row `i` of tiles, with those keys. Yields, for each row
    of tiles, the objects completed there, ordered by (label, row, col). Only
    the pieces of objects still open are held: memory follows the largest
    object, not the raster. Every row is read twice (match, then compose).
    """
    n = len(index["tile"])
    if n == 0:
        return
    root = _match(index, load_row, plan, iou, containment)
    cols = plan.shape[1]
    order = np.argsort(root, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(root[order]) != 0])
    group = np.empty(n, np.int64)
    group[order] = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, n]))
    trow = index["tile"] // cols
    r0 = np.minimum.reduceat(index["row"][order], starts)
    r1 = np.maximum.reduceat(index["row_stop"][order], starts)
    c0 = np.minimum.reduceat(index["col"][order], starts)
    c1 = np.maximum.reduceat(index["col_stop"][order], starts)
    cuts = np.asarray(plan.row_cuts)
    # the rows of tiles a group needs: its members' rows and those of the tiles owning its box
    lo = np.minimum(np.minimum.reduceat(trow[order], starts), np.searchsorted(cuts, r0, side="right") - 1)
    hi = np.maximum(np.maximum.reduceat(trow[order], starts), np.searchsorted(cuts, r1 - 1, side="right") - 1)
    label = index["label"][order][starts]
    members_of: dict[int, list[Piece]] = {}
    held: dict[int, Piece] = {}
    last_use: dict[int, int] = {}
    for t in range(plan.shape[0]):
        loaded = load_row(t)
        if loaded:
            active = np.flatnonzero((lo <= t) & (hi >= t))
            tree = shapely.STRtree(shapely.box(c0[active], r0[active], c1[active], r1[active]))
            p_idx, g_idx = tree.query(shapely.box(*_box_array(loaded).T), predicate="intersects")
            use = np.full(len(loaded), t, np.int64)
            g = active[g_idx]
            same = label[g] == index["label"][[loaded[k].key for k in p_idx.tolist()]]
            np.maximum.at(use, p_idx[same], hi[g[same]])
            for p, u in zip(loaded, use.tolist()):
                held[p.key] = p
                last_use[p.key] = max(u, int(hi[group[p.key]]))
                members_of.setdefault(int(group[p.key]), []).append(p)
        done = [g for g in members_of if hi[g] == t]
        if done:
            near = _Near(list(held.values()))
            out = [_compose(sorted(members_of.pop(g), key=lambda p: p.key), plan, near) for g in done]
            yield sorted((o for o in out if o is not None), key=_order)
        for k in [k for k, u in last_use.items() if u <= t]:
            del held[k], last_use[k]


class _Near:
    """The pieces whose boxes meet a box (rows r0, r1, cols c0, c1)."""

    def __init__(self, pieces: list[Piece]) -> None:
        self.pieces = pieces
        self.tree = shapely.STRtree(shapely.box(*_box_array(pieces).T))

    def __call__(self, box: tuple[int, int, int, int]) -> list[Piece]:
        r0, r1, c0, c1 = box
        return [self.pieces[k] for k in self.tree.query(shapely.box(c0, r0, c1, r1)).tolist()]


def _order(inst: Instance) -> tuple[str, int, int, int, int, float]:
    return inst.label, inst.row, inst.col, inst.mask.shape[0], inst.mask.shape[1], -inst.score


def index_of(pieces: Sequence[Piece]) -> dict[str, np.ndarray]:
    """The index `merge_rows` takes, for pieces whose keys are 0..n-1 in order."""
    names, codes = np.unique(np.array([p.label for p in pieces] or [""], dtype=object).astype(str),
                             return_inverse=True)
    return {
        "tile": np.array([p.tile for p in pieces], np.int64), "label": codes[:len(pieces)].astype(np.int64),
        "label_names": names,
        "row": np.array([p.row for p in pieces], np.int64), "col": np.array([p.col for p in pieces], np.int64),
        "row_stop": np.array([p.row_stop for p in pieces], np.int64),
        "col_stop": np.array([p.col_stop for p in pieces], np.int64),
    }


def merge(
    pieces: Sequence[Piece], plan: TilePlan, *, iou: float = 0.5, containment: float = 0.8,
) -> list[Instance]:
    """Merge pieces seen by overlapping tiles into one instance per object.

    The score of a merged object is its best member's score; `n_tiles` counts
    the tiles that saw it. The in-memory form of `merge_rows`.
    """
    keyed = [replace(p, key=k) for k, p in enumerate(sorted(pieces, key=lambda p: p.tile))]
    rows: dict[int, list[Piece]] = {}
    for p in keyed:
        rows.setdefault(p.tile // plan.shape[1], []).append(p)
    blocks = merge_rows(index_of(keyed), lambda t: rows.get(t, []), plan, iou=iou, containment=containment)
    return [inst for block in blocks for inst in block]
