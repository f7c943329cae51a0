"""Folders of GeoTIFFs: failures isolated, completed files skipped, summary, progress and logs."""

import json
import re
import shutil

import numpy as np
import pyogrio
import pytest
from conftest import run

from geoseg.testing import make_scene, write_geotiff


@pytest.fixture
def folder(tmp_path):
    """Three good scenes, a truncated GeoTIFF and one without a CRS."""
    d = tmp_path / "in"
    d.mkdir()
    for k in range(3):
        make_scene(d / f"good{k}.tif", size=600, seed=k, n_objects=60)
    good = (d / "good0.tif").read_bytes()
    (d / "broken.tif").write_bytes(good[: len(good) // 3])
    write_geotiff(d / "nocrs.tif", np.zeros((300, 300, 3), np.uint8), crs=None)
    return d


def segment_folder(folder, out, *extra):
    return run("segment", folder, "-p", "red", "-p", "blue", "--backend", "colors", "--tile-size", "256",
               "--overlap", "32", *extra)


def test_failed_files_are_reported_and_the_others_written(folder, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    r = segment_folder(folder, out, "--output-dir", out, "-q")
    assert r.exit_code == 1, r.output
    assert sorted(p.name for p in out.glob("*.gpkg")) == ["good0.gpkg", "good1.gpkg", "good2.gpkg"]
    assert "3 of 5 files done, 2 failed" in r.output
    assert re.search(r"failed: broken\.tif: .*corrupt or truncated", r.output)
    assert re.search(r"failed: nocrs\.tif: .*no CRS", r.output)
    assert "Traceback" not in r.output
    assert r.output.strip().splitlines()[-1].startswith("geoseg: error: 2 of 5 files failed")
    counts = {p.stem: len(pyogrio.read_dataframe(p)) for p in out.glob("*.gpkg")}
    assert all(n > 10 for n in counts.values())

    # `geoseg info` on the kept work folder tells what is done and what failed
    r = run("info", out / ".geoseg-work")
    assert r.exit_code == 0, r.output
    assert "good0.tif: done" in r.output and "nocrs.tif: failed" in r.output
    assert "--prompt red --prompt blue" in r.output

    # a rerun skips the files done, retries the failed ones
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.gpkg")}
    (folder / "broken.tif").unlink()
    (folder / "nocrs.tif").unlink()
    r = segment_folder(folder, out, "--output-dir", out, "-q")
    assert r.exit_code == 0, r.output
    assert r.output.count("(done before)") == 3
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.gpkg")} == before
    assert not (out / ".geoseg-work").exists()


def test_one_output_for_a_folder_keeps_the_good_files(folder, tmp_path):
    out = tmp_path / "all.gpkg"
    r = segment_folder(folder, out, "-o", out, "-q")
    assert r.exit_code == 1, r.output
    gdf = pyogrio.read_dataframe(out)
    assert set(gdf["source"]) == {"good0.tif", "good1.tif", "good2.tif"}
    assert list(gdf["id"]) == list(range(1, len(gdf) + 1))
    # fixed inputs: the rerun replaces its own partial output without --overwrite
    shutil.move(folder / "broken.tif", tmp_path / "broken.tif")
    (folder / "nocrs.tif").unlink()
    r = segment_folder(folder, out, "-o", out, "-q")
    assert r.exit_code == 0, r.output
    again = pyogrio.read_dataframe(out)
    assert len(again) == len(gdf) and (again["score"].to_numpy() == gdf["score"].to_numpy()).all()
    assert not (tmp_path / "all.gpkg.geoseg-work").exists()


def test_progress_lines_when_not_a_terminal_and_log_file(folder, tmp_path):
    for bad in ("broken.tif", "nocrs.tif"):
        (folder / bad).unlink()
    log = tmp_path / "run.log"
    r = segment_folder(folder, tmp_path / "o.gpkg", "-o", tmp_path / "o.gpkg", "--log-file", log)
    assert r.exit_code == 0, r.output
    lines = [ln for ln in r.output.splitlines() if "tiles (100 %)" in ln]
    assert len(lines) == 3
    shape = r"km², \d+ detections, \d+ objects merged so far( \(\d+ still open across rows\))?, ETA"
    assert all(re.search(shape, ln) for ln in lines), lines
    assert "3 of 3 files done, 0 failed" in r.output
    text = log.read_text()
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ INFO geoseg.run.progress: good0.tif: 9/9 tiles", text, re.M)
    assert "good2.tif: 9 tiles ->" in text

    r = segment_folder(folder, tmp_path / "q.gpkg", "-o", tmp_path / "q.gpkg", "-q")
    assert r.exit_code == 0 and "tiles (100 %)" not in r.output


def test_info_json_of_a_work_folder(folder, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    segment_folder(folder, out, "--output-dir", out, "-q")
    r = run("info", out / ".geoseg-work", "--json")
    status = json.loads(r.stdout)[0]
    assert status["settings"]["--prompt"] == ["red", "blue"] and status["settings"]["--tile-size"] == 256
    by = {f["source"].split("/")[-1]: f for f in status["files"]}
    assert by["good1.tif"]["merged"] and by["good1.tif"]["done"] == by["good1.tif"]["tiles"] == 9
    assert "corrupt" in by["broken.tif"]["error"]
