"""The shipped sample data: the generated seam scene and the real NEON image."""

from pathlib import Path

import numpy as np
import pytest
import rasterio
from shapely.geometry import Polygon

import geoseg
import geoseg.run.inspection
from geoseg.core.tiling import Window
from geoseg.io.raster import RasterSource
from geoseg.testing import ColorSegmenter, CountingSegmenter

SAMPLES = Path(__file__).resolve().parents[1] / "sample_data"


def test_seam_scene_tiled_equals_untiled():
    scene = SAMPLES / "seam_scene.tif"
    prompts = ["red", "green", "blue"]
    tiled = geoseg.segment(scene, prompts, segmenter=ColorSegmenter())  # 1008 / 128: 3 x 3 tiles
    whole = geoseg.segment(scene, prompts, segmenter=ColorSegmenter(), tile_size=2048, overlap=0)
    assert len(tiled) == len(whole) > 100 and (tiled["n_tiles"] > 1).sum() > 10
    for label in prompts:
        a, b = tiled[tiled.label == label], whole[whole.label == label]
        pairs = b.sindex.query(a.geometry, predicate="intersects")
        best = {}
        for i, j in zip(*pairs):
            inter = a.geometry.iloc[i].intersection(b.geometry.iloc[j]).area
            iou = inter / a.geometry.iloc[i].union(b.geometry.iloc[j]).area
            best[i] = max(best.get(i, 0), iou)
        assert len(best) == len(a) and min(best.values()) >= 0.98
    ring = tiled[(tiled.label == "green") & (tiled.area_m2 == tiled[tiled.label == "green"].area_m2.max())]
    main = max(ring.geometry.iloc[0].geoms, key=lambda g: g.area)
    hole = max(Polygon(r).area for r in main.interiors)  # the ring's hole, 300 px = 150 m across
    assert ring["n_tiles"].iloc[0] == 9 and hole > 0.8 * np.pi * 150**2


def test_neon_sample_pixels_reach_the_segmenter_unchanged_and_nodata_is_masked():
    path = SAMPLES / "OSBS_029.tif"
    with rasterio.open(path) as src:
        raw = np.moveaxis(src.read(), 0, -1)
        assert src.crs.to_epsg() == 32617 and src.nodata == 255
    with RasterSource(path) as src:
        rgb, valid = src.read(Window(0, 0, 1008, 1008))
    inside = rgb[:400, :400]
    white = (raw == 255).all(axis=2)
    assert np.array_equal(inside[~white], raw[~white]) and not valid[:400, :400][white].any()
    assert not valid[400:, :].any() and not valid[:, 400:].any()  # the padding


    rec = CountingSegmenter(keep=True)
    geoseg.segment(path, "red", segmenter=rec)
    assert len(rec.seen) == 1 and rec.seen[0].shape == (1008, 1008, 3) and rec.seen[0].dtype == np.uint8
    seen = rec.seen[0]
    # what the segmenter gets: the file's pixels as they are, nodata and padding zeroed
    assert np.array_equal(seen[:400, :400][~white], raw[~white])
    assert not seen[:400, :400][white].any() and not seen[400:].any() and not seen[:, 400:].any()
    plan = geoseg.run.inspection.describe(path)
    assert plan["tiles"] == 1 and plan["area_km2"] == pytest.approx(0.0016)
