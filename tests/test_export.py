import json

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
from shapely.geometry import Point, Polygon

import geoseg
from geoseg.errors import OutputCRSWarning, OutputError, RunError
from geoseg.io.export import Writer, read_provenance, write
from geoseg.testing import ColorSegmenter, disc, draw, rectangle, write_geotiff


@pytest.mark.parametrize("ext", [".gpkg", ".geojson", ".fgb", ".parquet", ".shp"])
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
    with pytest.raises(OutputError, match="exists: pass overwrite=True to replace it .it is not a GeoPackage"):
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
    ("o.kml", "unknown output format '.kml'"),
    ("missing/o.gpkg", "does not exist"),
])
def test_bad_outputs(scene_path, tmp_path, name, match):
    with pytest.raises(OutputError, match=match):
        geoseg.segment(scene_path, "red", segmenter=ColorSegmenter(), output=tmp_path / name)
    assert not (tmp_path / name).exists()


def test_unwritable_folder():
    with pytest.raises(OutputError, match="not writable"):
        write(gpd.GeoDataFrame(geometry=[]), "/proc/o.gpkg")


def test_the_layer_is_named_after_the_output_not_the_temporary_file(scene_path, tmp_path):
    for ext in (".geojson", ".fgb", ".shp"):
        geoseg.segment(scene_path, "red", segmenter=ColorSegmenter(), tile_size=512, overlap=64,
                       output=tmp_path / f"trees{ext}")
        assert [str(name) for name in pyogrio.list_layers(tmp_path / f"trees{ext}")[:, 0]] == ["trees"]
    assert json.loads((tmp_path / "trees.geojson").read_text())["name"] == "trees"


@pytest.fixture
def split_scene(tmp_path):
    """A red square cut in two by a blue bar (a MultiPolygon) beside a red disc (a Polygon)."""
    objs = [rectangle("red", 1, 20, 20, 60, 60), rectangle("blue", 2, 45, 10, 10, 80), disc("red", 3, 150, 150, 20)]
    return write_geotiff(tmp_path / "split.tif", draw(200, 200, objs))


def test_geoparquet_is_multipolygon_only(split_scene, tmp_path):
    gdf = geoseg.segment(split_scene, "red", segmenter=ColorSegmenter(), tile_size=128, overlap=32,
                         output=tmp_path / "o.parquet")
    assert set(gdf.geom_type) == {"Polygon", "MultiPolygon"}  # the scene has both kinds
    back = gpd.read_parquet(tmp_path / "o.parquet")
    assert len(back) == 2 and list(back.geometry.geom_type.unique()) == ["MultiPolygon"]
    assert back.geometry.area.sort_values().tolist() == pytest.approx(gdf.geometry.area.sort_values().tolist())


def test_shapefile_round_trip_replaces_all_its_parts_only_with_overwrite(scene_path, tmp_path):
    out = tmp_path / "o.shp"
    foreign = gpd.GeoDataFrame({"name": ["old"]}, geometry=[Point(0, 0).buffer(1)], crs=3857)
    pyogrio.write_dataframe(foreign, out)
    (tmp_path / "o.qix").write_bytes(b"an index of the old shapefile")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("o.")}
    assert set(before) == {"o.shp", "o.shx", "o.dbf", "o.prj", "o.cpg", "o.qix"}
    with pytest.raises(OutputError, match="o.shp exists: pass overwrite=True"):
        geoseg.segment(scene_path, "red", segmenter=ColorSegmenter(), tile_size=512, overlap=64, output=out)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("o.")} == before

    gdf = geoseg.segment(scene_path, "red", segmenter=ColorSegmenter(), tile_size=512, overlap=64, output=out,
                         overwrite=True)
    back = pyogrio.read_dataframe(out)
    assert len(back) == len(gdf) > 0 and list(back.columns) == list(gdf.columns)
    assert back.crs.equals("EPSG:32617") and set(back["label"]) == {"red"}
    assert back.geometry.area.sum() == pytest.approx(gdf.geometry.area.sum())
    assert read_provenance(out)["prompts"] == ["red"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("o.", "."))) == [
        "o.cpg", "o.dbf", "o.prj", "o.shp", "o.shp.geoseg.json", "o.shx"]  # the stale index is gone


def test_a_writer_stopped_before_commit_leaves_nothing(tmp_path):
    gdf = gpd.GeoDataFrame({"label": ["a"]}, geometry=[Point(0, 0).buffer(1)], crs=32617)
    for ext in (".shp", ".gpkg", ".fgb"):
        with Writer(tmp_path / f"o{ext}") as w:
            w.write(gdf)
            assert any(p.name.startswith(".o.") for p in tmp_path.iterdir())  # written, not yet in place
    assert list(tmp_path.iterdir()) == []


def test_an_output_made_by_another_program_during_the_run_is_kept(scene_path, tmp_path):
    out = tmp_path / "o.fgb"

    class Meddler(ColorSegmenter):
        def segment(self, tiles, prompts):
            if not out.exists():
                out.write_bytes(b"theirs")
            return super().segment(tiles, prompts)

    with pytest.raises(RunError, match="o.fgb exists: pass overwrite=True"):
        geoseg.segment(scene_path, "red", segmenter=Meddler(), tile_size=512, overlap=64, output=out)
    assert out.read_bytes() == b"theirs" and (tmp_path / "o.fgb.geoseg-work").is_dir()


def test_an_empty_result_is_still_a_polygon_layer(tmp_path):
    blank = write_geotiff(tmp_path / "blank.tif", np.full((300, 300, 3), 40, np.uint8))
    for ext, kind in ((".shp", "Polygon"), (".gpkg", "MultiPolygon"), (".fgb", "MultiPolygon")):
        gdf = geoseg.segment(blank, "red", segmenter=ColorSegmenter(), tile_size=256, overlap=32,
                             output=tmp_path / f"e{ext}")
        info = pyogrio.read_info(tmp_path / f"e{ext}")
        assert len(gdf) == len(pyogrio.read_dataframe(tmp_path / f"e{ext}")) == 0
        assert info["geometry_type"] == kind and "label" in info["fields"]


@pytest.mark.parametrize("suffix", [".gpkg", ".geojson"])
def test_a_layer_is_read_in_chunks_bounded_in_features_and_in_geometry_bytes(tmp_path, monkeypatch, suffix):
    """Small objects come 1,000 at a time; a GeoPackage's large ones (a region's strips: here
    polygons of 20,000 vertices, 320 kB of WKB each, under a 1 MB budget) a few at a time, a
    larger one (1.6 MB) alone; other formats by the number of features. Together, the layer in order."""
    from geoseg.io import export
    from geoseg.run.assemble import read_chunks

    monkeypatch.setattr(export, "GEOMETRY_BYTES", 1 << 20)
    sizes = [16] * 2500 + [20_000] * 7 + [100_000] + [16] * 10  # vertices

    def circle(x: float, n: int) -> Polygon:
        a = np.linspace(0, 2 * np.pi, n, endpoint=False)
        return Polygon(np.c_[x + 400 * np.cos(a), 400 * np.sin(a)])

    geoms = [circle(k * 1000, n) for k, n in enumerate(sizes)]
    gdf = gpd.GeoDataFrame({"n": np.arange(len(geoms))}, geometry=geoms, crs=32633)
    path = tmp_path / f"objects{suffix}"
    pyogrio.write_dataframe(gdf, path, layer="objects" if suffix == ".gpkg" else None)
    chunks = list(read_chunks(path, "objects" if suffix == ".gpkg" else None, chunk=1000))
    assert list(np.concatenate([c["n"].to_numpy() for c in chunks])) == list(range(len(geoms)))
    wkb = [int(sum(len(g) for g in c.geometry.to_wkb())) for c in chunks]
    if suffix == ".gpkg":
        assert [len(c) for c in chunks][:2] == [1000, 1000] and len(chunks) >= 6
        assert all(b <= 1 << 20 or len(c) == 1 for b, c in zip(wkb, chunks))  # the 1.6 MB polygon alone
        assert max(wkb) > 1 << 20
    else:
        assert [len(c) for c in chunks] == [1000, 1000, 518]
    empty = tmp_path / f"empty{suffix}"
    pyogrio.write_dataframe(gdf.iloc[:0], empty, layer="objects" if suffix == ".gpkg" else None)
    assert [len(c) for c in read_chunks(empty, "objects" if suffix == ".gpkg" else None)] == [0]
