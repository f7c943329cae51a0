"""Deterministic test segmenters (test backends, not models)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from geoseg.errors import PromptError
from geoseg.merge import Piece, to_piece
from geoseg.segmenter import Detection
from geoseg.testing.scenes import LABELS
from geoseg.tiling import TilePlan


class ColorSegmenter:
    """Finds the objects of `geoseg.testing` scenes: what a perfect model sees.

    Prompts are "red", "green" or "blue". Each colour of that family is one
    object; its mask is every pixel of that colour inside the tile (so objects
    cut by the tile edge come back cut, as a real model would see them). The
    score is a fixed function of the object's colour. Registered as the test
    backend "colors".
    """

    name = "colors"

    def __init__(self, *, score_threshold: float = 0.0, batch_size: int = 4) -> None:
        self.score_threshold = score_threshold
        self.batch_size = batch_size

    def check_prompts(self, prompts: Sequence[str]) -> None:
        for p in prompts:
            if p not in LABELS:
                raise PromptError(f"the test backend 'colors' knows the prompts red, green and blue, not {p!r}")

    def segment(self, tiles: np.ndarray, prompts: Sequence[str]) -> list[list[Detection]]:
        return [self._one(tile, prompts) for tile in tiles]

    def _one(self, tile: np.ndarray, prompts: Sequence[str]) -> list[Detection]:
        rgb = tile.astype(np.int32)
        dominant = rgb.max(axis=2) >= 192
        dets: list[Detection] = []
        for prompt in prompts:
            ch = LABELS.index(prompt)
            low, mid = rgb[..., (ch + 1) % 3], rgb[..., (ch + 2) % 3]
            obj = dominant & (rgb[..., ch] >= 192) & (low < 64) & (mid < 64)
            if not obj.any():
                continue
            code = (rgb[..., ch] - 192) * 4096 + mid * 64 + low
            numbers, compact = np.unique(code[obj], return_inverse=True)
            labels = np.zeros(obj.shape, np.int32)
            labels[obj] = compact + 1
            for k, box in enumerate(ndimage.find_objects(labels)):
                if box is None:
                    continue
                score = 0.5 + 0.5 * ((int(numbers[k]) * 37) % 101) / 100
                if score < self.score_threshold:
                    continue
                mask = labels[box] == k + 1
                dets.append(Detection(prompt, score, mask, (box[0].start, box[1].start)))
        return dets


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
