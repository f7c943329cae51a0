import json

import numpy as np
import pyogrio
import pytest
import rasterio
from affine import Affine
from conftest import one_line_error, run
from rasterio.enums import ColorInterp

import geoseg
from geoseg.core.tiling import Window
from geoseg.errors import EmptyRasterWarning, RasterError, UsageError
from geoseg.io.raster import RasterSource, ReadOptions
from geoseg.testing import ColorSegmenter, CountingSegmenter, disc, draw, write_geotiff


def test_uint8_rgb_reaches_the_segmenter_untouched(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (700, 900, 3), dtype=np.uint8)
    path = write_geotiff(tmp_path / "noise.tif", data)
    rec = CountingSegmenter(keep=True)
    geoseg.segment(path, "red", segmenter=rec, tile_size=512, overlap=64)
    with rasterio.open(path) as src:
        raw = np.moveaxis(src.read(), 0, -1)
    assert np.array_equal(raw, data)
    starts_r, starts_c = [0, 188], [0, 388]
    seen = [(r, c) for r in starts_r for c in starts_c]
    assert len(rec.seen) == len(seen)
    for tile, (r, c) in zip(rec.seen, seen):
        assert tile.dtype == np.uint8 and tile.shape == (512, 512, 3)
        assert np.array_equal(tile, data[r:r + 512, c:c + 512])


def test_nodata_is_honoured_and_empty_tiles_are_skipped(tmp_path):
    rgb = draw(1400, 1400, [disc("red", 1, 300, 300, 50), disc("red", 2, 1100, 1100, 50)])
    rgb[700:, :] = 0  # bottom half nodata, cutting nothing but the second disc away
    rgb[1000:1200, 1000:1200] = draw(200, 200, [disc("red", 2, 100, 100, 50)])
    rgb[1100:, 1000:1200] = 0  # half of disc 2 is nodata
    path = write_geotiff(tmp_path / "nd.tif", rgb, nodata=0)
    rec = CountingSegmenter(keep=True)
    gdf = geoseg.segment(path, "red", segmenter=rec, tile_size=512, overlap=64, simplify=0)  # areas in pixels
    # tiles start at rows 0, 448, 888; the bottom row is all nodata but where disc 2 is
    assert len(rec.seen) == 7
    areas = sorted(gdf["area_m2"].round(2))
    full = np.count_nonzero(disc("red", 1, 300, 300, 50).mask) * 0.25
    assert areas[-1] == pytest.approx(full)
    assert areas[0] < 0.6 * full  # the nodata half of disc 2 is cut away


def test_all_nodata_raster_gives_no_features_and_a_warning(tmp_path):
    path = write_geotiff(tmp_path / "empty.tif", np.zeros((600, 600, 3), np.uint8), nodata=0)
    with pytest.warns(EmptyRasterWarning, match="nodata"):
        gdf = geoseg.segment(path, "red", segmenter=ColorSegmenter(), tile_size=256, overlap=32)
    assert len(gdf) == 0
    assert list(gdf.columns) == ["id", "object_id", "label", "score", "area_m2", "n_tiles", "level", "source",
                                 "geometry"]


def test_alpha_band_and_internal_mask_mark_invalid_pixels(tmp_path):
    rgb = draw(300, 300, [disc("blue", 1, 150, 150, 60)])
    alpha = np.full((300, 300, 1), 255, np.uint8)
    alpha[:, :150] = 0
    path = write_geotiff(tmp_path / "rgba.tif", np.concatenate([rgb, alpha], axis=2),
                         photometric="RGB", alpha="YES")
    with RasterSource(path) as src:
        assert src.bands == (1, 2, 3)
        _, valid = src.read(Window(0, 0, 300, 300))
    assert not valid[:, :150].any() and valid[:, 150:].all()
    masked = tmp_path / "masked.tif"
    write_geotiff(masked, rgb)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(masked, "r+") as dst:
        m = np.full((300, 300), 255, np.uint8)
        m[:150] = 0
        dst.write_mask(m)
    gdf = geoseg.segment(masked, "blue", segmenter=ColorSegmenter(), tile_size=256, overlap=32)
    assert len(gdf) == 1
    assert gdf.geometry.iloc[0].bounds[3] <= 3286000.0 - 150 * 0.5 + 1e-6  # only the lower half is left


def test_uint16_gets_one_scene_wide_stretch(tmp_path):
    rng = np.random.default_rng(1)
    data = (rng.normal(2000, 300, (1500, 1500, 3))).clip(0, 65535).astype(np.uint16)
    data[:, :, 0] += np.linspace(0, 3000, 1500).astype(np.uint16)[None, :]  # a gradient across tiles
    path = write_geotiff(tmp_path / "u16.tif", data)
    with RasterSource(path) as src:
        lo, hi = src.stretch_limits[0]
        assert lo < 2100 < hi  # over the whole scene, not one tile
        a, _ = src.read(Window(0, 448, 512, 512))
        b, _ = src.read(Window(0, 896, 512, 512))
    # the same pixels seen by two tiles have the same values
    assert np.array_equal(a[:, 448:], b[:, :64])
    expected = np.clip((data[0, 896:896 + 64, 0] - lo) * 255 / (hi - lo), 0, 255).round()
    assert np.abs(b[0, :64, 0].astype(int) - expected).max() <= 1


def test_float_nan_is_nodata(tmp_path):
    data = np.ones((300, 300, 1), np.float32)
    data[:100] = np.nan
    path = write_geotiff(tmp_path / "f.tif", data)
    with RasterSource(path) as src:
        rgb, valid = src.read(Window(0, 0, 300, 300))
    assert not valid[:100].any() and valid[100:].all()
    assert (rgb[..., 0] == rgb[..., 1]).all()  # one band is grey


def test_bands(tmp_path):
    four = np.zeros((200, 200, 4), np.uint8)
    four[..., 3] = 200
    four[..., 0] = 50
    path = write_geotiff(tmp_path / "four.tif", four)
    with pytest.raises(UsageError, match=r"four.tif has 4 bands, not tagged red, green and blue \(bands: 1 gray, "
                                         r"2 undefined, 3 undefined, 4 undefined\): pick three with bands='R,G,B'"):
        RasterSource(path)
    with RasterSource(path, ReadOptions(bands=(4, 3, 1))) as src:
        rgb, _ = src.read(Window(0, 0, 200, 200))
    assert (rgb[..., 0] == 200).all() and (rgb[..., 2] == 50).all()
    with pytest.raises(UsageError, match="bands=5 is out of range"):
        RasterSource(path, ReadOptions(bands=(5, 3, 2)))
    two = write_geotiff(tmp_path / "two.tif", four[..., :2])
    with pytest.raises(UsageError, match="2 bands"):
        RasterSource(two)


RED, GREEN, BLUE, NIR = (ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.undefined)


def tagged(path, rgb, order, tags):
    """A 4-band GeoTIFF holding `rgb`'s channels and a NIR band in `order` (0 R, 1 G, 2 B, 3 NIR), colour-tagged."""
    data = np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])[..., list(order)]
    with rasterio.open(path, "w", driver="GTiff", height=data.shape[0], width=data.shape[1], count=4, dtype="uint8",
                       crs="EPSG:32617", transform=Affine(0.5, 0, 404000.0, 0, -0.5, 3286000.0),
                       photometric="MINISBLACK") as dst:
        dst.write(np.moveaxis(data, -1, 0))
        dst.colorinterp = tags
    return path


def discs(size=300):
    """Red, green and blue discs on grey: each label found only where the bands are read as RGB."""
    return draw(size, size, [disc("red", 1, 75, 75, 40), disc("green", 2, 75, 225, 40), disc("blue", 3, 225, 150, 40)])


def test_default_bands_are_the_ones_tagged_red_green_blue(tmp_path):
    rgb = discs()
    layouts = {"rgbn": ((0, 1, 2, 3), [RED, GREEN, BLUE, NIR], (1, 2, 3)),  # NAIP
               "bgrn": ((2, 1, 0, 3), [BLUE, GREEN, RED, NIR], (3, 2, 1)),
               "nrgb": ((3, 0, 1, 2), [NIR, RED, GREEN, BLUE], (2, 3, 4))}
    for name, (order, tags, bands) in layouts.items():
        path = tagged(tmp_path / f"{name}.tif", rgb, order, tags)
        with RasterSource(path) as src:
            assert src.bands == bands and src.colours == tuple(t.name for t in tags)
            assert np.array_equal(src.read(Window(0, 0, 300, 300))[0], rgb), name


def test_segment_and_info_follow_the_colour_tags_not_the_positions(tmp_path):
    path = tagged(tmp_path / "bgrn.tif", discs(), (2, 1, 0, 3), [BLUE, GREEN, RED, NIR])
    out = tmp_path / "out.gpkg"
    r = run("segment", path, "-p", "red", "-p", "blue", "-o", out, "--backend", "colors", "--tile-size", "256",
            "--overlap", "32", "-q")
    assert r.exit_code == 0, r.output
    gdf = pyogrio.read_dataframe(out)
    assert sorted(gdf["label"]) == ["blue", "red"]
    for lab, (col, row) in (("red", (75, 75)), ("blue", (150, 225))):  # each disc's centre, in pixels
        g = gdf.geometry[gdf["label"] == lab].iloc[0]
        assert (g.centroid.x - 404000, 3286000 - g.centroid.y) == pytest.approx((col / 2, row / 2), abs=0.3)
    r = run("info", path)
    assert r.exit_code == 0, r.output
    assert "bands [3, 2, 1]" in r.output and "colours    1 blue, 2 green, 3 red, 4 undefined\n" in r.output
    d = json.loads(run("info", path, "--json").stdout)["rasters"][0]
    assert d["bands"] == [3, 2, 1] and d["colours"] == ["blue", "green", "red", "undefined"]


def test_untagged_bands_are_described_and_refused_with_their_tags(tmp_path):
    path = tagged(tmp_path / "four.tif", discs(), (0, 1, 2, 3), [ColorInterp.gray, NIR, NIR, NIR])
    r = run("info", path)  # described, not refused
    assert r.exit_code == 0, r.output
    assert "bands none chosen" in r.output
    assert "colours    1 gray, 2 undefined, 3 undefined, 4 undefined: to segment, pick three with --bands R,G,B" \
        in r.output
    d = json.loads(run("info", path, "--json").stdout)["rasters"][0]
    assert d["bands"] is None and d["colours"] == ["gray", "undefined", "undefined", "undefined"]
    assert d["tiles"] == 1 and d["width"] == 300
    line = one_line_error(run("segment", path, "-p", "red", "-o", tmp_path / "out.gpkg", "--backend", "colors"))
    assert line.endswith("four.tif has 4 bands, not tagged red, green and blue (bands: 1 gray, 2 undefined, "
                         "3 undefined, 4 undefined): pick three with --bands R,G,B or one with --bands N")
    assert not (tmp_path / "out.gpkg").exists()


def test_resolution_resamples_on_read(tmp_path):
    rgb = draw(800, 800, [disc("red", 1, 400, 400, 100)])
    path = write_geotiff(tmp_path / "fine.tif", rgb)  # 0.5 m pixels
    fine = geoseg.segment(path, "red", segmenter=ColorSegmenter(), tile_size=512, overlap=64)
    with RasterSource(path, ReadOptions(resolution=1.0)) as src:
        assert (src.height, src.width) == (400, 400)
    coarse = geoseg.segment(path, "red", segmenter=ColorSegmenter(), tile_size=256, overlap=32, resolution=1.0)
    # bilinear blends the rim with the background, so the coarse disc loses its edge pixels
    assert coarse["area_m2"].sum() == pytest.approx(fine["area_m2"].sum(), rel=0.05)
    assert coarse.geometry.iloc[0].centroid.distance(fine.geometry.iloc[0].centroid) < 1.0


def test_unreferenced_raster_is_refused_unless_pixel_coords(tmp_path):
    path = tmp_path / "plain.tif"
    with rasterio.open(path, "w", driver="GTiff", width=300, height=200, count=3, dtype="uint8") as dst:
        dst.write(np.moveaxis(draw(200, 300, [disc("red", 1, 100, 150, 30)]), -1, 0))
    with pytest.raises(RasterError, match="no CRS.*pixel_coords=True"):
        geoseg.segment(path, "red", segmenter=ColorSegmenter())
    gdf = geoseg.segment(path, "red", segmenter=ColorSegmenter(), pixel_coords=True)
    assert gdf.crs is None
    x, y = gdf.geometry.iloc[0].centroid.coords[0]
    assert (x, y) == pytest.approx((150, 100), abs=0.5)


def test_rotated_geotransform_places_polygons_through_the_affine(tmp_path):
    rgb = draw(400, 400, [disc("green", 1, 100, 300, 40)])
    t = Affine.translation(500000, 4000000) @ Affine.rotation(30) @ Affine.scale(2, -2)
    path = write_geotiff(tmp_path / "rot.tif", rgb, transform=t)
    gdf = geoseg.segment(path, "green", segmenter=ColorSegmenter(), tile_size=256, overlap=32, simplify=0)
    assert len(gdf) == 1
    cx, cy = t @ (300, 100)
    c = gdf.geometry.iloc[0].centroid
    assert (c.x, c.y) == pytest.approx((cx, cy), abs=0.5)
    assert gdf.geometry.iloc[0].area == pytest.approx(np.count_nonzero(disc("green", 1, 100, 300, 40).mask) * 4)
