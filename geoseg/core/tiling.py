"""Tile planning: pure geometry, no I/O.

Tiles are `tile_size` square, step `tile_size - overlap`, with the last row and
column pinned to the raster edge so no tile is a sliver. Each tile owns a core:
the overlap between two neighbours is split at its middle, so the cores of all
tiles partition the raster. Rasters smaller than a tile get one tile that
reaches past the raster (the reader pads it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from geoseg.errors import UsageError, option


@dataclass(frozen=True)
class Window:
    """A pixel rectangle: rows [row, row + height), cols [col, col + width)."""

    row: int
    col: int
    height: int
    width: int

    @property
    def row_stop(self) -> int:
        return self.row + self.height

    @property
    def col_stop(self) -> int:
        return self.col + self.width

    def intersection(self, other: Window) -> Window | None:
        r0, c0 = max(self.row, other.row), max(self.col, other.col)
        r1, c1 = min(self.row_stop, other.row_stop), min(self.col_stop, other.col_stop)
        if r1 <= r0 or c1 <= c0:
            return None
        return Window(r0, c0, r1 - r0, c1 - c0)


@dataclass(frozen=True)
class Tile:
    """One tile of a plan.

    Attributes:
        index: position in the plan (row-major).
        grid: (row, col) of the tile in the tile grid.
        window: the pixels the tile covers; may reach past the raster when the
            raster is smaller than a tile.
        core: the pixels this tile owns (inside the raster).
    """

    index: int
    grid: tuple[int, int]
    window: Window
    core: Window


def _starts(length: int, size: int, step: int) -> list[int]:
    if length <= size:
        return [0]
    starts = list(range(0, length - size, step))
    starts.append(length - size)  # pin the last tile to the edge
    return starts


def _core_bounds(starts: list[int], size: int, length: int) -> list[int]:
    """Boundaries between cores: the middle of each overlap, plus both ends."""
    cuts = [(b + a + size) // 2 for a, b in zip(starts, starts[1:])]
    return [0, *cuts, length]


@dataclass(frozen=True)
class TilePlan:
    """The tiles covering a `height` x `width` raster."""

    height: int
    width: int
    tile_size: int
    overlap: int
    row_starts: tuple[int, ...]
    col_starts: tuple[int, ...]
    row_cuts: tuple[int, ...]
    col_cuts: tuple[int, ...]

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.row_starts), len(self.col_starts)

    def __len__(self) -> int:
        return len(self.row_starts) * len(self.col_starts)

    def tile(self, index: int) -> Tile:
        i, j = divmod(index, len(self.col_starts))
        r, c = self.row_starts[i], self.col_starts[j]
        window = Window(r, c, self.tile_size, self.tile_size)
        core = Window(
            self.row_cuts[i], self.col_cuts[j],
            self.row_cuts[i + 1] - self.row_cuts[i], self.col_cuts[j + 1] - self.col_cuts[j],
        )
        return Tile(index, (i, j), window, core)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return (self.tile(k) for k in range(len(self)))

    def owner(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Index of the tile whose core holds each (row, col); broadcasts."""
        i = np.searchsorted(self.row_cuts, rows, side="right") - 1
        j = np.searchsorted(self.col_cuts, cols, side="right") - 1
        return i * len(self.col_starts) + j  # type: ignore[no-any-return]


def plan_tiles(height: int, width: int, tile_size: int = 1008, overlap: int = 128) -> TilePlan:
    """Plan overlapping tiles over a `height` x `width` raster."""
    if tile_size < 16:
        raise UsageError(f"{option('tile_size', tile_size)} is too small: use 16 pixels or more (SAM 3 sees 1008)")
    if overlap < 0 or overlap >= tile_size:
        raise UsageError(
            f"{option('overlap', overlap)} must be >= 0 and smaller than {option('tile_size', tile_size)}: "
            f"try {option('overlap', tile_size // 8)}"
        )
    if height < 1 or width < 1:
        raise UsageError(f"cannot tile an empty raster ({height} x {width} px)")
    step = tile_size - overlap
    rows, cols = _starts(height, tile_size, step), _starts(width, tile_size, step)
    return TilePlan(
        height, width, tile_size, overlap,
        tuple(rows), tuple(cols),
        tuple(_core_bounds(rows, tile_size, height)), tuple(_core_bounds(cols, tile_size, width)),
    )
