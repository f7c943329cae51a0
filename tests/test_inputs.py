"""Inputs: folders searched recursively, and two inputs never share a name or an output."""

import pyogrio
import pytest
from conftest import one_line_error, run

from geoseg.errors import UsageError
from geoseg.io.export import read_provenance
from geoseg.io.inputs import list_inputs
from geoseg.io.sources import output_names, unique_names
from geoseg.testing import make_scene


def segment(*args):
    return run("segment", *args, "-p", "red", "-p", "blue", "--backend", "colors", "--tile-size", "256",
               "--overlap", "32", "-q")


@pytest.fixture
def same_names(tmp_path):
    """Two different scenes, both called a.tif, in two folders."""
    for folder, seed in (("scenes", 1), ("other", 2)):
        (tmp_path / folder).mkdir()
        make_scene(tmp_path / folder / "a.tif", size=300, seed=seed, n_objects=20 + 15 * seed)
    return tmp_path / "scenes" / "a.tif", tmp_path / "other" / "a.tif"


def test_unique_names_take_the_shortest_telling_part():
    assert unique_names(["/d/x/a.tif", "/d/y/b.tif"]) == ["a.tif", "b.tif"]
    assert unique_names(["/d/x/a.tif", "/d/y/a.tif", "/d/y/b.tif"]) == ["x/a.tif", "y/a.tif", "b.tif"]
    assert unique_names(["/r/2020/q1/a.tif", "/r/2021/q1/a.tif"]) == ["2020/q1/a.tif", "2021/q1/a.tif"]
    assert unique_names(["/x/a.tif", "/y/x/a.tif"]) == ["x/a.tif", "y/x/a.tif"]
    assert unique_names(["https://h/b/a.tif?sig=SECRET", "/d/a.tif"]) == ["b/a.tif", "d/a.tif"]
    assert unique_names(["/d/x/a.tif", "/d/y/a.TIF"]) == ["x/a.tif", "y/a.TIF"]  # one output, whatever the case
    with pytest.raises(UsageError, match="https://one/a.tif and https://two/a.tif would share one output name"):
        unique_names(["https://one/a.tif", "https://two/a.tif"])
    with pytest.raises(UsageError, match="/d/a.tif and /d/a.vrt would share one output name"):
        unique_names(["/d/a.tif", "/d/a.vrt"])
    assert output_names(["x/a.tif", "y/a.TIF"], ".gpkg") == ["x/a.gpkg", "y/a.gpkg"]


def test_same_named_inputs_get_their_own_outputs(same_names, tmp_path):
    first, second = same_names
    res = tmp_path / "res"
    res.mkdir()
    own = {}
    for path, name in ((first, "one.gpkg"), (second, "two.gpkg")):
        r = segment(path, "-o", tmp_path / name)
        assert r.exit_code == 0, r.output
        own[path] = len(pyogrio.read_dataframe(tmp_path / name))
    assert own[first] != own[second]

    r = segment(first, second, "--output-dir", res)
    assert r.exit_code == 0, r.output
    assert "2 of 2 files done" in r.output
    # the folder each input came from is mirrored: nothing replaced, nothing mixed
    assert sorted(str(p.relative_to(res)) for p in res.rglob("*.gpkg")) == ["other/a.gpkg", "scenes/a.gpkg"]
    for path, out in ((first, res / "scenes" / "a.gpkg"), (second, res / "other" / "a.gpkg")):
        gdf = pyogrio.read_dataframe(out)
        assert len(gdf) == own[path]
        assert set(gdf["source"]) == {f"{path.parent.name}/a.tif"}
        assert read_provenance(out)["sources"] == [f"{path.parent.name}/a.tif"]  # as the source column


def test_same_named_inputs_are_told_apart_in_one_output(same_names, tmp_path):
    r = segment(*same_names, "-o", tmp_path / "all.gpkg")
    assert r.exit_code == 0, r.output
    gdf = pyogrio.read_dataframe(tmp_path / "all.gpkg")
    assert sorted(set(gdf["source"])) == ["other/a.tif", "scenes/a.tif"]


def test_inputs_that_would_share_an_output_are_refused_before_any_work(tmp_path):
    make_scene(tmp_path / "a.tif", size=200, seed=1)
    (tmp_path / "a.vrt").write_text(f'<VRTDataset rasterXSize="1" rasterYSize="1"><!-- {tmp_path} --></VRTDataset>')
    res = tmp_path / "res"
    res.mkdir()
    line = one_line_error(segment(tmp_path / "a.tif", tmp_path / "a.vrt", "--output-dir", res))
    assert "a.tif" in line and "a.vrt" in line and "would share one output name" in line
    assert list(res.iterdir()) == []


def test_the_same_file_twice_is_refused(tmp_path):
    make_scene(tmp_path / "a.tif", size=200, seed=1)
    line = one_line_error(segment(tmp_path / "a.tif", tmp_path, "-o", tmp_path / "out.gpkg"))
    assert "given twice" in line
    assert not (tmp_path / "out.gpkg").exists() and not (tmp_path / "out.gpkg.geoseg-work").exists()


def test_folders_are_searched_recursively_and_skipped_files_named(tmp_path, caplog):
    top = tmp_path / "tiles"
    for sub in ("2020", "2021", "2021/deep"):
        (top / sub).mkdir(parents=True)
    make_scene(top / "b.tif", size=200, seed=1)
    make_scene(top / "2020" / "a.tif", size=200, seed=2)
    make_scene(top / "2021" / "deep" / "a.TIF", size=200, seed=3)
    (top / "2020" / "a.tif.aux.xml").write_text("<PAMDataset/>")  # a sidecar: part of a.tif
    (top / "2021" / "notes.txt").write_text("flown in May")
    (top / ".geoseg-work").mkdir()  # hidden: a work folder, never an input
    make_scene(top / ".geoseg-work" / "c.tif", size=200, seed=4)
    with caplog.at_level("INFO", logger="geoseg"):
        found = list_inputs(top)
    assert [p.replace(str(top) + "/", "") for p in found] == ["2020/a.tif", "2021/deep/a.TIF", "b.tif"]
    assert "skipped 1 file that is not a raster" in caplog.text and "2021/notes.txt" in caplog.text

    res = tmp_path / "res"
    res.mkdir()
    r = run("segment", top, "--output-dir", res, "-p", "red", "--backend", "colors", "--tile-size", "256")
    assert r.exit_code == 0, r.output
    assert "notes.txt" in r.output  # said, unless -q
    assert sorted(str(p.relative_to(res)) for p in res.rglob("*.gpkg")) == ["2020/a.gpkg", "b.gpkg", "deep/a.gpkg"]
    assert sorted(set(pyogrio.read_dataframe(res / "deep" / "a.gpkg")["source"])) == ["deep/a.TIF"]
