"""Exemplars: boxes drawn around a few objects that say "more like this, not like that".

Pure: which concepts the boxes make, on which tile and sub-tile each box is
encoded, and a backend wrapper that encodes them once per level and adds the
tokens to every `segment` call. Where the boxes come from (a vector file on a
map) is `geoseg.io.exemplars`'.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from geoseg.core.refine import MODEL_INPUT, levels, windows_at
from geoseg.core.tiling import TilePlan
from geoseg.errors import UsageError

VISUAL = "exemplar"  #: the label of boxes without a prompt when no text prompt is given
MIN_MODEL_PX = 4  #: a box's smaller side must be at least this many model pixels where it is first applied


@dataclass(frozen=True)
class EncodedExemplars:
    """What a concept's exemplars add to its prompt in `segment(..., exemplars={label: this})`.

    Attributes:
        tokens: what `encode_exemplars` returned, once per tile the concept's boxes were encoded on.
        text: whether the label is also a text prompt; False for an exemplar-only concept
            (SAM 3 then reads the placeholder text "visual").
    """

    tokens: tuple[Any, ...]
    text: bool


def concepts(prompts: Sequence[str], labels: Sequence[str | None], positive: Sequence[bool],
             named: str) -> tuple[list[str], list[str], list[tuple[str, ...]]]:
    """The concepts of text `prompts` and boxes (`labels`: each box's prompt or None).

    Returns every label in order (the prompts, then exemplar-only labels), the
    exemplar-only ones, and per box the labels it serves: its own, or without
    one every prompt (with no prompt at all: `VISUAL`). Refuses an exemplar-only
    concept with negative boxes only (`named` is the file in the caller's terms).
    """
    unlabelled = list(prompts) or [VISUAL]
    serves = [(lab,) if lab is not None else tuple(unlabelled) for lab in labels]
    only = [c for c in dict.fromkeys(c for s in serves for c in s) if c not in prompts]
    for c in only:
        if not any(p for s, p in zip(serves, positive) if c in s):
            what = f"prompt {c!r}" if c != VISUAL else "the boxes without a prompt"
            raise UsageError(f"{named}: {what} has negative boxes only: add a positive box (positive = true) "
                             f"around an example of what to find, or give it as a text prompt")
    return [*prompts, *only], only, serves


def centrality(box: Sequence[float], window: tuple[int, int, int, int]) -> float:
    """How far the box (x0, y0, x1, y1) lies inside the window (row, col, height, width):
    its least margin to the window's edges, negative where it reaches out."""
    x0, y0, x1, y1 = box
    row, col, height, width = window
    return min(x0 - col, y0 - row, col + width - x1, row + height - y1)


def home_tile(box: Sequence[float], plan: TilePlan) -> int:
    """The tile of `plan` the box (raster pixels) lies in most centrally. Its centrality is the
    lesser of its row and column margins, so the best row of tiles and the best column make it."""
    x0, y0, x1, y1 = box
    rows, cols, size = np.array(plan.row_starts), np.array(plan.col_starts), plan.tile_size
    i = int(np.argmax(np.minimum(y0 - rows, rows + size - y1)))
    j = int(np.argmax(np.minimum(x0 - cols, cols + size - x1)))
    return i * len(cols) + j


def model_px(box: Sequence[float], tile_px: int) -> float:
    """The box's smaller side as the model sees it in a tile of `tile_px` (resized to its input)."""
    return min(box[2] - box[0], box[3] - box[1]) * MODEL_INPUT / tile_px


@dataclass(frozen=True)
class Shot:
    """A home tile's pixels and the boxes encoded on it.

    Attributes:
        rgb: the tile as read (H, W, 3) uint8.
        boxes: (K, 4) float x0, y0, x1, y1 in the tile's pixels.
        positive: (K,) bool.
        serves: per box, the concept labels it serves.
    """

    rgb: np.ndarray
    boxes: np.ndarray
    positive: np.ndarray
    serves: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Exemplars:
    """A run's exemplars, placed: every home tile with its boxes, and the tiling.

    `groups(level)` cuts them into what one `encode_exemplars` call takes: the
    boxes of one concept on one sub-tile of that level (each box on the sub-tile
    it lies in most centrally, clipped to it where it is larger).
    """

    shots: tuple[Shot, ...]
    only: tuple[str, ...]  #: exemplar-only labels
    tile_size: int
    overlap: int

    def labels(self) -> list[str]:
        return list(dict.fromkeys(c for s in self.shots for serves in s.serves for c in serves))

    def groups(self, level: int) -> list[tuple[str, tuple[int, ...], np.ndarray, np.ndarray, np.ndarray]]:
        """(label, key, sub-tile pixels, boxes in them, positive) per concept and sub-tile of `level`;
        groups of the same boxes (boxes without a prompt serve every prompt) have the same key."""
        wins = windows_at(levels(self.tile_size, self.overlap)[:level + 1])[level]
        out: dict[tuple[str, int, int], list[int]] = {}
        placed: dict[tuple[int, int], np.ndarray] = {}
        for s, shot in enumerate(self.shots):
            for k, box in enumerate(shot.boxes):
                w = max(range(len(wins)), key=lambda i: centrality(box, wins[i]))
                row, col, height, width = wins[w]
                placed[s, k] = np.clip(box - (col, row, col, row), 0, (width, height, width, height))
                for label in shot.serves[k]:
                    out.setdefault((label, s, w), []).append(k)
        groups = []
        for (label, s, w), ks in out.items():
            row, col, height, width = wins[w]
            rgb = self.shots[s].rgb[row:row + height, col:col + width]
            groups.append((label, (s, w, *ks), rgb, np.stack([placed[s, k] for k in ks]), self.shots[s].positive[ks]))
        return groups


class WithExemplars:
    """A backend whose `segment(tiles, prompts)` adds the exemplars of the prompts
    that have some. Their tokens are encoded on first use at each level (a tile's
    side tells its level) and kept for the run: once per box and level.

    `encode`: the segmenter's `encode_exemplars` (default: `backend`'s). `cache`:
    tokens by (level, label, text), shared by runs with the same boxes (a session).
    """

    def __init__(self, backend: Any, exemplars: Exemplars, encode: Any = None,
                 cache: dict[tuple[int, str, bool], EncodedExemplars] | None = None) -> None:
        self.backend, self.exemplars = backend, exemplars
        self.encode = encode or backend.encode_exemplars
        sizes = levels(exemplars.tile_size, exemplars.overlap)
        self.level_of = {size: k for k, (size, _) in enumerate(sizes)}
        self.cache = {} if cache is None else cache
        self._done: set[int] = set()
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)

    def at(self, level: int) -> dict[str, EncodedExemplars]:
        """Each concept's encoded exemplars at `level`, encoded on first use."""
        only = set(self.exemplars.only)
        with self._lock:
            if level not in self._done:
                parts: dict[str, list[Any]] = {}
                made: dict[tuple[int, ...], Any] = {}  # the same boxes serving several concepts: encoded once
                for label, key, rgb, boxes, positive in self.exemplars.groups(level):
                    if (level, label, label not in only) not in self.cache:
                        if key not in made:
                            made[key] = self.encode(rgb, boxes, positive)
                        parts.setdefault(label, []).append(made[key])
                for c, t in parts.items():
                    self.cache[level, c, c not in only] = EncodedExemplars(tuple(t), c not in only)
                self._done.add(level)
        return {c: self.cache[level, c, c not in only] for c in self.exemplars.labels()}

    def segment(self, tiles: np.ndarray, prompts: Sequence[str]) -> Any:
        level = self.level_of.get(tiles.shape[1])
        if level is None:
            raise UsageError(f"a tile of {tiles.shape[1]} px is of no level of the tiling "
                             f"({self.exemplars.tile_size} px, overlap {self.exemplars.overlap})")
        tokens = self.at(level)
        return self.backend.segment(tiles, prompts, exemplars={p: tokens[p] for p in prompts if p in tokens})
