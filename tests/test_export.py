import geopandas as gpd
import pyogrio
import pytest
from shapely.geometry import Point

import geoseg
from geoseg.errors import OutputCRSWarning, OutputError
from geoseg.export import read_provenance, write
from geoseg.testing import ColorSegmenter


@pytest.mark.parametrize("ext", [".gpkg", ".geojson", ".fgb", ".parquet"])
def test_each_format_round_trips_with_provenance(scene_path, tmp_path, ext):
    out = tmp_path / f"out{ext}"
    gdf = geoseg.segment(scene_path, ["red", "green"], segmenter=ColorSegmenter(), tile_size=512, overlap=64,
                         output=out)
    back = gpd.read_parquet(out) if ext == ".parquet" else pyogrio.read_dataframe(out)
    assert len(back) == len(gdf) > 0
    assert set(back.columns) >= {"id", "label", "score", "area_m2", "n_tiles", "source", "geometry"}
    assert back.geometry.is_valid.all()
    expected_crs = "EPSG:4326" if ext == ".geojson" else "EPSG:32617"
    assert back.crs.equals(expected_crs)
    meta = read_provenance(out)
    assert meta["prompts"] == ["red", "green"] and meta["tile_size"] == 512 and meta["backend"] == "colors"
    assert meta["geoseg_version"] == geoseg.__version__
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_geojson_says_it_is_wgs84(scene_path, tmp_path):
    with pytest.warns(OutputCRSWarning, match="EPSG:4326"):
        geoseg.segment(scene_path, "red", segmenter=ColorSegmenter(), output=tmp_path / "o.geojson",
                       dst_crs="EPSG:3857")


def test_existing_output_is_kept_without_overwrite(scene_path, tmp_path):
    out = tmp_path / "o.gpkg"
    out.write_bytes(b"precious")
    with pytest.raises(OutputError, match="exists: pass --overwrite"):
        geoseg.segment(scene_path, "red", segmenter=ColorSegmenter(), output=out)
    assert out.read_bytes() == b"precious"
    geoseg.segment(scene_path, "red", segmenter=ColorSegmenter(), output=out, overwrite=True)
    assert len(pyogrio.read_dataframe(out)) > 0


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    out = tmp_path / "o.gpkg"
    out.write_bytes(b"precious")
    bad = gpd.GeoDataFrame({"label": ["a"], "z": [1 + 2j]}, geometry=[Point(0, 0)], crs=4326)
    with pytest.raises(NotImplementedError, match="complex128"):  # the driver cannot store complex numbers
        write(bad, out, overwrite=True)
    assert out.read_bytes() == b"precious"
    assert [p.name for p in tmp_path.iterdir()] == ["o.gpkg"]


@pytest.mark.parametrize("name,match", [
    ("o.shp", "unknown output format '.shp'"),
    ("missing/o.gpkg", "does not exist"),
])
def test_bad_outputs(scene_path, tmp_path, name, match):
    with pytest.raises(OutputError, match=match):
        geoseg.segment(scene_path, "red", segmenter=ColorSegmenter(), output=tmp_path / name)
    assert not (tmp_path / name).exists()


def test_unwritable_folder():
    with pytest.raises(OutputError, match="not writable"):
        write(gpd.GeoDataFrame(geometry=[]), "/proc/o.gpkg")
