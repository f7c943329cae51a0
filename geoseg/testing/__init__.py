"""Helpers shared by tests, notebooks and benchmarks: scenes with known truth
and deterministic test segmenters. Not a model: nothing here learns."""

from geoseg.testing.scenes import (
    SceneObject,
    color_of,
    disc,
    draw,
    make_scene,
    rectangle,
    ring,
    write_geotiff,
)
from geoseg.testing.segmenters import ColorSegmenter, CountingSegmenter, pieces_in_memory

__all__ = [
    "ColorSegmenter",
    "CountingSegmenter",
    "SceneObject",
    "build_tiny_sam3",
    "color_of",
    "disc",
    "draw",
    "make_scene",
    "pieces_in_memory",
    "rectangle",
    "ring",
    "write_geotiff",
]


def build_tiny_sam3(path, **kwargs):  # type: ignore[no-untyped-def]
    """Build and save a tiny random SAM 3 (see geoseg.testing.sam3); imports torch."""
    from geoseg.testing.sam3 import build_tiny_sam3 as build

    return build(path, **kwargs)
