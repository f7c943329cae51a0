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
the rows that open objects still need, their large masks as bits
(`geoseg.core.bits`); `merge` is its in-memory form.

An object that grows large (a forest, a river: a *region*) is not composed
as one mask. The rule above decides each pixel from the tile owning it, so it
can be applied one core band of rows (`TilePlan.row_cuts`) at a time: as the
rows of tiles owning a band arrive, the region's pixels in that band are
composed and traced into polygons in pixel coordinates (integer corners, so
that their union is exact), kept band by band as packed coordinates, and the
pieces no later band needs are dropped. When the region closes, its bands are
unioned from the top down into one outline, or, past `SPLIT` vertices, into
strips along the rows of tiles of at most `SPLIT` vertices each (the parts of
one object: `Instance.part`), so that no outline larger than that is ever put
together. Two parts of one object composed apart (the arms of a U, joined rows
later) combine exactly: a pixel taken from a neighbour because its owning tile
did not see the part (the fallback) is dropped when the other part shows that
the owning tile did see the object. So memory follows the outlines, not the
area.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import shapely

from geoseg.core.bits import LARGE, Bits
from geoseg.core.detections import Detections
from geoseg.core.segmenter import Detection
from geoseg.core.tiling import Tile, TilePlan
from geoseg.errors import RunError, UsageError


@dataclass
class Piece:
    """A detection in raster pixels: a tight boolean crop at (row, col), as an array or, held by
    the row merge, as `Bits`."""

    label: str
    score: float
    tile: int
    row: int
    col: int
    mask: np.ndarray | Bits
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
    """One merged object: a tight boolean crop at (row, col) in raster pixels,
    or for a region (see the module's note) its `outline` instead: a
    (Multi)Polygon in raster pixel coordinates (x a column, y a row; pixel
    corners), with `mask` None."""

    label: str
    score: float
    n_tiles: int
    row: int
    col: int
    mask: np.ndarray | None
    level: int = 0  #: the coarsest level among the pieces it was made of
    outline: shapely.Geometry | None = None
    part: int = 0  #: a region written in strips (see `SPLIT`): which strip, from the top; 0 for a whole object
    parts: int = 1  #: how many strips its object was written in
    centre: tuple[float, float] | None = None  #: a strip's: the centre (x, y) of its whole object's pixels

    @property
    def height(self) -> int:
        if self.mask is not None:
            return int(self.mask.shape[0])
        return int(shapely.bounds(self.outline)[3]) - self.row

    @property
    def width(self) -> int:
        if self.mask is not None:
            return int(self.mask.shape[1])
        return int(shapely.bounds(self.outline)[2]) - self.col


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
        return Instance(p.label, p.score, 1, p.row, p.col, np.asarray(p.mask), p.level)
    r0, c0 = min(p.row for p in group), min(p.col for p in group)
    r1, c1 = max(p.row_stop for p in group), max(p.col_stop for p in group)
    owner = plan.owner(np.arange(r0, r1)[:, None], np.arange(c0, c1)[None, :])
    keep = np.zeros((r1 - r0, c1 - c0), bool)
    seen = np.zeros_like(keep)
    for p in group:
        sub = (slice(p.row - r0, p.row_stop - r0), slice(p.col - c0, p.col_stop - c0))
        mask = np.asarray(p.mask)
        seen[sub] |= mask
        keep[sub] |= mask & (owner[sub] == p.tile)
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


Packed = tuple[np.ndarray, tuple[np.ndarray, ...]]
"""Polygons of pixel corners as shapely's ragged arrays (coordinates, offsets), the coordinates as int32:
8 bytes a vertex, no object per polygon."""


def _pack(polys: list[shapely.Geometry]) -> Packed:
    _, coords, offsets = shapely.to_ragged_array(polys)
    return coords.astype(np.int32), offsets  # integer corners: exact


def _unpack(packed: Packed) -> list[shapely.Geometry]:
    coords, offsets = packed
    return list(shapely.from_ragged_array(shapely.GeometryType.POLYGON, coords.astype(float), offsets))


@dataclass
class _Region:
    """What a region keeps of the core bands composed so far (see the module's note)."""

    label: str
    done: int  #: bands before this one are composed
    tiles: set[int]  #: every tile that saw it, also those of pieces dropped
    score: float
    level: int
    bands: dict[int, list[Packed]]  #: by core band: pixels kept from the tiles owning them, as polygons
    fallback: list[tuple[int, Packed]]  #: (owning tile, polygons): pixels taken from neighbours


def _straight(ring: np.ndarray) -> np.ndarray:
    """A closed ring of axis-aligned edges without the vertices in the middle of straight edges."""
    p = ring[:-1]
    turns = np.any(np.sign(np.roll(p, -1, axis=0) - p) != np.sign(p - np.roll(p, 1, axis=0)), axis=1)
    p = p[turns] if turns.sum() >= 3 else p
    return np.vstack([p, p[:1]])


class _Strips:
    """The union of polygons added band by band from the top, held as rings: the
    shells reaching the last band added stay open (the next band may join them);
    the holes, and the shells above that band, are shut (no later band reaches
    them) and kept as coordinates. Each band is unioned with the open shells
    only, so the work and memory of a union follow the band, not the object."""

    def __init__(self) -> None:
        self.open: list[shapely.Geometry] = []  # hole-free polygons touching the last band
        self.shells: list[np.ndarray] = []
        self.holes: list[np.ndarray] = []

    def add(self, polys: list[shapely.Geometry], cut: int) -> None:
        """Polygons above pixel row `cut`, below the rows added before."""
        if not polys:
            return
        geom = shapely.union_all(self.open + polys)
        self.open = []
        for p in shapely.get_parts(geom):
            if p.is_empty:
                continue
            self.holes += [np.asarray(r.coords) for r in p.interiors]  # enclosed above `cut`: final
            if p.bounds[3] < cut:
                self.shells.append(np.asarray(p.exterior.coords))
            else:
                self.open.append(shapely.Polygon(p.exterior))

    def whole(self) -> shapely.Geometry | None:
        """The union: each hole put back into the smallest shell that covers it. Consumes the
        rings (a forest's are held once, not twice)."""
        shells = [shapely.Polygon(_straight(r)) for r in [*(np.asarray(p.exterior.coords) for p in self.open),
                                                           *self.shells]]
        if not shells:
            return None
        holes = []
        for k, h in enumerate(self.holes):  # each ring's coordinates held once at a time
            holes.append(shapely.Polygon(_straight(h)))
            self.holes[k] = h[:0]
        self.open, self.shells, self.holes = [], [], []
        inside: list[list[shapely.Geometry]] = [[] for _ in shells]
        if holes:
            hole_at, shell_at = shapely.STRtree(shells).query(holes)
            for k in set(shell_at.tolist()):
                shapely.prepare(shells[k])
            covered = shapely.covers(np.array(shells, dtype=object)[shell_at], np.array(holes, dtype=object)[hole_at])
            area = shapely.area(shells)
            best: dict[int, int] = {}
            for h, k in zip(hole_at[covered].tolist(), shell_at[covered].tolist()):
                if h not in best or area[k] < area[best[h]]:
                    best[h] = k
            if len(best) < len(holes):  # not expected: fall back to the overlay
                return shapely.difference(shapely.union_all(shells), shapely.union_all(holes))
            for h, k in best.items():
                inside[k].append(holes[h].exterior)
        polys = [shapely.Polygon(s.exterior, rings) for s, rings in zip(shells, inside)]
        return polys[0] if len(polys) == 1 else shapely.MultiPolygon(polys)


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
    region: _Region | None = None


REGION = 4096  #: an object taller than this many pixels, or larger than its square, is composed band by band
SPLIT = 500_000
"""Vertices (pixel corners, before any simplification) past which a region is put together and written in
strips along the rows of tiles, each of at most this many where one row of tiles allows: the parts of one
object (`Instance.part`, `parts`). Simplified at the default 0.5 px a strip has about 3 to 4 times fewer."""

Trace = Callable[[np.ndarray, int, int], list[shapely.Geometry]]
"""A boolean mask at (row, col) -> its polygons in pixel coordinates (x a column, y a row), 4-connected,
holes kept: `geoseg.core.vectorize.trace`, given by the caller (this module draws no polygons itself)."""


class RowMerger:
    """Merges pieces into objects as rows of tiles arrive, in bounded memory.

    Feed the rows of tiles in order with `add(t, pieces)`; each call returns
    the objects completed so far (ordered by label, row, col), and `add` of the
    last row returns the rest. Row i is matched with the rows overlapping it
    once they have all arrived; an object is complete once no later row can
    join it and the rows owning its pixels have arrived. A row is dropped once
    no open object can need it. Given `trace`, an object taller than `region`
    pixels or larger than `region`² is a region: composed band by band into
    polygons (its `Instance` has an `outline`, no mask), so it holds only the
    rows owning the bands not composed yet, and memory follows the outlines,
    not the raster; a region of more than `split` vertices comes as strips
    (consecutive instances, `part` 0, 1, ...), made one at a time as they are taken unless `centres`
    (each then carries the whole object's centre). Without `trace`, memory follows the rows spanned by the
    largest object. The result depends only on the pieces, not on when rows
    arrive: a merge running behind the model, a resumed run and a merge of
    everything at the end give the same objects in the same order.
    """

    def __init__(self, plan: TilePlan, *, iou: float = 0.5, containment: float = 0.8,
                 trace: Trace | None = None, region: int = REGION, split: int = SPLIT, centres: bool = True) -> None:
        self.plan, self.iou, self.containment = plan, iou, containment
        self.trace = trace  #: with a tracer, objects past `region` px are composed band by band
        self.region = region
        self.split = split  #: a region of more vertices is put together in strips (see `SPLIT`)
        self.centres = centres  #: the strips of a region carry its centre (`Instance.centre`): all made at once
        self.cols = plan.shape[1]
        self.reach = _reach(plan)
        # the first row of tiles whose windows reach below each core cut
        self.cover_first = [int(np.searchsorted(np.asarray(plan.row_starts) + plan.tile_size, cut, side="right"))
                            for cut in plan.row_cuts[:-1]]
        self.regions: set[int] = set()  # roots of the groups composed band by band
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
        self.regions.discard(rb)
        if ga.region is not None or gb.region is not None:
            self._join_regions(ga, gb)
            self.regions.add(ra)
        ga.members += gb.members
        ga.first, ga.last = min(ga.first, gb.first), max(ga.last, gb.last)
        ga.r0, ga.c0, ga.r1, ga.c1 = min(ga.r0, gb.r0), min(ga.c0, gb.c0), max(ga.r1, gb.r1), max(ga.c1, gb.c1)
        if ga.region is None and self._large(ga):
            ga.region = self._new_region(ga)
            self.regions.add(ra)
        heapq.heappush(self.by_last, (ga.last, ra))
        heapq.heappush(self.by_first, (self._from(ga), ra))

    # -- regions: composed one core band at a time

    def _large(self, g: _Group) -> bool:
        h, w = g.r1 - g.r0, g.c1 - g.c0
        return self.trace is not None and (h > self.region or h * w > self.region * self.region)

    def _new_region(self, g: _Group) -> _Region:
        return _Region(g.members[0].label, self._core_row(g.r0), {p.tile for p in g.members},
                       max(p.score for p in g.members), min(p.level for p in g.members), {}, [])

    def _join_regions(self, ga: _Group, gb: _Group) -> None:
        """Make `ga` the region of both: each composed up to the same band with its own pieces first."""
        for g in (ga, gb):
            if g.region is None:
                g.region = self._new_region(g)
        a, b = ga.region, gb.region
        assert a is not None and b is not None
        done = max(a.done, b.done)
        self._advance(ga, done)
        self._advance(gb, done)
        # a pixel taken from a neighbour because its owning tile missed this part: that tile saw the other part
        a.fallback = [(t, f) for t, f in a.fallback if t not in b.tiles] + \
            [(t, f) for t, f in b.fallback if t not in a.tiles]
        for band, packed in b.bands.items():  # composed apart: their pixels may overlap, unioned at the close
            a.bands.setdefault(band, []).extend(packed)
        a.tiles |= b.tiles
        a.score, a.level = max(a.score, b.score), min(a.level, b.level)

    def _advance(self, g: _Group, done: int) -> None:
        """Compose the bands of region `g` before `done`; drop the pieces no later band needs."""
        reg = g.region
        assert reg is not None
        if done <= reg.done:
            return
        last = self._core_row(g.r1 - 1)
        for b in range(max(reg.done, self._core_row(g.r0)), min(done, last + 1)):
            self._band(g, reg, b)
        reg.done = done
        cut = self.plan.row_cuts[min(done, len(self.plan.row_cuts) - 1)]
        g.members = [p for p in g.members if p.row_stop > cut]

    def _band(self, g: _Group, reg: _Region, b: int) -> None:
        """Compose region `g` in core band `b` (the cores of row `b` of tiles): the rule of `_compose`, cell by cell."""
        plan = self.plan
        r0, r1 = max(plan.row_cuts[b], g.r0), min(plan.row_cuts[b + 1], g.r1)
        c0, c1 = g.c0, g.c1
        here = [p for p in g.members if p.row < r1 and p.row_stop > r0]
        if r1 <= r0 or not here:
            return
        seen = np.zeros((r1 - r0, c1 - c0), bool)
        own = np.zeros_like(seen)
        for p in here:
            pr0, pr1 = max(p.row, r0), min(p.row_stop, r1)
            part = p.mask[pr0 - p.row:pr1 - p.row]
            seen[pr0 - r0:pr1 - r0, p.col - c0:p.col_stop - c0] |= part
            if p.tile // self.cols == b:  # pixels in its own tile's core
                j = p.tile % self.cols
                k0, k1 = max(plan.col_cuts[j], p.col), min(plan.col_cuts[j + 1], p.col_stop)
                if k1 > k0:
                    own[pr0 - r0:pr1 - r0, k0 - c0:k1 - c0] |= part[:, k0 - p.col:k1 - p.col]
        assert self.trace is not None
        polys = self.trace(own, r0, c0)
        del own
        if polys:
            reg.bands.setdefault(b, []).append(_pack(polys))
        members = {p.key for p in g.members}
        label = reg.label
        j0, j1 = bisect.bisect_right(plan.col_cuts, c0) - 1, bisect.bisect_right(plan.col_cuts, c1 - 1) - 1
        for j in range(j0, j1 + 1):
            t = b * self.cols + j
            if t in reg.tiles:
                continue
            k0, k1 = max(plan.col_cuts[j], c0), min(plan.col_cuts[j + 1], c1)
            fb = seen[:, k0 - c0:k1 - c0].copy()
            if not fb.any():
                continue
            # unless the owning tile saw another object of this label there
            for q in self.rows.get(b, []):
                if q.tile != t or q.label != label or q.key in members:
                    continue
                qr0, qr1, qc0, qc1 = max(q.row, r0), min(q.row_stop, r1), max(q.col, k0), min(q.col_stop, k1)
                if qr1 > qr0 and qc1 > qc0:
                    claimed = q.mask[qr0 - q.row:qr1 - q.row, qc0 - q.col:qc1 - q.col]
                    fb[qr0 - r0:qr1 - r0, qc0 - k0:qc1 - k0] &= ~claimed
            polys = self.trace(fb, r0, k0)
            if polys:
                reg.fallback.append((t, _pack(polys)))

    def _outline(self, g: _Group) -> tuple[Instance, Iterator[Instance]] | None:
        """A closed region: its remaining bands composed, then unioned from the top down into one
        outline, or past `split` vertices into strips of at most `split` where a band allows. The
        first strip, and the others made as they are asked for (one strip's polygons at a time),
        unless `centres` asks every strip to carry the whole object's centre."""
        reg = g.region
        assert reg is not None
        self._advance(g, self._core_row(g.r1 - 1) + 1)
        for t, f in reg.fallback:  # in the band of the tile owning its pixels
            reg.bands.setdefault(t // self.cols, []).append(f)
        reg.fallback = []
        if not reg.bands:
            return None
        count = {b: sum(len(coords) for coords, _ in packed) for b, packed in reg.bands.items()}
        groups: list[list[int]] = [[]]  # the bands of each strip
        held = 0
        for b in sorted(count):
            if held and held + count[b] > self.split:
                groups.append([])
                held = 0
            groups[-1].append(b)
            held += count[b]
        strips = (self._strip(reg, bands, k, len(groups)) for k, bands in enumerate(groups))
        if self.centres and len(groups) > 1:  # each strip is vectorised alone: an area keeps or drops all by this
            made = list(strips)
            outlines = [s.outline for s in made]
            area, xy = shapely.area(outlines), shapely.get_coordinates(shapely.centroid(outlines))
            centre = tuple(float(v) for v in (xy * area[:, None]).sum(0) / area.sum())
            strips = (replace(s, centre=centre) for s in made)
        return next(strips), strips

    def _strip(self, reg: _Region, bands: list[int], part: int, parts: int) -> Instance:
        """The union of a region's `bands`, consumed: strip `part` of `parts`."""
        union = _Strips()
        for b in bands:
            union.add([p for packed in reg.bands.pop(b) for p in _unpack(packed)], self.plan.row_cuts[b + 1])
        outline = union.whole()
        assert outline is not None  # traced polygons are never empty
        c0, r0, _, _ = shapely.bounds(outline)
        return Instance(reg.label, reg.score, len(reg.tiles), int(r0), int(c0), None, reg.level, outline,
                        part=part, parts=parts)

    def add(self, t: int, pieces: list[Piece]) -> Iterator[Instance]:
        """Row `t` of tiles (the next one) with its pieces; the objects now complete, to be taken
        before the next `add` (the strips of a region are made as they are taken)."""
        if t != self.fed + 1:
            raise UsageError(f"rows of tiles must come in order: got {t} after {self.fed}")
        self.fed = t
        pieces = [replace(p, mask=Bits.of(p.mask)) if isinstance(p.mask, np.ndarray) and p.mask.size >= LARGE else p
                  for p in pieces]  # large masks held as bits
        self.rows[t] = pieces
        for p in pieces:
            self.parent[p.key] = p.key
            g = self.groups[p.key] = _Group([p], t, t, p.row, p.col, p.row_stop, p.col_stop)
            if self._large(g):
                g.region = self._new_region(g)
                self.regions.add(p.key)
            heapq.heappush(self.by_last, (t, p.key))
            heapq.heappush(self.by_first, (self._from(g), p.key))
        while self.matched < self.fed and self.reach[self.matched + 1] <= self.fed:
            self._match_row(self.matched + 1)
            self.matched += 1
        for root in sorted(self.regions):  # the bands whose pieces have all arrived and been matched
            g = self.groups[root]
            assert g.region is not None
            if g.region.done <= self.matched:
                self._advance(g, self.matched + 1)
                heapq.heappush(self.by_first, (self._from(g), root))
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
        """The first row of tiles a group needs: its members' and those owning its pixels
        (for a region: those reaching its first band not composed yet)."""
        if g.region is not None:
            return self.cover_first[min(max(g.region.done, self._core_row(g.r0)), len(self.cover_first) - 1)]
        return min(g.first, self._core_row(g.r0))

    def _needs(self, g: _Group) -> int:
        """The last row of tiles a group needs."""
        return max(g.last, self._core_row(g.r1 - 1))

    def _emit(self) -> Iterator[Instance]:
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
            self.regions.discard(root)
        if not ready:
            return iter(())
        near = _Near([p for row in self.rows.values() for p in row])
        out: list[tuple[Instance, Iterator[Instance]] | None] = []
        for g in ready:
            if g.region is not None:
                out.append(self._outline(g))
            else:
                inst = _compose(sorted(g.members, key=lambda p: p.key), self.plan, near)
                out.append(None if inst is None else (inst, iter(())))
        for g in ready:  # no later row can reach a closed object's pieces
            for p in g.members:
                del self.parent[p.key]
        ordered = sorted((o for o in out if o is not None), key=lambda o: _order(o[0]))
        return itertools.chain.from_iterable(itertools.chain([first], rest) for first, rest in ordered)

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
    return inst.label, inst.row, inst.col, inst.height, inst.width, -inst.score


def merge(
    pieces: Sequence[Piece], plan: TilePlan, *, iou: float = 0.5, containment: float = 0.8,
    trace: Trace | None = None, region: int = REGION, split: int = SPLIT, centres: bool = True,
) -> list[Instance]:
    """Merge pieces seen by overlapping tiles into one instance per object.

    The score of a merged object is its best member's score; `n_tiles` counts
    the tiles that saw it. The in-memory form of `RowMerger`; every object a
    mask unless `trace` is given (see `RowMerger`).
    """
    rows: dict[int, list[Piece]] = {}
    seq: dict[int, int] = {}
    for p in sorted(pieces, key=lambda p: p.tile):
        k = seq[p.tile] = seq.get(p.tile, -1) + 1
        rows.setdefault(p.tile // plan.shape[1], []).append(replace(p, key=(p.tile << KEY_BITS) | k))
    merger = RowMerger(plan, iou=iou, containment=containment, trace=trace, region=region, split=split,
                       centres=centres)
    return [inst for t in range(plan.shape[0]) for inst in merger.add(t, rows.get(t, []))]
