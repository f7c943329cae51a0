"""Object prompts: clicks and boxes that point at one particular object.

Text and exemplars find every object of a kind; an object prompt asks for the
one object under a click (SAM's Promptable Visual Segmentation). A segmenter
takes them with `segment_objects(tile, prompts)`: one `ObjectPrompt` per
object, in the pixels of `tile`, and back one `Detection` per prompt (None
where it finds nothing). Pure: no file, no model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from geoseg.core.segmenter import Backend, Detection
from geoseg.errors import UsageError


@dataclass(frozen=True)
class ObjectPrompt:
    """One object's prompts in a tile's pixels.

    Attributes:
        points: (K, 2) float x, y (column, row) of the clicks, pixel centres at .5.
        positive: (K,) bool: a click on the object (True) or on what is not it (False).
        box: x0, y0, x1, y1 around the object, or None.
        label: written to the output.
    """

    points: np.ndarray
    positive: np.ndarray
    box: tuple[float, float, float, float] | None
    label: str = "object"

    def moved(self, dx: float, dy: float, scale: float = 1.0) -> ObjectPrompt:
        """The same prompts in a window whose origin is (dx, dy) and whose pixels are `scale` times larger."""
        points = (np.asarray(self.points, float).reshape(-1, 2) - (dx, dy)) / scale
        box = None if self.box is None else (
            (self.box[0] - dx) / scale, (self.box[1] - dy) / scale, (self.box[2] - dx) / scale,
            (self.box[3] - dy) / scale)
        return ObjectPrompt(points, np.asarray(self.positive, bool), box, self.label)


def segment_objects(segmenter: Any, tile: np.ndarray, prompts: Sequence[ObjectPrompt]) -> list[Detection | None]:
    """`segmenter.segment_objects` checked: one detection (or None) per prompt, its mask inside the tile."""
    seg = segmenter.segmenter if isinstance(segmenter, Backend) else segmenter
    found = list(seg.segment_objects(tile, list(prompts)))
    if len(found) != len(prompts):
        raise UsageError(f"{type(seg).__name__}.segment_objects returned {len(found)} results for "
                         f"{len(prompts)} object prompts: it must return one (or None) per prompt")
    return found
