"""GeoPackage layers: a layer is added to an existing GeoPackage, replaced only
with --overwrite, and every other layer is kept as it was."""

import sqlite3

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
from conftest import one_line_error, run
from geopandas.testing import assert_geodataframe_equal
from shapely.geometry import LineString, Point

import geoseg
from geoseg.errors import OutputError, RunError
from geoseg.io.export import Writer, read_provenance, write
from geoseg.testing import ColorSegmenter, make_scene, write_geotiff

COLORS = ["--backend", "colors", "--tile-size", "512", "--overlap", "64", "-q"]


def layers(path):
    return sorted(str(name) for name in pyogrio.list_layers(path)[:, 0])


def snapshot(path, names):
    """What a reader sees of each layer: features, fields, CRS and metadata."""
    return {n: (pyogrio.read_dataframe(path, layer=n), pyogrio.read_info(path, layer=n)["layer_metadata"])
            for n in names}


def assert_same(before, after):
    assert before.keys() == after.keys()
    for name, (frame, meta) in before.items():
        assert_geodataframe_equal(after[name][0], frame)
        assert after[name][1] == meta


@pytest.fixture
def multi(scene_path, tmp_path):
    """A GeoPackage with a geoseg layer `greens` and a foreign layer `roads` with its own fields and metadata."""
    path = tmp_path / "multi.gpkg"
    assert run("segment", scene_path, "-p", "green", "-o", path, "--layer", "greens", *COLORS).exit_code == 0
    roads = gpd.GeoDataFrame({"name": ["Main St", "Oak Ave"], "lanes": [4, 2]},
                             geometry=[LineString([(404000, 3286000), (404300, 3285700)]),
                                       LineString([(404100, 3286000), (404100, 3285500)])], crs=32617)
    pyogrio.write_dataframe(roads, path, layer="roads", layer_metadata={"owner": "city"})
    return path


def test_a_layer_is_added_refused_then_replaced_alone(scene_path, multi):
    kept = snapshot(multi, ["greens", "roads"])
    r = run("segment", scene_path, "-p", "red", "-o", multi, "--layer", "reds", *COLORS)
    assert r.exit_code == 0, r.output
    assert layers(multi) == ["greens", "reds", "roads"]
    reds = pyogrio.read_dataframe(multi, layer="reds")
    assert len(reds) > 0 and set(reds["label"]) == {"red"}
    assert read_provenance(multi, "reds")["prompts"] == ["red"]
    assert_same(kept, snapshot(multi, ["greens", "roads"]))

    before = multi.read_bytes()
    line = one_line_error(run("segment", scene_path, "-p", "red", "-p", "blue", "-o", multi, "--layer", "reds",
                              *COLORS))
    assert "multi.gpkg already has a layer 'reds'" in line and "--overwrite" in line
    assert multi.read_bytes() == before

    r = run("segment", scene_path, "-p", "red", "-p", "blue", "-o", multi, "--layer", "reds", "--overwrite", *COLORS)
    assert r.exit_code == 0, r.output
    assert layers(multi) == ["greens", "reds", "roads"]
    assert set(pyogrio.read_dataframe(multi, layer="reds")["label"]) == {"red", "blue"}
    assert read_provenance(multi, "reds")["prompts"] == ["red", "blue"]
    assert read_provenance(multi, "greens")["prompts"] == ["green"]
    assert_same(kept, snapshot(multi, ["greens", "roads"]))
    assert sorted(p.name for p in multi.parent.iterdir() if p.name.startswith(".")) == []


def test_the_api_adds_a_layer_and_checks_before_the_model_loads(scene_path, multi):
    class Unloadable(ColorSegmenter):
        def check_prompts(self, prompts):
            raise AssertionError("the model was reached before the output was checked")

    with pytest.raises(OutputError, match="already has a layer 'greens'"):
        geoseg.segment(scene_path, "green", segmenter=Unloadable(), output=multi, layer="greens")
    geoseg.segment(scene_path, "blue", segmenter=ColorSegmenter(), tile_size=512, overlap=64, output=multi,
                   layer="blues")
    assert layers(multi) == ["blues", "greens", "roads"]


def test_a_failed_or_stopped_write_leaves_the_geopackage_as_it_was(multi):
    before = multi.read_bytes()
    bad = gpd.GeoDataFrame({"label": ["a"], "z": [1 + 2j]}, geometry=[Point(404000, 3286000)], crs=32617)
    with pytest.raises(NotImplementedError, match="complex128"):  # the driver cannot store complex numbers
        write(bad, multi, layer="greens", overwrite=True)
    good = bad.drop(columns="z")
    with Writer(multi, layer="greens", overwrite=True) as w:  # stopped before commit (Ctrl-C, a crash)
        w.write(good)
    assert multi.read_bytes() == before
    assert [p.name for p in multi.parent.iterdir() if p.name.startswith(".")] == []


def test_a_layer_added_by_another_program_during_the_write_is_kept_beside_ours(multi):
    gdf = gpd.GeoDataFrame({"label": ["a"]}, geometry=[Point(404000, 3286000).buffer(5)], crs=32617)
    with Writer(multi, layer="reds", provenance={"prompts": ["red"]}) as w:
        w.write(gdf)
        pyogrio.write_dataframe(gdf, multi, layer="edited")  # another program (run) adds a layer meanwhile
        w.commit(gdf)
    assert layers(multi) == ["edited", "greens", "reds", "roads"]
    assert read_provenance(multi, "reds") == {"prompts": ["red"]}
    assert len(pyogrio.read_dataframe(multi, layer="reds")) == 1
    assert [p.name for p in multi.parent.iterdir() if p.name.startswith(".")] == []  # no copy left


def test_a_new_geopackage_made_by_another_run_during_the_write_is_kept(tmp_path):
    gdf = gpd.GeoDataFrame({"label": ["a"]}, geometry=[Point(404000, 3286000).buffer(5)], crs=32617)
    out = tmp_path / "new.gpkg"
    with Writer(out, layer="reds") as w, Writer(out, layer="blues") as other:
        w.write(gdf)
        other.write(gdf)
        other.commit(gdf)
        w.commit(gdf)
    assert layers(out) == ["blues", "reds"]


def test_the_same_layer_written_by_another_program_meanwhile_is_not_replaced(multi):
    gdf = gpd.GeoDataFrame({"label": ["a"]}, geometry=[Point(404000, 3286000).buffer(5)], crs=32617)
    with Writer(multi, layer="reds") as w:
        w.write(gdf)
        pyogrio.write_dataframe(gdf.assign(label="theirs"), multi, layer="reds")
        with pytest.raises(RunError, match="another program wrote .* while geoseg wrote layer 'reds'"):
            w.commit(gdf)
    assert list(pyogrio.read_dataframe(multi, layer="reds")["label"]) == ["theirs"]
    assert [p.name for p in multi.parent.iterdir() if p.name.startswith(".")] == []


def test_a_geopackage_open_in_another_program_is_refused(scene_path, multi):
    before = multi.read_bytes()
    con = sqlite3.connect(multi)  # as QGIS holds it: in WAL mode, with its -wal file beside it
    try:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("SELECT count(*) FROM gpkg_contents").fetchall()
        line = one_line_error(run("segment", scene_path, "-p", "red", "-o", multi, "--layer", "reds", *COLORS))
        assert "is open in another program" in line
    finally:
        con.close()
    assert layers(multi) == ["greens", "roads"] and len(multi.read_bytes()) == len(before)


def test_an_empty_layer_name_is_refused(scene_path, tmp_path):
    line = one_line_error(run("segment", scene_path, "-p", "red", "-o", tmp_path / "o.gpkg", "--layer", " ", *COLORS))
    assert "--layer ' '" in line
    assert list(tmp_path.iterdir()) == [tmp_path / "scene.tif"]


def test_a_rerun_replaces_its_own_layer_only(tmp_path):
    """After a partly failed run the rerun may replace the layer that run wrote,
    never another layer of the same GeoPackage."""
    d = tmp_path / "in"
    d.mkdir()
    make_scene(d / "good.tif", size=600, seed=1, n_objects=40)
    write_geotiff(d / "nocrs.tif", np.zeros((300, 300, 3), np.uint8), crs=None)
    out = tmp_path / "multi.gpkg"
    roads = gpd.GeoDataFrame({"name": ["Main St"]}, geometry=[LineString([(0, 0), (1, 1)])], crs=32617)
    pyogrio.write_dataframe(roads, out, layer="roads")
    kept = snapshot(out, ["roads"])

    args = ["segment", d, "-p", "red", "-o", out, "--backend", "colors", "--tile-size", "256", "--overlap", "32", "-q"]
    assert run(*args, "--layer", "reds").exit_code == 1  # nocrs.tif failed; good.tif written
    assert layers(out) == ["reds", "roads"]
    line = one_line_error(run(*args, "--layer", "roads"))  # this run wrote reds, not roads
    assert "already has a layer 'roads'" in line
    assert_same(kept, snapshot(out, ["roads"]))

    (d / "nocrs.tif").unlink()
    r = run(*args, "--layer", "reds")  # the run's own layer: no --overwrite needed
    assert r.exit_code == 0, r.output
    assert layers(out) == ["reds", "roads"] and len(pyogrio.read_dataframe(out, layer="reds")) > 0
    assert_same(kept, snapshot(out, ["roads"]))
    assert not (tmp_path / "multi.gpkg.geoseg-work").exists()


def test_output_dir_writes_shapefiles(scene_path, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    r = run("segment", scene_path, "-p", "red", "--output-dir", out, "--format", "shp", *COLORS)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == [
        "scene.cpg", "scene.dbf", "scene.prj", "scene.shp", "scene.shp.geoseg.json", "scene.shx"]
    back = pyogrio.read_dataframe(out / "scene.shp")
    assert len(back) > 0 and back.crs.equals("EPSG:32617")


def test_a_layer_given_for_a_format_without_layers_is_refused(scene_path, tmp_path):
    for ext in (".fgb", ".geojson", ".json", ".parquet", ".shp"):
        out = tmp_path / f"out{ext}"
        line = one_line_error(run("segment", scene_path, "-p", "red", "-o", out, "--layer", "trees", *COLORS))
        assert line == f"geoseg: error: --layer trees: {out} has no layers (only .gpkg has): leave out --layer " \
                       "or write a .gpkg"
    folder = tmp_path / "out"
    folder.mkdir()
    line = one_line_error(run("segment", scene_path, "-p", "red", "--output-dir", folder, "--format", "fgb",
                              "--layer", "trees", *COLORS))
    assert line == "geoseg: error: --layer trees: --format fgb has no layers (only gpkg has): leave out --layer " \
                   "or use --format gpkg"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "scene.tif"] and not any(folder.iterdir())

    class Unloadable(ColorSegmenter):
        def check_prompts(self, prompts):
            raise AssertionError("the model was reached before the layer was checked")

    with pytest.raises(OutputError) as err:
        geoseg.segment(scene_path, "red", segmenter=Unloadable(), output=tmp_path / "out.fgb", layer="trees")
    assert str(err.value) == f"layer='trees': {tmp_path / 'out.fgb'} has no layers (only .gpkg has): " \
                             "leave out layer= or write a .gpkg"


def test_the_default_layer_is_taken_by_every_format(scene_path, tmp_path):
    # `detections` given or not: the same run (the default cannot be told from the name given)
    assert run("segment", scene_path, "-p", "red", "-o", tmp_path / "a.fgb", *COLORS).exit_code == 0
    assert run("segment", scene_path, "-p", "red", "-o", tmp_path / "b.geojson", "--layer", "detections",
               *COLORS).exit_code == 0
    folder = tmp_path / "out"
    folder.mkdir()
    assert run("segment", scene_path, "-p", "red", "--output-dir", folder, "--format", "fgb", *COLORS).exit_code == 0
    assert len(pyogrio.read_dataframe(tmp_path / "a.fgb")) == len(pyogrio.read_dataframe(folder / "scene.fgb")) > 0


def test_layer_names_differing_in_case_are_one_layer(multi):
    """SQLite table names ignore case: --layer GREENS is the layer greens."""
    gdf = gpd.GeoDataFrame({"label": ["a"]}, geometry=[Point(404000, 3286000).buffer(5)], crs=32617)
    with pytest.raises(OutputError, match="already has a layer 'GREENS'"):
        write(gdf, multi, layer="GREENS")
    write(gdf, multi, layer="GREENS", overwrite=True)
    assert layers(multi) == ["GREENS", "roads"] and len(pyogrio.read_dataframe(multi, layer="GREENS")) == 1


def test_a_layer_made_by_another_program_during_the_run_stops_it_and_keeps_its_work(scene_path, multi):
    class Meddler(ColorSegmenter):
        """Another program writes the layer `reds` while the model runs."""

        def segment(self, tiles, prompts):
            if "reds" not in layers(multi):
                theirs = gpd.GeoDataFrame({"who": ["them"]}, geometry=[Point(404000, 3286000).buffer(5)], crs=32617)
                pyogrio.write_dataframe(theirs, multi, layer="reds")
            return super().segment(tiles, prompts)

    with pytest.raises(RunError, match="already has a layer 'reds'"):
        geoseg.segment(scene_path, "red", segmenter=Meddler(), tile_size=512, overlap=64, output=multi, layer="reds")
    assert list(pyogrio.read_dataframe(multi, layer="reds")["who"]) == ["them"]  # theirs, untouched
    work = multi.parent / "multi.gpkg.reds.geoseg-work"  # the layer's own
    assert work.is_dir()  # the staged tiles are kept: the rerun does not segment again

    class Unused(ColorSegmenter):
        def segment(self, tiles, prompts):
            raise AssertionError("the staged tiles were segmented again")

    gdf = geoseg.segment(scene_path, "red", segmenter=Unused(), tile_size=512, overlap=64, output=multi,
                         layer="reds", overwrite=True)
    assert len(pyogrio.read_dataframe(multi, layer="reds")) == len(gdf) > 0
    assert layers(multi) == ["greens", "reds", "roads"] and not work.exists()
