"""Outputs and work-folder files are on disk before they are renamed into place,
and the rename is on disk after (geoseg.io.files). A power cut cannot be made
here: os.fsync and os.replace are watched instead."""

import os
from pathlib import Path

import pytest
from conftest import run

from geoseg.io import files
from geoseg.run.workdir import WorkDir

pytestmark = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="resolves fds through /proc")


@pytest.fixture
def calls(monkeypatch):
    """("fsync", path) and ("replace", src, dst), in order, as the run makes them."""
    seen = []
    fsync, replace = os.fsync, os.replace

    def spy_fsync(fd):
        seen.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return fsync(fd)

    def spy_replace(src, dst, **kwargs):
        seen.append(("replace", str(src), str(dst)))
        return replace(src, dst, **kwargs)

    monkeypatch.setattr(os, "fsync", spy_fsync)
    monkeypatch.setattr(os, "replace", spy_replace)
    return seen


def assert_durable(calls, target: Path):
    """`target` was renamed into place from a file fsynced before, and its folder fsynced after."""
    moves = [k for k, c in enumerate(calls) if c[0] == "replace" and c[2] == str(target)]
    assert moves, f"{target} was not renamed into place: {calls}"
    k = moves[-1]
    tmp = calls[k][1]
    assert ("fsync", tmp) in calls[:k], f"{tmp} not fsynced before the rename: {calls}"
    assert ("fsync", str(target.parent)) in calls[k + 1:], f"{target.parent} not fsynced after: {calls}"


def test_an_output_and_the_work_folder_json_are_synced_around_the_rename(scene_path, tmp_path, calls):
    out = tmp_path / "out.gpkg"
    r = run("segment", scene_path, "-p", "red", "--backend", "colors", "-o", out, "--tile-size", "512", "-q")
    assert r.exit_code == 0, r.output
    assert_durable(calls, out)
    assert_durable(calls, tmp_path / "out.gpkg.geoseg-work" / "run.json")


def test_a_work_folder_json_write_is_synced_around_the_rename(tmp_path, calls):
    work = WorkDir(tmp_path / "w", {"--prompt": ["red"]})
    calls.clear()
    work.mark_written(tmp_path / "out.gpkg")
    assert_durable(calls, tmp_path / "w" / "written.json")
    assert [c[0] for c in calls] == ["fsync", "replace", "fsync"]


def test_a_shapefile_and_its_sidecar_are_synced(scene_path, tmp_path, calls):
    out = tmp_path / "out.shp"
    r = run("segment", scene_path, "-p", "red", "--backend", "colors", "-o", out, "--tile-size", "512", "-q")
    assert r.exit_code == 0, r.output
    for part in (".shp", ".shx", ".dbf", ".prj"):
        assert_durable(calls, out.with_suffix(part))
    assert_durable(calls, tmp_path / "out.shp.geoseg.json")


def test_a_folder_that_cannot_be_opened_is_skipped_quietly(tmp_path, monkeypatch, calls):
    # as on Windows, where a folder has no file descriptor
    real_open = os.open

    def no_folders(path, flags, *args):
        if os.path.isdir(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", no_folders)
    (tmp_path / "a.tmp").write_text("new")
    files.replace(tmp_path / "a.tmp", tmp_path / "a")
    assert (tmp_path / "a").read_text() == "new" and not (tmp_path / "a.tmp").exists()
    assert calls == [("fsync", str(tmp_path / "a.tmp")), ("replace", str(tmp_path / "a.tmp"), str(tmp_path / "a"))]


def test_a_folder_is_renamed_and_its_parent_synced(tmp_path, calls):
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "f").write_text("x")
    files.replace(tmp_path / "new", tmp_path / "dataset")
    assert (tmp_path / "dataset" / "f").read_text() == "x"
    assert calls == [("replace", str(tmp_path / "new"), str(tmp_path / "dataset")), ("fsync", str(tmp_path))]


def test_a_missing_file_is_an_error_not_a_silent_skip(tmp_path):
    with pytest.raises(FileNotFoundError):
        files.replace(tmp_path / "gone", tmp_path / "a")
