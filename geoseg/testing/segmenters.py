"""Deterministic test segmenters (test backends, not models)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from geoseg.core.detections import Detections
from geoseg.core.merge import Piece, to_piece
from geoseg.core.objects import ObjectPrompt
from geoseg.core.segmenter import Detection
from geoseg.core.tiling import TilePlan
from geoseg.errors import PromptError
from geoseg.testing.scenes import LABELS


class ColorSegmenter:
    """Finds the objects of `geoseg.testing` scenes: what a perfect model sees.

    Prompts are "red", "green" or "blue". Each colour of that family is one
    object; its mask is every pixel of that colour inside the tile (so objects
    cut by the tile edge come back cut, as a real model would see them). The
    score is a fixed function of the object's colour. Registered as the test
    backend "colors". `delay` adds a fixed time per call, as a model's forward
    pass takes (for tests of interrupted runs and benchmarks of the pipeline).
    It takes exemplars: a box stands for the colour family with the most
    object pixels in it (see `encode_exemplars`).
    """

    name = "colors"

    def __init__(self, *, score_threshold: float = 0.0, batch_size: int = 4, delay: float = 0.0) -> None:
        self.score_threshold = score_threshold
        self.batch_size = batch_size
        self.delay = delay

    def config(self) -> dict[str, Any]:
        return {"score_threshold": self.score_threshold}

    def check_prompts(self, prompts: Sequence[str]) -> None:
        for p in prompts:
            if p not in LABELS:
                raise PromptError(f"the test backend 'colors' knows the prompts red, green and blue, not {p!r}")

    def encode_exemplars(self, tile: np.ndarray, boxes: np.ndarray, positive: np.ndarray) -> tuple[set[int], ...]:
        """The colour families of the boxes: (those of positive boxes, those of negative ones).
        A box's family is the one with the most object pixels in it."""
        found: tuple[set[int], set[int]] = (set(), set())
        for (x0, y0, x1, y1), pos in zip(boxes, positive):
            crop = tile[int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))].reshape(-1, 3).astype(np.int32)
            top = crop.max(axis=1)
            ch = crop.argmax(axis=1)
            other = np.sort(crop, axis=1)[:, :2].max(axis=1)
            counts = np.bincount(ch[(top >= 192) & (other < 64)], minlength=3)
            if counts.any():
                found[0 if pos else 1].add(int(counts.argmax()))
        return found

    def segment(self, tiles: np.ndarray, prompts: Sequence[str],
                exemplars: dict[str, Any] | None = None) -> list[Detections]:
        """With `exemplars`, a prompt finds its own family (if it is a text prompt) and those
        of its positive boxes, less those of its negative boxes."""
        if self.delay:
            time.sleep(self.delay)
        wanted: dict[int, list[str]] = {}
        for p in prompts:
            given = (exemplars or {}).get(p)
            families = {LABELS.index(p)} if given is None or given.text else set()
            if given is not None:
                families |= {f for pos, _ in given.tokens for f in pos}
                families -= {f for _, neg in given.tokens for f in neg}
            for f in families:
                wanted.setdefault(f, []).append(p)
        return [self._one(tile, wanted) for tile in tiles]

    def _one(self, tile: np.ndarray, wanted: dict[int, list[str]]) -> Detections:
        # decode every object pixel's colour once, for all prompts
        dom = np.maximum(np.maximum(tile[..., 0], tile[..., 1]), tile[..., 2])
        idx = np.flatnonzero(dom >= 192)
        if idx.size == 0:
            return Detections.empty()
        px = tile.reshape(-1, 3)[idx].astype(np.int32)
        codes = (px[:, 0] << 16) | (px[:, 1] << 8) | px[:, 2]
        codes_u, compact = np.unique(codes, return_inverse=True)
        labels = np.zeros(tile.shape[:2], np.int32)
        labels.reshape(-1)[idx] = compact + 1
        names, scores, origins, masks = [], [], [], []
        for k, box in enumerate(ndimage.find_objects(labels)):
            if box is None:
                continue
            rgb = ((codes_u[k] >> 16) & 255, (codes_u[k] >> 8) & 255, codes_u[k] & 255)
            ch = int(np.argmax(rgb))
            low, mid = rgb[(ch + 1) % 3], rgb[(ch + 2) % 3]
            if ch not in wanted or low >= 64 or mid >= 64:
                continue
            score = _score(rgb)
            if score < self.score_threshold:
                continue
            for name in wanted[ch]:
                names.append(name)
                scores.append(score)
                origins.append((box[0].start, box[1].start))
                masks.append(labels[box] == k + 1)
        return Detections(names, scores, origins, masks)


    def segment_objects(self, tile: np.ndarray, prompts: Sequence[ObjectPrompt]) -> list[Detection | None]:
        """One object per prompt: the shape under its positive clicks (the pixels of the click's
        colour family connected to it, so touching objects of one family are one shape), less
        every object (a colour) under a negative click; with a box and no positive click, the
        largest such shape in the box. Its score is that of the object under the first positive
        click (else of the largest object in the shape). Nothing under the clicks: None."""
        if self.delay:
            time.sleep(self.delay)
        tile = np.asarray(tile)
        px = tile.astype(np.int32)
        top, family = px.max(axis=2), px.argmax(axis=2)
        other = np.sort(px, axis=2)[..., :2].max(axis=2)
        solid = (top >= 192) & (other < 64)  # an object's pixel, of the family of its strongest channel
        codes = (px[..., 0] << 16) | (px[..., 1] << 8) | px[..., 2]
        shapes = [ndimage.label(solid & (family == f))[0] for f in range(3)]
        h, w = solid.shape
        out: list[Detection | None] = []
        for p in prompts:
            points = np.asarray(p.points, float).reshape(-1, 2)
            positive = np.asarray(p.positive, bool)
            at = [(int(y), int(x)) for x, y in points]
            inside = [0 <= r < h and 0 <= c < w and solid[r, c] for r, c in at]
            shape = np.zeros((h, w), bool)
            first: int | None = None
            for (r, c), pos, ok in zip(at, positive, inside):
                if pos and ok:
                    shape |= shapes[family[r, c]] == shapes[family[r, c]][r, c]
                    first = int(codes[r, c]) if first is None else first
            if not positive.any() and p.box is not None:
                shape = self._largest_in_box(shapes, p.box)
            for (r, c), pos, ok in zip(at, positive, inside):
                if not pos and ok:
                    shape &= codes != codes[r, c]
            if not shape.any():
                out.append(None)
                continue
            if first is None or not (shape & (codes == first)).any():
                values, counts = np.unique(codes[shape], return_counts=True)
                first = int(values[counts.argmax()])
            rows, cols = np.flatnonzero(shape.any(axis=1)), np.flatnonzero(shape.any(axis=0))
            crop = shape[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
            rgb = ((first >> 16) & 255, (first >> 8) & 255, first & 255)
            out.append(Detection(p.label, _score(rgb), crop, (int(rows[0]), int(cols[0]))))
        return out

    @staticmethod
    def _largest_in_box(shapes: list[np.ndarray], box: tuple[float, float, float, float]) -> np.ndarray:
        """The shape with the most pixels inside `box` (x0, y0, x1, y1), whole."""
        x0, y0, x1, y1 = (int(np.floor(box[0])), int(np.floor(box[1])), int(np.ceil(box[2])), int(np.ceil(box[3])))
        best, most = None, 0
        for f, labels in enumerate(shapes):
            part = labels[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)]
            values, counts = np.unique(part[part > 0], return_counts=True)
            if counts.size and counts.max() > most:
                best, most = (f, int(values[counts.argmax()])), int(counts.max())
        if best is None:
            return np.zeros(shapes[0].shape, bool)
        return shapes[best[0]] == best[1]  # type: ignore[no-any-return]


def _score(rgb: tuple[int, int, int]) -> float:
    """The fixed score of the object of colour `rgb`: a function of its number."""
    ch = int(np.argmax(rgb))
    low, mid = rgb[(ch + 1) % 3], rgb[(ch + 2) % 3]
    number = (rgb[ch] - 192) * 4096 + mid * 64 + low
    return 0.5 + 0.5 * ((number * 37) % 101) / 100


class CountingSegmenter(ColorSegmenter):
    """The colors test backend, counting the tiles it is given (`tiles`) and
    their pixels (`pixels`); with `keep`, keeping a copy of each (`seen`); with
    `fail_after`, failing as a GPU may once it has been given more tiles than
    that; with `max_objects`, returning at most that many objects per tile and
    prompt (the best scores), as a model with that many queries does."""

    def __init__(self, *, keep: bool = False, fail_after: int | None = None, max_objects: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tiles = self.pixels = 0
        self.keep, self.fail_after, self.max_objects = keep, fail_after, max_objects
        self.seen: list[np.ndarray] = []
        self.sizes: list[int] = []  #: the size of each tile given

    def segment(self, tiles: np.ndarray, prompts: Sequence[str], **exemplars: Any) -> list[Detections]:
        self.tiles += len(tiles)
        self.pixels += int(np.prod(tiles.shape[:3]))
        self.sizes += [tiles.shape[1]] * len(tiles)
        if self.fail_after is not None and self.tiles > self.fail_after:
            raise RuntimeError("the device fell over")
        if self.keep:
            self.seen.extend(t.copy() for t in tiles)
        found = super().segment(tiles, prompts, **exemplars)
        return found if self.max_objects is None else [_best(d, self.max_objects) for d in found]


def _best(dets: Detections, n: int) -> Detections:
    """At most `n` detections per label, the best scores (ties: the first found)."""
    keep = np.zeros(len(dets), bool)
    for label in set(dets.labels.tolist()):
        idx = np.flatnonzero(dets.labels == label)
        keep[idx[np.argsort(-dets.scores[idx], kind="stable")[:n]]] = True
    return dets[keep]


def pieces_in_memory(rgb: np.ndarray, plan: TilePlan, segmenter: Any, prompts: Sequence[str]) -> list[Piece]:
    """Run `segmenter` over an in-memory (H, W, 3) image tiled by `plan`: the
    pipeline's read and segment steps without a file."""
    pieces = []
    h, w = rgb.shape[:2]
    for tile in plan:
        win = tile.window
        tile_rgb = np.zeros((win.height, win.width, 3), np.uint8)
        valid = np.zeros((win.height, win.width), bool)
        rh, cw = min(win.height, h - win.row), min(win.width, w - win.col)
        tile_rgb[:rh, :cw] = rgb[win.row:win.row + rh, win.col:win.col + cw]
        valid[:rh, :cw] = True
        for det in segmenter.segment(tile_rgb[None], prompts)[0]:
            piece = to_piece(det, tile, valid)
            if piece is not None:
                pieces.append(piece)
    return pieces
