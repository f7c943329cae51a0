"""Damaged work folders: each damaged file named in one line, `--restart` starts over,
and never removes a folder holding files geoseg did not write."""

import shutil

import pyogrio
import pytest
from conftest import one_line_error, run

import geoseg
from geoseg.errors import RunError, UsageError
from geoseg.run.workdir import WorkDir
from geoseg.testing import CountingSegmenter, make_scene

TILING = dict(tile_size=256, overlap=32)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scenes")
    make_scene(folder / "a.tif", size=400, seed=5)
    make_scene(folder / "b.tif", size=400, seed=6)
    return folder


@pytest.fixture(scope="module")
def failed(scenes, tmp_path_factory):
    """The work folder of a run whose inputs both failed: run.json, failed.json and the stores."""
    work = tmp_path_factory.mktemp("failed") / "work"
    with pytest.raises(RunError, match="2 of 2 inputs failed"):
        geoseg.segment(scenes, ["red", "green"], segmenter=CountingSegmenter(fail_after=2, batch_size=1),
                       output=work.with_name("out.gpkg"), work_dir=work, **TILING)
    assert {"run.json", "failed.json"} <= {p.name for p in work.iterdir()}
    return work


@pytest.fixture(scope="module")
def clean(scenes, tmp_path_factory):
    """The output of the same run, never interrupted."""
    out = tmp_path_factory.mktemp("clean") / "out.gpkg"
    r = run(*args(scenes, out))
    assert r.exit_code == 0, r.output
    return pyogrio.read_dataframe(out)


@pytest.fixture
def work(failed, tmp_path):
    return shutil.copytree(failed, tmp_path / "work")


def args(scenes, out, work=None):
    return ["segment", scenes, "-p", "red", "-p", "green", "--backend", "colors", "-o", out,
            "--tile-size", TILING["tile_size"], "--overlap", TILING["overlap"], "-q",
            *(["--work-dir", work] if work else [])]


# written.json is made once an output is written: a crash as it is first written leaves it empty
DAMAGES = {"empty": "", "garbled": '{"settings": {"--prompt": ["re', "wrong shape": None}
WRONG_SHAPE = {"run.json": '["red", "green"]', "failed.json": '["b.tif"]', "written.json": '{"out.gpkg": 1}'}


@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("name", ["run.json", "failed.json", "written.json"])
def test_a_damaged_file_is_named_and_restart_starts_over(scenes, work, clean, tmp_path, name, damage):
    (work / name).write_text(DAMAGES[damage] if damage != "wrong shape" else WRONG_SHAPE[name])
    before = sorted(p.name for p in work.iterdir())
    out = tmp_path / "out.gpkg"
    for cmd in (args(scenes, out, work), ["info", work]):  # resuming, and asking how far it got
        line = one_line_error(run(*cmd))
        assert f"{work / name} is " in line and f"the work folder {work} is damaged" in line, line
        assert line.endswith("pass --restart to discard it and start over"), line
    assert sorted(p.name for p in work.iterdir()) == before and not out.exists()  # nothing touched

    r = run(*args(scenes, out, work), "--restart")
    assert r.exit_code == 0, r.output
    assert not work.exists()
    assert_same(pyogrio.read_dataframe(out), clean)


def test_a_deleted_run_json_is_named_and_restart_starts_over(scenes, work, clean, tmp_path):
    (work / "run.json").unlink()
    out = tmp_path / "out.gpkg"
    for cmd in (args(scenes, out, work), ["info", work]):
        line = one_line_error(run(*cmd))
        assert f"{work / 'run.json'} is missing: the work folder {work} is damaged" in line, line
        assert "--restart" in line
    r = run(*args(scenes, out, work), "--restart")
    assert r.exit_code == 0, r.output
    assert_same(pyogrio.read_dataframe(out), clean)


@pytest.mark.parametrize("damage", ["deleted", "garbled"])
def test_restart_never_removes_a_folder_holding_someone_elses_file(scenes, work, tmp_path, damage):
    # a damaged run.json with a file geoseg never writes beside it: perhaps not a work folder at all
    if damage == "deleted":
        (work / "run.json").unlink()
    else:
        (work / "run.json").write_text("{")
    (work / "notes.txt").write_text("mine")
    before = sorted(p.name for p in work.iterdir())
    for extra in ((), ("--restart",)):
        line = one_line_error(run(*args(scenes, tmp_path / "out.gpkg", work), *extra))
        assert line == f"geoseg: error: {work} is not a geoseg work folder: pass another --work-dir"
    assert sorted(p.name for p in work.iterdir()) == before
    assert (work / "notes.txt").read_text() == "mine"


def test_restart_discards_a_folder_of_geoseg_files_only(tmp_path):
    # every kind of file a run leaves, named as WorkDir and export.Writer name them, but no run.json
    work = WorkDir(tmp_path / "w", {"--prompt": ["red"]})
    store, objects = work.name(tmp_path / "a b.tif") + ".sqlite", work.result_path(tmp_path / "a b.tif").name
    work.close()
    (work.path / "run.json").unlink()
    for name in ["run.json.tmp", "failed.json", "written.json.tmp", store, store + "-wal", store + "-shm", objects,
                 f".{objects[:-5]}.1234.0a1b2c.tmp.gpkg", f".{objects[:-5]}.1234.0a1b2c.tmp.gpkg-journal"]:
        (work.path / name).write_bytes(b"")
    with pytest.raises(UsageError, match=r"run\.json is missing: the work folder .* is damaged .*restart=True"):
        WorkDir(tmp_path / "w", {"--prompt": ["red"]})
    assert not WorkDir(tmp_path / "w", {"--prompt": ["red"]}, restart=True).resumed
    assert sorted(p.name for p in work.path.iterdir()) == ["lock", "run.json"]


def test_python_callers_are_told_restart_true(scenes, work, tmp_path):
    (work / "failed.json").write_text("")
    with pytest.raises(UsageError, match=r"failed\.json is empty: .* pass restart=True to discard it"):
        geoseg.segment(scenes, ["red", "green"], segmenter="colors", output=tmp_path / "o.gpkg", work_dir=work,
                       **TILING)
    geoseg.segment(scenes, ["red", "green"], segmenter="colors", output=tmp_path / "o.gpkg", work_dir=work,
                   restart=True, **TILING)
    assert not work.exists()


def assert_same(a, b):
    assert len(a) == len(b) > 10
    assert list(a.columns) == list(b.columns)
    for col in ["id", "label", "score", "n_tiles"]:
        assert (a[col].to_numpy() == b[col].to_numpy()).all(), col
    assert a.geometry.geom_equals_exact(b.geometry, tolerance=0).all()
