"""The explorer: look at a source on a live map in Jupyter, prompt, adjust, review and keep.

`explore(source, ...)` returns an `Explorer` widget; see docs/explore.md. Needs the
`interactive` extra (anywidget, rio-tiler).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from geoseg.explorer.widget import Explorer


def explore(source: Any, *, state: str | Path | None = None, backend: Any = "sam3", threshold: float = 0.5,
            **options: Any) -> Explorer:
    """A map of `source` (anything `geoseg.segment` takes: a GeoTIFF, a folder, shown as a mosaic, a COG URL,
    a STAC item, a tile service with `bbox`) with a prompt box, drawing modes, a score slider and review.

    Args:
        state: a GeoPackage where the explorer keeps its results, decisions and drawings, so that they
            come back after a kernel restart (created on the first change; an existing file that is
            not an explorer's is refused).
        backend: the segmenter: a backend name ("sam3", "colors", a student) or a `Segmenter` object.
        threshold: the score slider's start (objects are kept down to `floor`, 0.05, so the slider
            never runs the model again).
        options: `geoseg.segment`'s keywords (tile_size, overlap, bands, resolution, stretch, ...);
            the others go to the backend (model=..., device=...). `basemap=` a tile URL (None: a
            plain background), `credit=` its attribution.
    """
    return Explorer(source, state=state, backend=backend, threshold=threshold, **options)


__all__ = ["Explorer", "explore"]
