import json
import os
import subprocess
import sys

import numpy as np
import pyogrio
import pytest
import rasterio
from conftest import one_line_error, run

from geoseg.testing import disc, draw, make_scene, write_geotiff

COLORS = ["--backend", "colors", "--tile-size", "512", "--overlap", "64", "-q"]


def test_segment_and_info_end_to_end(scene_path, tmp_path):
    out = tmp_path / "out.gpkg"
    r = run("segment", scene_path, "-p", "red", "-p", "green", "-o", out, *COLORS)
    assert r.exit_code == 0, r.output
    gdf = pyogrio.read_dataframe(out, layer="detections")
    assert set(gdf["label"]) == {"red", "green"} and gdf.geometry.is_valid.all()
    assert gdf["id"].tolist() == list(range(1, len(gdf) + 1))
    assert (gdf["source"] == "scene.tif").all() and (gdf["n_tiles"] >= 1).all()
    r = run("info", scene_path, "-p", "building", "--tile-size", "512", "--overlap", "64")
    assert r.exit_code == 0 and "1200 x 1200 px" in r.output and "9 (3 x 3)" in r.output and "EPSG:32617" in r.output
    r = run("info", scene_path, "--json")
    plan = json.loads(r.stdout)["rasters"][0]
    assert plan["tiles"] == 4 and plan["area_km2"] == pytest.approx(0.36)


def test_same_result_as_python_api_and_stable_ids(scene_path, tmp_path):
    import geoseg
    from geoseg.testing import ColorSegmenter

    a, b = tmp_path / "a.gpkg", tmp_path / "b.gpkg"
    run("segment", scene_path, "-p", "blue", "-o", a, *COLORS)
    run("segment", scene_path, "-p", "blue", "-o", b, *COLORS)
    ga, gb = pyogrio.read_dataframe(a), pyogrio.read_dataframe(b)
    gdf = geoseg.segment(scene_path, "blue", segmenter=ColorSegmenter(), tile_size=512, overlap=64)
    assert ga.drop(columns="geometry").equals(gb.drop(columns="geometry"))
    assert ga.geometry.geom_equals(gb.geometry).all()
    assert len(gdf) == len(ga) and np.allclose(gdf["area_m2"], ga["area_m2"])


def test_folder_to_one_output_and_to_one_file_each(tmp_path):
    d = tmp_path / "tiles"
    d.mkdir()
    make_scene(d / "a.tif", size=600, seed=1)
    make_scene(d / "b.tif", size=600, seed=2)
    (d / "notes.txt").write_text("not a raster")
    out = tmp_path / "all.gpkg"
    assert run("segment", d, "-p", "red", "-o", out, *COLORS).exit_code == 0
    gdf = pyogrio.read_dataframe(out)
    assert set(gdf["source"]) == {"a.tif", "b.tif"}
    outdir = tmp_path / "each"
    outdir.mkdir()
    assert run("segment", d, "-p", "red", "--output-dir", outdir, "--format", "fgb", *COLORS).exit_code == 0
    assert sorted(p.name for p in outdir.iterdir() if not p.name.endswith(".json")) == ["a.fgb", "b.fgb"]
    assert len(pyogrio.read_dataframe(outdir / "a.fgb")) + len(pyogrio.read_dataframe(outdir / "b.fgb")) == len(gdf)


def test_dst_crs_pixel_coords_and_all_nodata(tmp_path):
    path = make_scene(tmp_path / "s.tif", size=600, seed=4)
    out = tmp_path / "wgs.gpkg"
    assert run("segment", path, "-p", "red", "-o", out, "--dst-crs", "EPSG:4326", *COLORS).exit_code == 0
    assert pyogrio.read_info(out)["crs"] == "EPSG:4326"
    empty = write_geotiff(tmp_path / "empty.tif", np.zeros((300, 300, 3), np.uint8), nodata=0)
    r = run("segment", empty, "-p", "red", "-o", tmp_path / "e.gpkg", *COLORS)
    assert r.exit_code == 0 and "geoseg: warning:" in r.output and "nodata" in r.output
    assert len(pyogrio.read_dataframe(tmp_path / "e.gpkg")) == 0


def _plain_tiff(path):
    with rasterio.open(path, "w", driver="GTiff", width=64, height=64, count=3, dtype="uint8") as dst:
        dst.write(np.moveaxis(draw(64, 64, [disc("red", 1, 32, 32, 10)]), -1, 0))
    return path


def _truncated(tmp_path):
    src = make_scene(tmp_path / "whole.tif", size=1024, seed=5, compress="deflate")
    data = open(src, "rb").read()
    path = tmp_path / "truncated.tif"
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("case,match", [
    ("missing", "no such file"),
    ("text", "not a readable raster"),
    ("truncated", "corrupt or truncated"),
    ("no-crs", "no CRS"),
    ("blank-prompt", "empty prompt"),
    ("overlap-big", "--overlap 512 must be"),
    ("overlap-negative", "--overlap -5 must be"),
    ("band", "--bands 7 is out of range"),
    ("crs", "unknown CRS"),
    ("ext", "unknown output format '.txt'"),
    ("out-folder", "does not exist"),
    ("not-writable", "not writable"),
    ("exists", "exists: pass --overwrite"),
    ("no-output", "give either -o"),
    ("backend-option", "does not take --model"),
    ("backend", "unknown backend"),
    ("stretch", "--stretch 98.0,2.0: need 0 <= low < high <= 100"),
])
def test_bad_inputs_give_one_line_exit_2_and_write_nothing(scene_path, tmp_path, case, match):
    out = tmp_path / "out.gpkg"
    text = tmp_path / "text.tif"
    text.write_text("hello")
    args = {
        "missing": [tmp_path / "nope.tif", "-p", "red", "-o", out],
        "text": [text, "-p", "red", "-o", out],
        "truncated": [_truncated(tmp_path), "-p", "red", "-o", out],
        "no-crs": [_plain_tiff(tmp_path / "plain.tif"), "-p", "red", "-o", out],
        "blank-prompt": [scene_path, "-p", "  ", "-o", out],
        "overlap-big": [scene_path, "-p", "red", "-o", out, "--overlap", "512"],
        "overlap-negative": [scene_path, "-p", "red", "-o", out, "--overlap", "-5"],
        "band": [scene_path, "-p", "red", "-o", out, "--bands", "7,2,1"],
        "crs": [scene_path, "-p", "red", "-o", out, "--dst-crs", "EPSG:0"],
        "ext": [scene_path, "-p", "red", "-o", tmp_path / "out.txt"],
        "out-folder": [scene_path, "-p", "red", "-o", tmp_path / "no" / "out.gpkg"],
        "not-writable": [scene_path, "-p", "red", "-o", "/proc/out.gpkg"],
        "exists": [scene_path, "-p", "red", "-o", out],
        "no-output": [scene_path, "-p", "red"],
        "backend-option": [scene_path, "-p", "red", "-o", out, "--model", "facebook/sam3"],
        "backend": [scene_path, "-p", "red", "-o", out, "--backend", "nope"],
        "stretch": [scene_path, "-p", "red", "-o", out, "--stretch", "98,2"],
    }[case]
    if case == "exists":
        out.write_bytes(b"keep me")
    before = sorted(os.listdir(tmp_path))
    extra = [] if case == "backend" else ["--backend", "colors"]
    r = run("segment", *args, *extra, "--tile-size", "512", "-q")
    assert match in one_line_error(r)
    assert sorted(os.listdir(tmp_path)) == before
    if case == "exists":
        assert out.read_bytes() == b"keep me"


def test_pixel_coords_flag(tmp_path):
    path = _plain_tiff(tmp_path / "plain.tif")
    out = tmp_path / "px.gpkg"
    assert run("segment", path, "-p", "red", "-o", out, "--pixel-coords", *COLORS).exit_code == 0
    gdf = pyogrio.read_dataframe(out)
    assert gdf.crs is None and len(gdf) == 1 and gdf["area_m2"].isna().all()


def test_console_script_installed_as_geoseg_cli_not_cli(scene_path, tmp_path):
    import geoseg.cli

    assert geoseg.cli.__file__.endswith(os.path.join("cli", "__init__.py"))
    code = "import importlib.util, sys; sys.exit(importlib.util.find_spec('cli') is not None)"
    assert subprocess.run([sys.executable, "-c", code], cwd=tmp_path).returncode == 0
    r = subprocess.run([os.path.join(os.path.dirname(sys.executable), "geoseg"), "info", scene_path],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "1200 x 1200" in r.stdout


def test_info_does_not_import_torch(scene_path):
    code = ("import sys; from click.testing import CliRunner; from geoseg.cli import main; "
            f"r = CliRunner().invoke(main, ['info', {str(scene_path)!r}]); assert r.exit_code == 0; "
            "import geoseg.core.merge, geoseg.core.vectorize, geoseg.core.tiling; sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.parametrize("args,match", [
    (["--score-threshold", "2"], "--score-threshold"),
    (["--dtype", "fp8"], "--dtype"),
    (["--tile-size", "big"], "--tile-size"),
])
def test_click_usage_errors_are_one_line_too(scene_path, tmp_path, args, match):
    r = run("segment", scene_path, "-p", "red", "-o", tmp_path / "o.gpkg", *args)
    assert match in one_line_error(r)
    r = run("segment", scene_path, "-o", tmp_path / "o.gpkg")  # -p is optional with --exemplars, not without
    assert "no prompt given: pass at least one, e.g. -p building" in one_line_error(r)
    assert not (tmp_path / "o.gpkg").exists()


@pytest.mark.parametrize("where", ["before", "after"])
def test_verbose_before_or_after_the_command_shows_the_traceback(scene_path, tmp_path, monkeypatch, where):
    from geoseg.run import pipeline

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(pipeline, "run", broken)  # an unforeseen failure inside the library
    args = ["segment", scene_path, "-p", "red", "--backend", "colors", "-o", tmp_path / "o.gpkg"]
    r = run(*(["-v", *args] if where == "before" else [*args, "-v"]))
    assert r.exit_code == 1 and "Traceback" in r.output and "RuntimeError: boom" in r.output
    r = run(*args)
    assert "Traceback" not in one_line_error(r, code=1) and "run with -v for details" in r.output


def test_quiet_silences_model_loading_but_not_warnings(scene_path, tmp_path):
    from geoseg.testing import build_tiny_sam3

    model = build_tiny_sam3(tmp_path / "tiny")
    geoseg = os.path.join(os.path.dirname(sys.executable), "geoseg")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
    base = [geoseg, "segment", str(scene_path), "-p", "red", "--model", str(model), "--device", "cpu",
            "--tile-size", "1200"]
    loud = subprocess.run([*base, "-o", str(tmp_path / "a.gpkg")], capture_output=True, text=True, env=env)
    quiet = subprocess.run([*base, "-o", str(tmp_path / "b.gpkg"), "-q"], capture_output=True, text=True, env=env)
    assert loud.returncode == 0 and quiet.returncode == 0, loud.stderr + quiet.stderr
    assert "Loading weights" in loud.stderr and "loaded SAM 3" in loud.stderr
    assert "Loading weights" not in quiet.stderr and "loaded SAM 3" not in quiet.stderr
    assert "running on the CPU" in quiet.stderr  # warnings stay
    n = len(pyogrio.read_dataframe(tmp_path / "b.gpkg"))
    assert quiet.stderr.strip().splitlines()[-1] == f"{tmp_path / 'b.gpkg'}: {n} objects"


def test_info_on_a_work_folder_prints_options_the_cli_takes(scene_path, tmp_path):
    import shlex

    from geoseg.cli import main
    from geoseg.run.workdir import WorkDir

    settings = {"--prompt": ["tree", "swimming pool"], "--backend": "sam3", "--model": "facebook/sam3",
                "--dtype": "torch.bfloat16", "--score-threshold": 0.4, "--mask-threshold": None,
                "--tile-size": 1008, "--overlap": 128, "--bands": [4, 3, 2], "--stretch": [2.0, 98.0],
                "--pixel-coords": True, "--resolution": None}
    WorkDir(tmp_path / "out.gpkg.geoseg-work", settings)
    r = run("info", tmp_path / "out.gpkg.geoseg-work")
    assert r.exit_code == 0, r.output
    line = next(x for x in r.output.splitlines() if x.strip().startswith("settings"))
    args = shlex.split(line.split("settings", 1)[1])
    assert "torch" not in line and "True" not in line and "(default)" not in line
    ctx = main.commands["segment"].make_context("segment", [str(scene_path), "-o", "x.gpkg", *args])
    p = ctx.params
    assert p["prompts"] == ("tree", "swimming pool") and p["dtype"] == "bf16" and p["bands"] == "4,3,2"
    assert p["pixel_coords"] is True and p["score_threshold"] == 0.4 and p["stretch"] == "2.0,98.0"


@pytest.mark.parametrize("case,match", [
    ("ext", "unknown output format '.xyz'"),
    ("out-folder", "does not exist"),
    ("exists", "exists: pass --overwrite"),
    ("truncated", "corrupt or truncated"),
    ("layer-exists", "already has a layer 'detections'"),
])
def test_output_and_input_checks_come_before_the_model_loads(scene_path, tmp_path, case, match):
    """A model that cannot load would fail first if it were loaded first: these must name the output or input."""
    out = tmp_path / "out.gpkg"
    source, target = {
        "ext": (scene_path, tmp_path / "out.xyz"),
        "out-folder": (scene_path, tmp_path / "missing_dir" / "out.gpkg"),
        "exists": (scene_path, out),
        "truncated": (_truncated(tmp_path), out),
        "layer-exists": (scene_path, out),
    }[case]
    if case == "exists":
        out.write_bytes(b"keep me")
    if case == "layer-exists":
        assert run("segment", scene_path, "-p", "red", *COLORS, "-o", out, "--tile-size", "1200").exit_code == 0
    before = {p: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    for extra in ([], ["--output-dir", tmp_path] if case == "truncated" else []):
        args = ["-o", target] if not extra else extra
        r = run("segment", source, "-p", "tree", *args, "--model", tmp_path / "no_model_here", "-q")
        assert match in one_line_error(r), r.output
    assert {p: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before


def test_the_log_file_gets_every_line_a_run_prints(tmp_path):
    # a batch job run with -q --log-file finds there what it printed: refusals before the model
    # loads, warnings, the result
    scene = make_scene(tmp_path / "scene.tif", size=256, seed=1)
    log = tmp_path / "run.log"
    common = ["-p", "red", "--backend", "colors", "-q", "--log-file", log]
    err = one_line_error(run("segment", tmp_path / "missing.tif", *common, "-o", tmp_path / "a.gpkg"))
    assert err.removeprefix("geoseg: ") in log.read_text()
    err = one_line_error(run("segment", scene, *common))  # neither -o nor --output-dir
    assert err.removeprefix("geoseg: ") in log.read_text()
    done = run("segment", scene, *common, "-o", tmp_path / "a.geojson", "--dst-crs", "EPSG:32617")
    assert done.exit_code == 0, done.output
    text = log.read_text()
    assert "a.geojson: " in text and " objects" in text
    assert "warning: " in done.output and "warning: " in text and "always EPSG:4326" in text  # as on stderr
    again = one_line_error(run("segment", scene, *common, "-o", tmp_path / "a.geojson"))  # exists
    assert "exists" in again and again.removeprefix("geoseg: ") in log.read_text()
    assert all(line.split(" ", 3)[2] in ("INFO", "WARNING", "ERROR") for line in log.read_text().splitlines()
               if line.strip() and line[:2] == "20")  # each line with its time and level


def test_a_warning_that_needs_no_pixels_comes_before_the_model_loads(tmp_path):
    scene = make_scene(tmp_path / "scene.tif", size=256, seed=1)
    r = run("segment", scene, "-p", "red", "-o", tmp_path / "a.geojson", "--dst-crs", "EPSG:32617",
            "--model", tmp_path / "no-model")  # SAM 3 from a folder that is not there: refused as it loads
    lines = r.output.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 2, r.output
    assert lines[0] == (f"geoseg: warning: {tmp_path / 'a.geojson'}: GeoJSON is always EPSG:4326 (RFC 7946); use "
                        f".gpkg to keep EPSG:32617")
    assert "no-model" in lines[1] and lines[1].startswith("geoseg: error: ")
