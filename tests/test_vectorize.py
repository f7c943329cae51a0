from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
from affine import Affine
from pyproj import CRS
from rasterio.features import rasterize

import geoseg
from geoseg.core.merge import Instance
from geoseg.core.vectorize import parse_crs, polygon
from geoseg.errors import UsageError
from geoseg.testing import ColorSegmenter, disc, draw, make_scene, ring, write_geotiff


def test_polygon_follows_pixel_edges_and_keeps_holes():
    obj = ring("red", 1, 50, 50, 40, 15)
    inst = Instance("red", 0.9, 1, obj.row, obj.col, obj.mask)
    geom = polygon(inst, Affine(1, 0, 0, 0, 1, 0))
    assert geom.is_valid and geom.area == obj.mask.sum()
    assert len(shapely.get_interior_ring(shapely.get_parts(geom)[0], 0).coords) > 4
    assert geom.bounds == (obj.col + obj.mask.any(0).argmax(), obj.row + obj.mask.any(1).argmax(),
                           obj.col + obj.mask.shape[1] - obj.mask[:, ::-1].any(0).argmax(),
                           obj.row + obj.mask.shape[0] - obj.mask[::-1].any(1).argmax())


def test_diagonal_pixels_give_a_valid_geometry():
    mask = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 1]], bool)
    geom = polygon(Instance("x", 1, 1, 0, 0, mask), Affine.identity())
    assert geom.is_valid and geom.area == 4


def test_reprojection_densifies_and_keeps_area(tmp_path):
    rgb = draw(1000, 1000, [disc("red", 1, 500, 500, 400)])
    path = write_geotiff(tmp_path / "big.tif", rgb, transform=Affine(10, 0, 400000, 0, -10, 3300000))
    kw = dict(segmenter=ColorSegmenter(), tile_size=512, overlap=64, simplify=0)  # the pixels' own area
    native = geoseg.segment(path, "red", **kw)
    wgs = geoseg.segment(path, "red", dst_crs="EPSG:4326", **kw)
    laea = "+proj=laea +lat_0=30 +lon_0=-81 +datum=WGS84 +units=m"
    custom = geoseg.segment(path, "red", dst_crs=laea, **kw)
    assert wgs.crs.equals(CRS.from_epsg(4326)) and custom.crs.equals(CRS.from_user_input(laea))
    truth = np.count_nonzero(disc("red", 1, 500, 500, 400).mask) * 100
    for gdf in (native, wgs, custom):
        assert gdf["area_m2"].iloc[0] == pytest.approx(truth, rel=1e-3)
    assert custom.geometry.area.iloc[0] == pytest.approx(truth, rel=2e-3)  # LAEA is equal-area
    n_native = shapely.get_num_coordinates(native.geometry.iloc[0])
    assert shapely.get_num_coordinates(wgs.geometry.iloc[0]) > n_native  # densified before reprojecting


def test_geographic_raster_gets_area_in_square_metres(tmp_path):
    rgb = draw(400, 400, [disc("blue", 1, 200, 200, 100)])
    deg = 1e-5  # about 1.1 m at the equator
    path = write_geotiff(tmp_path / "geo.tif", rgb, crs="EPSG:4326", transform=Affine(deg, 0, 10.0, 0, -deg, 0.002))
    gdf = geoseg.segment(path, "blue", segmenter=ColorSegmenter(), tile_size=256, overlap=32)
    geod_area = abs(gpd.GeoSeries(gdf.geometry).to_crs("EPSG:6933").area.iloc[0])
    assert gdf["area_m2"].iloc[0] == pytest.approx(geod_area, rel=2e-3)
    assert 30000 < gdf["area_m2"].iloc[0] < 40000


def test_simplify_and_min_area(tmp_path):
    rgb = draw(600, 600, [disc("red", 1, 300, 300, 200), disc("red", 2, 50, 50, 5)])
    path = write_geotiff(tmp_path / "s.tif", rgb)
    raw = geoseg.segment(path, "red", segmenter=ColorSegmenter(), tile_size=512, overlap=64, simplify=0)
    simple = geoseg.segment(path, "red", segmenter=ColorSegmenter(), tile_size=512, overlap=64, simplify=1.0,
                            min_area=50)
    assert len(raw) == 2 and len(simple) == 1
    big_raw = raw.geometry.iloc[raw["area_m2"].argmax()]
    assert shapely.get_num_coordinates(simple.geometry.iloc[0]) < shapely.get_num_coordinates(big_raw) / 2
    assert simple.geometry.is_valid.all()
    assert simple.geometry.iloc[0].area == pytest.approx(big_raw.area, rel=0.01)


def test_unknown_crs():
    with pytest.raises(UsageError, match="dst_crs='EPSG:99999999': unknown CRS"):
        parse_crs("EPSG:99999999")


SEAMS = Path(__file__).resolve().parents[1] / "sample_data" / "seam_scene.tif"


def burnt(geoms, shape):
    """Polygons in pixel units burnt at pixel centres, one id each (later ones on top)."""
    return rasterize([(g, k) for k, g in enumerate(geoms, 1)], out_shape=shape, dtype="int32")


def test_by_default_polygons_lose_their_staircases_and_burn_back_to_the_same_pixels():
    kw = dict(segmenter=ColorSegmenter(), pixel_coords=True, cpu_workers=0)
    raw = geoseg.segment(SEAMS, ["red", "green", "blue"], simplify=0, **kw)
    simple = geoseg.segment(SEAMS, ["red", "green", "blue"], **kw)
    assert list(simple["label"]) == list(raw["label"]) and simple.geometry.is_valid.all()
    before, after = list(raw.geometry), list(simple.geometry)  # in pixels (x a column, y a row)
    n_before, n_after = shapely.get_num_coordinates(before).sum(), shapely.get_num_coordinates(after).sum()
    assert n_after * 3 <= n_before  # 10,933 -> 3,446 vertices
    a, b = burnt(before, (2048, 2048)), burnt(after, (2048, 2048))
    assert (a == b).sum() / ((a > 0) | (b > 0)).sum() >= 0.99  # 0.999 here
    for k in range(1, len(raw) + 1):  # every object near its pixels: within the tolerance and half a pixel, about
        iou = ((a == k) & (b == k)).sum() / ((a == k) | (b == k)).sum()
        assert iou >= 0.95
        assert shapely.hausdorff_distance(before[k - 1], after[k - 1]) <= 1.25
    assert all(g.area == (a == k).sum() for k, g in enumerate(before, 1))  # --simplify 0: the pixels as they are


def test_simplified_objects_across_seams_are_the_untiled_ones_and_neighbours_stay_apart(tmp_path):
    scene = make_scene(tmp_path / "scene.tif", size=1200, seed=3)
    kw = dict(segmenter=ColorSegmenter(), cpu_workers=0)
    tiled = geoseg.segment(scene, ["red", "green", "blue"], tile_size=256, overlap=32, **kw)
    whole = geoseg.segment(scene, ["red", "green", "blue"], tile_size=1200, overlap=0, **kw)
    raw = geoseg.segment(scene, ["red", "green", "blue"], tile_size=256, overlap=32, simplify=0, **kw)
    assert (tiled["n_tiles"] > 1).sum() >= 20
    tree = shapely.STRtree(whole.geometry.values)
    for g in tiled.geometry.values:  # objects merged across seams are simplified as the untiled ones: exactly
        [k] = tree.query(g.representative_point(), predicate="within")
        assert g.equals_exact(whole.geometry.values[k], tolerance=0)
    # objects touching each other (across seams too) overlap only along their shared edge, by a sliver
    geoms, simple = raw.geometry.values, tiled.geometry.values
    a, b = shapely.STRtree(geoms).query(geoms, predicate="touches")
    pairs = [(i, j) for i, j in zip(a.tolist(), b.tolist()) if i < j]
    assert len(pairs) >= 5
    px = 0.5  # metres
    for i, j in pairs:
        shared = geoms[i].intersection(geoms[j])
        overlap = simple[i].intersection(simple[j])
        assert overlap.difference(shared.buffer(1.25 * px)).area < 1e-9  # near the shared edge only
        assert overlap.area <= 0.1 * px * shared.length  # 0.01-0.04 px wide on average in the scenes measured


def test_min_area_and_the_area_keep_or_drop_the_strips_of_an_object_together():
    """Two strips of one object (10 x 6 px and 10 x 4 px, one above the other) and a whole object of
    10 x 7 px: --min-area of 80 px keeps both strips (100 px together, though each is smaller) and
    drops the whole one; an area holding the centre of the whole object keeps both strips."""
    from geoseg.core.vectorize import centroids, finish, to_frame

    t = Affine(1, 0, 500000, 0, -1, 5000000)  # 1 m pixels, UTM
    top, bottom = shapely.box(0, 0, 10, 6), shapely.box(0, 6, 10, 10)
    centre = shapely.get_coordinates(shapely.union(top, bottom).centroid)[0]  # the merge gives each strip the whole's
    insts = [Instance("a", 0.9, 4, 0, 0, None, outline=top, part=0, parts=2, centre=tuple(centre)),
             Instance("a", 0.9, 4, 6, 0, None, outline=bottom, part=1, parts=2, centre=tuple(centre)),
             Instance("b", 0.8, 1, 20, 0, np.ones((7, 10), bool))]
    gdf = finish(to_frame(insts, t, CRS.from_epsg(32633), source="x", simplify=0), t, min_area=80)
    assert list(gdf["label"]) == ["a", "a"] and list(gdf["part"]) == [0, 1]
    assert sorted(gdf["area_m2"].round(6)) == [40, 60]
    centre = centroids(insts, t)
    assert centre[0].equals(centre[1]) and (centre[0].x, centre[0].y) == (500005, 5000000 - 5)
