"""geoseg.plot, geoseg.stats and the extra raster inputs (open dataset, DataArray)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import shapely

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

import geoseg  # noqa: E402
from geoseg import stats  # noqa: E402
from geoseg.core.tiling import Window  # noqa: E402
from geoseg.io.raster import RasterSource  # noqa: E402

SCENE = "sample_data/seam_scene.tif"
PROMPTS = ["red", "green", "blue"]


@pytest.fixture(scope="module")
def gdf():
    return geoseg.segment(SCENE, PROMPTS, segmenter="colors")


def test_import_geoseg_stays_light():
    code = "import sys, geoseg; assert 'matplotlib' not in sys.modules and 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_plot_by_label_and_by_score_in_map_units(gdf):
    import matplotlib.pyplot as plt

    ax = geoseg.plot(SCENE, gdf)
    assert ax.get_xlim() == pytest.approx((404000, 405024)) and ax.get_ylim() == pytest.approx((3284976, 3286000))
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["blue (34)", "green (36)", "red (38)"]
    assert any("m" in str(getattr(a, "txt_label", "")) or hasattr(a, "size_bar") for a in ax.artists)
    assert "metre" in ax.get_xlabel()
    ax2 = geoseg.plot(SCENE, gdf.to_crs(4326), column="score")  # reprojected back to the raster's CRS
    assert ax2.get_xlim() == pytest.approx(ax.get_xlim())
    assert len(ax2.figure.axes) == 2  # the colour bar
    plt.close("all")
    import geoseg.analysis.plot as module

    assert callable(geoseg.plot) and callable(module.explore)


def test_scale_bar_length_is_round():
    from geoseg.analysis.plot import _nice_length

    assert _nice_length(1024) == 200 and _nice_length(40) == 5 and _nice_length(0.9) == pytest.approx(0.1)


def test_stats(gdf):
    m = stats.measure(gdf)
    assert np.allclose(m["area_m2"], gdf["area_m2"])
    assert (m["perimeter_m"] > 0).all() and (m["compactness"] <= 1.01).all()
    table = stats.summarize(gdf, raster=SCENE)
    assert table.loc["all", "count"] == len(gdf)
    assert table.loc["red", "count"] == (gdf.label == "red").sum()
    km2 = 1024 * 1024 / 1e6
    assert table.loc["all", "per_km2"] == pytest.approx(len(gdf) / km2)
    # the union: simplified neighbours may overlap by a sliver (in UTM, the scene's CRS)
    cover = shapely.union_all(gdf.geometry.values).area
    assert cover <= gdf.area_m2.sum() and cover == pytest.approx(gdf.area_m2.sum(), rel=1e-4)
    assert table.loc["all", "cover_pct"] == pytest.approx(100 * cover / (km2 * 1e6))


def test_open_dataset_is_read_and_left_open(gdf):
    import rasterio

    with rasterio.open(SCENE) as ds:
        got = geoseg.segment(ds, PROMPTS, segmenter="colors")
        assert not ds.closed
    assert got.geometry.equals(gdf.geometry) and got["source"].iloc[0] == "seam_scene.tif"


def recording_chunks(da):
    """`da` (dask-backed) with every chunk computation recorded as its (band, y, x) chunk location."""
    computed = []

    def record(block, block_info=None):
        if block_info is not None:  # None: dask probing the function, no chunk computed
            computed.append(tuple(block_info[None]["chunk-location"]))
        return block

    data = da.data.map_blocks(record, dtype=da.dtype, meta=np.array((), da.dtype))
    return da.copy(data=data), computed


def chunks_of(window, size=256, n=8):
    """The (band, y, x) chunk locations of 256 px chunks that a tile window touches."""
    rows = range(max(window.row, 0) // size, min((window.row_stop - 1) // size, n - 1) + 1)
    cols = range(max(window.col, 0) // size, min((window.col_stop - 1) // size, n - 1) + 1)
    return {(0, i, j) for i in rows for j in cols}


def test_dask_dataarray_is_read_lazily_window_by_window(gdf):
    rioxarray = pytest.importorskip("rioxarray")
    pytest.importorskip("dask")
    from geoseg.core.tiling import plan_tiles
    from geoseg.testing import ColorSegmenter

    da, computed = recording_chunks(rioxarray.open_rasterio(SCENE, chunks={"x": 256, "y": 256}))
    assert da.data.numblocks == (1, 8, 8)
    with RasterSource(da) as src:
        assert computed == []  # opening reads nothing
        src.read(Window(300, 600, 200, 300))  # rows 300-500, cols 600-900
        assert set(computed) == {(0, 1, 2), (0, 1, 3)}  # only the chunks the window touches
        assert len(computed) == 2  # once each: the pixels and their mask come from one computation

    class FirstCall(ColorSegmenter):
        seen = None

        def segment(self, tiles, prompts):
            if self.seen is None:
                self.seen = set(computed)
            return super().segment(tiles, prompts)

    computed.clear()
    seg = FirstCall(batch_size=1)
    got = geoseg.segment(da, PROMPTS, segmenter=seg)
    tiles = list(plan_tiles(2048, 2048))  # the default 1008 px tiles: 3 x 3
    # at the first tile's segmentation, only the chunks of that tile and of the
    # tiles read ahead (2 x batch_size) were computed: never the whole array
    assert chunks_of(tiles[0].window) <= seg.seen <= set().union(*(chunks_of(t.window) for t in tiles[:3]))
    assert len(seg.seen) < 64 and len(set(computed)) == 64
    assert got.geometry.equals(gdf.geometry)
    with RasterSource(SCENE) as a, RasterSource(da) as b:
        w = Window(-10, 900, 300, 400)  # reaches past the edge
        for x, y in zip(a.read(w), b.read(w)):
            assert np.array_equal(x, y)


def test_float_dataarray_with_nodata_is_stretched_scene_wide():
    rioxarray = pytest.importorskip("rioxarray")
    da = rioxarray.open_rasterio(SCENE).astype("float32") * 10
    da = da.where(da.x > da.x[100], -9999.0).rio.write_nodata(-9999.0)
    with RasterSource(da) as src:
        assert src.stretch_limits is not None and src.nodata == -9999.0
        rgb, valid = src.read(Window(0, 0, 512, 512))
        assert not valid[:, :101].any() and valid[:, 101:].all() and rgb.dtype == np.uint8
    with pytest.raises(geoseg.UsageError, match="rio.reproject"):
        RasterSource(da, geoseg.io.raster.ReadOptions(resolution=1.0))


def test_without_matplotlib_one_line_names_the_install():
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "import geoseg\n"
            "try:\n"
            f"    geoseg.plot({SCENE!r})\n"
            "except geoseg.UsageError as e:\n"
            "    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert "needs matplotlib" in out and "pip install matplotlib" in out and '".[plot]"' in out


def test_lazy_names_are_listed_by_dir():
    assert {"plot", "Segmentation", "stats", "segment"} <= set(dir(geoseg))
    code = "import geoseg; assert 'Segmentation' in dir(geoseg) and 'plot' in dir(geoseg)"
    subprocess.run([sys.executable, "-c", code], check=True)
