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

`RowMerger` does this one row of tiles at a time, as rows arrive, holding only
the rows that open objects still need; `merge` is its in-memory form.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import shapely

from geoseg.core.detections import Detections
from geoseg.core.segmenter import Detection
from geoseg.core.tiling import Tile, TilePlan
from geoseg.errors import RunError, UsageError


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
    level: int = 0  #: the refinement level of the (sub-)tile that found it (0: a tile of the plan)

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
    level: int = 0  #: the coarsest level among the pieces it was made of


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
    return _place(det.label, det.score, r, c, np.asarray(det.mask, dtype=bool), tile, valid)


def to_pieces(dets: Detections | Iterable[Detection], tile: Tile, valid: np.ndarray, *,
              level: int = 0) -> list[Piece]:
    """`to_piece` for one tile's detections, a list or a `Detections`; those
    with no valid pixel are dropped. Columns are read as they are: no
    `Detection` is made and no mask copied but by the clip to `valid`.
    `level`: the refinement level of `tile` (see `geoseg.core.refine`)."""
    if not isinstance(dets, Detections):
        placed = [to_piece(d, tile, valid) for d in dets]
        return [replace(p, level=level) if level else p for p in placed if p is not None]
    placed = (_place(label, score, r, c, mask, tile, valid, level) for label, score, (r, c), mask
              in zip(dets.labels.tolist(), dets.scores.tolist(), dets.origins.tolist(), dets.masks))
    return [p for p in placed if p is not None]


def _place(label: str, score: float, r: int, c: int, mask: np.ndarray, tile: Tile, valid: np.ndarray,
           level: int = 0) -> Piece | None:
    h, w = mask.shape
    if r < 0 or c < 0 or r + h > valid.shape[0] or c + w > valid.shape[1]:
        raise RunError(f"the segmenter returned a mask of {mask.shape} at {(r, c)}, outside the {valid.shape} tile")
    tight = _tight(mask & valid[r:r + h, c:c + w])
    if tight is None:
        return None
    tr, tc, crop = tight
    return Piece(label, float(score), tile.index, tile.window.row + r + tr, tile.window.col + c + tc, crop,
                 level=level)


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
        return Instance(p.label, p.score, 1, p.row, p.col, p.mask, p.level)
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
    mine = np.zeros_like(keep)  # owned by a tile that saw it (np.isin costs ten times more on these)
    for t in tiles:
        mine |= owner == t
    fallback = seen & ~mine
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
    return Instance(group[0].label, best, len(tiles), r0 + tr, c0 + tc, crop, min(p.level for p in group))


def _reach(plan: TilePlan) -> list[int]:
    """For each row of tiles, the last row whose windows overlap it."""
    starts = np.asarray(plan.row_starts)
    return [int(np.searchsorted(starts, s + plan.tile_size, side="left")) - 1 for s in starts]


KEY_BITS = 20  #: a piece's key is (tile << KEY_BITS) | its number in the tile


@dataclass
class _Group:
    """Pieces joined so far, with their extent in rows of tiles and pixels."""

    members: list[Piece]
    first: int
    last: int
    r0: int
    c0: int
    r1: int
    c1: int


class RowMerger:
    """Merges pieces into objects as rows of tiles arrive, in bounded memory.

    Feed the rows of tiles in order with `add(t, pieces)`; each call returns
    the objects completed so far (ordered by label, row, col), and `add` of the
    last row returns the rest. Row i is matched with the rows overlapping it
    once they have all arrived; an object is complete once no later row can
    join it and the rows owning its pixels have arrived. A row is dropped once
    no open object can need it, so memory follows the rows spanned by the
    largest object, not the raster. The result depends only on the pieces, not
    on when rows arrive: a merge running behind the model, a resumed run and a
    merge of everything at the end give the same objects in the same order.
    """

    def __init__(self, plan: TilePlan, *, iou: float = 0.5, containment: float = 0.8) -> None:
        self.plan, self.iou, self.containment = plan, iou, containment
        self.cols = plan.shape[1]
        self.reach = _reach(plan)
        self.rows: dict[int, list[Piece]] = {}
        self.fed = self.matched = -1
        self.parent: dict[int, int] = {}
        self.groups: dict[int, _Group] = {}
        self.by_last: list[tuple[int, int]] = []  # heaps of (row, root), entries may be stale
        self.by_first: list[tuple[int, int]] = []
        self.waiting: list[tuple[int, int]] = []  # closed groups by the last row they need
        self.closed: set[int] = set()

    def _find(self, k: int) -> int:
        root = k
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[k] != root:
            self.parent[k], k = root, self.parent[k]
        return root

    def _union(self, a: int, b: int) -> None:
        ra, rb = self._find(a), self._find(b)
        if ra == rb:
            return
        ga, gb = self.groups[ra], self.groups[rb]
        if len(ga.members) < len(gb.members):
            ra, rb, ga, gb = rb, ra, gb, ga
        self.parent[rb] = ra
        del self.groups[rb]
        ga.members += gb.members
        ga.first, ga.last = min(ga.first, gb.first), max(ga.last, gb.last)
        ga.r0, ga.c0, ga.r1, ga.c1 = min(ga.r0, gb.r0), min(ga.c0, gb.c0), max(ga.r1, gb.r1), max(ga.c1, gb.c1)
        heapq.heappush(self.by_last, (ga.last, ra))
        heapq.heappush(self.by_first, (self._from(ga), ra))

    def add(self, t: int, pieces: list[Piece]) -> list[Instance]:
        """Row `t` of tiles (the next one) with its pieces; the objects now complete."""
        if t != self.fed + 1:
            raise UsageError(f"rows of tiles must come in order: got {t} after {self.fed}")
        self.fed = t
        self.rows[t] = pieces
        for p in pieces:
            self.parent[p.key] = p.key
            g = self.groups[p.key] = _Group([p], t, t, p.row, p.col, p.row_stop, p.col_stop)
            heapq.heappush(self.by_last, (t, p.key))
            heapq.heappush(self.by_first, (self._from(g), p.key))
        while self.matched < self.fed and self.reach[self.matched + 1] <= self.fed:
            self._match_row(self.matched + 1)
            self.matched += 1
        out = self._emit()
        self._evict()
        return out

    def _match_row(self, i: int) -> None:
        here = self.rows[i]
        near = [p for j in range(i, self.reach[i] + 1) for p in self.rows[j]]
        if not here or len(near) < 2:
            return
        tree = shapely.STRtree(shapely.box(*_box_array(near).T))
        a_idx, b_idx = tree.query(shapely.box(*_box_array(here).T), predicate="intersects")
        for a_k, b_k in zip(a_idx.tolist(), b_idx.tolist()):
            a, b = here[a_k], near[b_k]
            if a.tile == b.tile or a.label != b.label or (b.tile // self.cols == i and b.key <= a.key):
                continue
            if (max(a.col, b.col) >= min(a.col_stop, b.col_stop)
                    or max(a.row, b.row) >= min(a.row_stop, b.row_stop)):
                continue  # touching boxes share no pixel
            if _same_object(a, b, self.plan, self.iou, self.containment):
                self._union(a.key, b.key)

    def _core_row(self, pixel_row: int) -> int:
        return bisect.bisect_right(self.plan.row_cuts, pixel_row) - 1

    def _from(self, g: _Group) -> int:
        """The first row of tiles a group needs: its members' and those owning its pixels."""
        return min(g.first, self._core_row(g.r0))

    def _needs(self, g: _Group) -> int:
        """The last row of tiles a group needs."""
        return max(g.last, self._core_row(g.r1 - 1))

    def _emit(self) -> list[Instance]:
        # groups whose members all lie in matched rows can no longer grow
        while self.by_last and self.by_last[0][0] <= self.matched:
            last, root = heapq.heappop(self.by_last)
            g = self.groups.get(root)
            if g is not None and g.last == last and self.parent[root] == root and root not in self.closed:
                self.closed.add(root)
                heapq.heappush(self.waiting, (self._needs(g), root))
        ready = []
        while self.waiting and self.waiting[0][0] <= self.fed:
            root = heapq.heappop(self.waiting)[1]
            self.closed.discard(root)
            ready.append(self.groups.pop(root))
            for p in ready[-1].members:  # no later row can reach a closed object's pieces
                del self.parent[p.key]
        if not ready:
            return []
        near = _Near([p for row in self.rows.values() for p in row])
        out = [_compose(sorted(g.members, key=lambda p: p.key), self.plan, near) for g in ready]
        return sorted((o for o in out if o is not None), key=_order)

    def _evict(self) -> None:
        # an open object needs the rows from its `_from`; an unmatched row's pieces are open objects
        while self.by_first:
            first, root = self.by_first[0]
            g = self.groups.get(root)
            if g is not None and self._from(g) == first and self.parent[root] == root:
                break
            heapq.heappop(self.by_first)
        low = self.by_first[0][0] if self.by_first else self.fed + 1
        for r in [r for r in self.rows if r < low and r <= self.matched]:
            del self.rows[r]


class _Near:
    """The pieces whose boxes meet a box (rows r0, r1, cols c0, c1). The R-tree
    is built on first use: most objects need no neighbour's pieces."""

    def __init__(self, pieces: list[Piece]) -> None:
        self.pieces = pieces
        self.tree: shapely.STRtree | None = None

    def __call__(self, box: tuple[int, int, int, int]) -> list[Piece]:
        if self.tree is None:
            self.tree = shapely.STRtree(shapely.box(*_box_array(self.pieces).T))
        r0, r1, c0, c1 = box
        return [self.pieces[k] for k in self.tree.query(shapely.box(c0, r0, c1, r1)).tolist()]


def _order(inst: Instance) -> tuple[str, int, int, int, int, float]:
    return inst.label, inst.row, inst.col, inst.mask.shape[0], inst.mask.shape[1], -inst.score


def merge(
    pieces: Sequence[Piece], plan: TilePlan, *, iou: float = 0.5, containment: float = 0.8,
) -> list[Instance]:
    """Merge pieces seen by overlapping tiles into one instance per object.

    The score of a merged object is its best member's score; `n_tiles` counts
    the tiles that saw it. The in-memory form of `RowMerger`.
    """
    rows: dict[int, list[Piece]] = {}
    seq: dict[int, int] = {}
    for p in sorted(pieces, key=lambda p: p.tile):
        k = seq[p.tile] = seq.get(p.tile, -1) + 1
        rows.setdefault(p.tile // plan.shape[1], []).append(replace(p, key=(p.tile << KEY_BITS) | k))
    merger = RowMerger(plan, iou=iou, containment=containment)
    return [inst for t in range(plan.shape[0]) for inst in merger.add(t, rows.get(t, []))]
