"""geoseg.stats: cover is the union of the objects, not the sum of their areas."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import shapely
from shapely import box

from geoseg import stats
from geoseg.testing import draw, rectangle, write_geotiff

X0, Y0 = 404000.0, 3286000.0  # UTM 17N, write_geotiff's default grid (0.5 m pixels)


def sq(x, y, w=10.0):
    return box(X0 + x, Y0 - y - w, X0 + x + w, Y0 - y)


@pytest.fixture
def overlapping(tmp_path):
    """Two identical 10 m trees, a third tree overlapping the first by half, a house over all of them,
    written to a GeoPackage in lon/lat and read back."""
    gdf = gpd.GeoDataFrame({"label": ["tree", "tree", "tree", "house"]},
                           geometry=[sq(0, 0), sq(0, 0), sq(5, 0), sq(0, 0, 20)], crs="EPSG:32617")
    path = tmp_path / "objects.gpkg"
    pyogrio.write_dataframe(gdf.to_crs(4326), path)
    return pyogrio.read_dataframe(path)


def test_cover_is_the_union_per_label_and_overall(overlapping, tmp_path):
    raster = write_geotiff(tmp_path / "scene.tif", draw(100, 100, [rectangle("red", 1, 0, 0, 4, 4)]))  # 50 m x 50 m
    table = stats.summarize(overlapping, raster=raster)
    tree, house, every = table.loc["tree"], table.loc["house"], table.loc["all"]
    # trees: 100 + 100 + 100 m² of objects, but only 150 m² of ground (the twins are one square)
    assert tree["count"] == 3 and tree["area_m2_sum"] == pytest.approx(300, rel=1e-4)
    assert tree["cover_m2"] == pytest.approx(150, rel=1e-4)
    assert tree["cover_pct"] == pytest.approx(100 * 150 / 2500, rel=1e-4)
    assert house["cover_pct"] == pytest.approx(100 * 400 / 2500, rel=1e-4)
    # overall the house holds every tree: 400 m², not 700
    assert every["cover_m2"] == pytest.approx(400, rel=1e-4) and every["area_m2_sum"] == pytest.approx(700, rel=1e-4)
    assert every["per_km2"] == pytest.approx(4 / 0.0025)


def test_cover_never_exceeds_the_area_holding_the_objects():
    # the same square twenty times over the whole surveyed square: 100 %, not 2000 %
    gdf = gpd.GeoDataFrame({"label": ["a"] * 20}, geometry=[sq(0, 0)] * 20, crs="EPSG:32617")
    table = stats.summarize(gdf, area_km2=100 / 1e6)
    assert table.loc["all", "cover_pct"] == pytest.approx(100)
    assert table.loc["all", "area_m2_sum"] == pytest.approx(2000)


def test_union_area_only_unions_overlapping_objects(monkeypatch):
    xs = np.arange(2000) * 20.0
    geoms = shapely.box(xs, 0, xs + 10, 10)  # 2000 apart squares of 100 m²
    geoms = np.concatenate([geoms, [box(5, 0, 15, 10), None, shapely.Polygon()]])  # one overlaps the first by half
    unions = []
    union_all = shapely.union_all

    def spy(parts, *args, **kwargs):  # the real union, recording what it was given
        unions.append(len(parts))
        return union_all(parts, *args, **kwargs)

    monkeypatch.setattr(shapely, "union_all", spy)
    assert stats.union_area(geoms) == pytest.approx(2000 * 100 + 50)
    assert unions == [2]  # the first square and the one overlapping it; the 1999 others are summed
    monkeypatch.undo()
    bowtie = shapely.Polygon([(0, 0), (10, 10), (10, 0), (0, 10)])  # invalid: repaired, two triangles of 25 m²
    assert stats.union_area([bowtie, bowtie]) == pytest.approx(50)
    assert stats.union_area([]) == 0.0


def test_empty_frame_has_an_all_row():
    table = stats.summarize(gpd.GeoDataFrame({"label": []}, geometry=[], crs="EPSG:32617"), area_km2=1.0)
    assert table.loc["all", "count"] == 0 and table.loc["all", "cover_pct"] == 0
