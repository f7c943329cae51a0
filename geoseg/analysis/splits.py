"""The spatial split of a training dataset: chips dealt to train, val and test
by whole blocks of ground, so that no split sees the ground of another."""

from __future__ import annotations

from typing import Any

import numpy as np
import shapely

from geoseg.core.tiling import Window
from geoseg.errors import UsageError, option


def parse_split(text: str | tuple[float, ...]) -> tuple[float, ...]:
    """'0.8,0.2' or '0.7,0.2,0.1' -> fractions for train, val(, test)."""
    try:
        parts = tuple(float(v) for v in (text.split(",") if isinstance(text, str) else text))
    except ValueError:
        raise UsageError(f"{option('split', text)}: give 2 or 3 fractions, e.g. {option('split', '0.8,0.2')}") from None
    if len(parts) not in (2, 3) or any(p <= 0 for p in parts) or abs(sum(parts) - 1) > 1e-6:
        raise UsageError(f"{option('split', text)}: give 2 or 3 positive fractions summing to 1, "
                         "e.g. 0.8,0.2 or 0.7,0.2,0.1")
    return parts


def chip_blocks(windows: list[Window], block_px: float) -> list[tuple[int, int]]:
    """The (row, col) of the block holding each chip's centre."""
    return [(int((w.row + w.height / 2) // block_px), int((w.col + w.width / 2) // block_px)) for w in windows]


def assign_splits(blocks: list[Any], fractions: tuple[float, ...], seed: int, *,
                  strict: bool = True) -> dict[Any, int]:
    """Deal whole blocks to splits: block -> split number.

    Blocks are shuffled with `seed`; the first goes to each split in turn, then
    each block to the split furthest below its share of chips. With fewer blocks
    than splits, an error; or, not `strict`, the last splits get none.
    """
    names = sorted(set(blocks))
    if strict and len(names) < len(fractions):
        raise UsageError(f"{option('split')} needs {len(fractions)} spatial blocks and the rasters hold {len(names)}: "
                         f"use a smaller {option('block_size')} (or {option('chip_size')})")
    size = {b: blocks.count(b) for b in names}
    target = np.asarray(fractions) * len(blocks)
    have = np.zeros(len(fractions))
    order = np.random.default_rng(seed).permutation(len(names))
    out = {}
    for n, k in enumerate(order):
        s = n if n < len(fractions) else int(np.argmax(target - have))
        out[names[k]] = s
        have[s] += size[names[k]]
    return out


def overlap_guard(windows: list[Window], splits: list[int]) -> np.ndarray:
    """Keep-mask: a chip overlapping a chip of a later split is dropped."""
    boxes = shapely.box([w.col for w in windows], [w.row for w in windows],
                        [w.col_stop for w in windows], [w.row_stop for w in windows])
    keep = np.ones(len(windows), bool)
    if not len(windows):
        return keep
    a, b = shapely.STRtree(boxes).query(boxes, predicate="intersects")
    for p, q in zip(a, b):
        if splits[p] < splits[q] and windows[p].intersection(windows[q]) is not None:
            keep[p] = False
    return keep
