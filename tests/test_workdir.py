"""geoseg.run.workdir.WorkDir on its own: settings recorded and checked, resume, restart, refusals, bookkeeping."""

import json
import os

import numpy as np
import pytest

from geoseg.core.merge import Piece
from geoseg.errors import RasterError, UsageError
from geoseg.run.workdir import RUN_FILE, WorkDir, read_settings, written
from geoseg.testing import write_geotiff

SETTINGS = {"--prompt": ["red", "tree crown"], "--backend": "colors", "--tile-size": 256, "--score-threshold": None}


@pytest.fixture
def raster(tmp_path):
    return write_geotiff(tmp_path / "in.tif", np.full((64, 64, 3), 40, np.uint8))


def test_a_new_folder_records_its_settings(tmp_path):
    work = WorkDir(tmp_path / "w", SETTINGS)
    assert not work.resumed
    assert read_settings(tmp_path / "w") == SETTINGS
    assert json.loads((tmp_path / "w" / RUN_FILE).read_text()) == {"settings": SETTINGS}
    assert read_settings(tmp_path) is None  # not a work folder


def test_the_same_settings_resume_what_was_staged(tmp_path, raster):
    work = WorkDir(tmp_path / "w", SETTINGS)
    with work.store(raster, 4, (2, 2)) as store:
        store.put([0, 1], [Piece("red", 0.9, 0, 3, 4, np.ones((2, 2), bool))], grid_cols=2)
    work.close()  # the run ends
    again = WorkDir(tmp_path / "w", dict(SETTINGS))
    assert again.resumed
    with again.store(raster, 4, (2, 2)) as store:
        assert store.done() == {0, 1} and store.n_pieces() == 1


@pytest.mark.parametrize("key, value, old, new", [  # recorded by CLI name, told by Python name
    ("--prompt", ["red"], "prompts=['red', 'tree crown']", "prompts=['red']"),
    ("--tile-size", 512, "tile_size=256", "tile_size=512"),
    ("--score-threshold", 0.5, "score_threshold=None", "score_threshold=0.5"),
])
def test_a_changed_setting_names_the_option_and_restart(tmp_path, key, value, old, new):
    WorkDir(tmp_path / "w", SETTINGS)
    with pytest.raises(UsageError) as err:
        WorkDir(tmp_path / "w", {**SETTINGS, key: value})
    msg = str(err.value)
    assert f"made with {old}, this run has {new}" in msg
    assert "restart=True" in msg and str(tmp_path / "w") in msg
    assert read_settings(tmp_path / "w") == SETTINGS  # the old run is kept


def test_a_setting_only_one_side_has_is_a_change(tmp_path):
    WorkDir(tmp_path / "w", SETTINGS)
    with pytest.raises(UsageError, match="bands="):
        WorkDir(tmp_path / "w", {**SETTINGS, "--bands": [3, 2, 1]})


def test_restart_discards_the_old_run(tmp_path, raster):
    work = WorkDir(tmp_path / "w", SETTINGS)
    with work.store(raster, 4, (2, 2)) as store:
        store.put([0], [], grid_cols=2)
    work.mark_written(tmp_path / "out.gpkg")
    work.close()
    fresh = WorkDir(tmp_path / "w", {**SETTINGS, "--tile-size": 512}, restart=True)
    assert not fresh.resumed
    assert read_settings(tmp_path / "w")["--tile-size"] == 512
    assert written(tmp_path / "w") == []
    with fresh.store(raster, 4, (2, 2)) as store:
        assert store.done() == set()


def test_a_file_at_the_path_is_refused_and_kept(tmp_path):
    path = tmp_path / "w"
    path.write_text("mine")
    for restart in (False, True):
        with pytest.raises(UsageError, match="is a file: remove it or pass another work_dir="):
            WorkDir(path, SETTINGS, restart=restart)
    assert path.read_text() == "mine"


def test_a_foreign_non_empty_folder_is_refused_and_kept(tmp_path):
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "notes.txt").write_text("mine")
    for restart in (False, True):
        with pytest.raises(UsageError, match="is not a geoseg work folder: pass another work_dir="):
            WorkDir(tmp_path / "w", SETTINGS, restart=restart)
    assert (tmp_path / "w" / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "w" / RUN_FILE).exists()


def test_an_empty_folder_is_taken_and_a_missing_parent_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    assert not WorkDir(tmp_path / "empty", SETTINGS).resumed
    with pytest.raises(UsageError, match="does not exist: create it"):
        WorkDir(tmp_path / "no" / "w", SETTINGS)


@pytest.mark.parametrize("change", ["size", "mtime"])
def test_store_refuses_an_input_changed_since(tmp_path, raster, change):
    work = WorkDir(tmp_path / "w", SETTINGS)
    work.store(raster, 4, (2, 2)).close()
    st = os.stat(raster)
    if change == "size":
        with open(raster, "ab") as f:
            f.write(b"\0" * 10)
        os.utime(raster, ns=(st.st_atime_ns, st.st_mtime_ns))
    else:
        os.utime(raster, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    with pytest.raises(RasterError, match=r"in\.tif changed since the interrupted run .*pass restart=True"):
        work.store(raster, 4, (2, 2))


def test_store_refuses_another_tiling_of_the_same_input(tmp_path, raster):
    work = WorkDir(tmp_path / "w", SETTINGS)
    work.store(raster, 4, (2, 2)).close()
    with pytest.raises(RasterError, match="restart=True"):
        work.store(raster, 9, (3, 3))


def test_names_are_readable_and_unique_per_path(tmp_path):
    work = WorkDir(tmp_path / "w", SETTINGS)
    a, b = work.name(tmp_path / "2023" / "scene.tif"), work.name(tmp_path / "2024" / "scene.tif")
    assert a != b and a.startswith("scene-") and b.startswith("scene-")
    assert work.name(tmp_path / "2023" / "scene.tif") == a  # stable
    assert work.name(tmp_path / "a b&c.tif").startswith("a_b_c-")
    assert work.result_path(tmp_path / "2023" / "scene.tif") == tmp_path / "w" / f"{a}.objects.gpkg"


def test_written_outputs_are_recorded_once_each(tmp_path):
    work = WorkDir(tmp_path / "w", SETTINGS)
    assert written(tmp_path / "w") == []
    work.mark_written(tmp_path / "b.gpkg")
    work.mark_written(tmp_path / "a.gpkg")
    work.mark_written(tmp_path / "b.gpkg")
    assert written(tmp_path / "w") == [str(tmp_path / "a.gpkg"), str(tmp_path / "b.gpkg")]
    work.close()
    assert written(WorkDir(tmp_path / "w", SETTINGS).path) == written(tmp_path / "w")  # survives a resume


def test_failures_are_set_cleared_and_reported_by_status_of(tmp_path, raster):
    work = WorkDir(tmp_path / "w", SETTINGS)
    with work.store(raster, 4, (2, 2)) as store:
        store.put([0, 1, 2], [Piece("red", 0.9, 1, 0, 0, np.ones((3, 3), bool))], grid_cols=2)
    other = str(tmp_path / "never-opened.tif")
    work.fail(raster, "cannot read pixels")
    work.fail(other, "not a raster")
    status = WorkDir.status_of(tmp_path / "w")
    assert status == [
        {"source": raster, "tiles": 4, "done": 3, "detections": 1, "merged": False, "error": "cannot read pixels"},
        {"source": other, "tiles": None, "done": 0, "detections": 0, "merged": False, "error": "not a raster"},
    ]
    work.fail(raster, None)
    work.fail(other, None)
    work.result_path(raster).write_bytes(b"")  # the merged objects of the input are there
    assert WorkDir.status_of(tmp_path / "w") == [
        {"source": raster, "tiles": 4, "done": 3, "detections": 1, "merged": True, "error": None},
    ]
