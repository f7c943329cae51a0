"""Library messages name parameters in the caller's terms: `bands=` from Python, `--bands` from the CLI."""

from pathlib import Path

import geopandas as gpd
import pyogrio
import pytest
import shapely
from conftest import one_line_error, run

import geoseg
from geoseg import errors
from geoseg.analysis.dataset import export_dataset
from geoseg.errors import UsageError, option
from geoseg.testing import ColorSegmenter, CountingSegmenter, make_scene

TILING = dict(tile_size=256, overlap=32)
CLI_TILING = ["--tile-size", "256", "--overlap", "32"]


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return make_scene(tmp_path_factory.mktemp("scene") / "scene.tif", size=600, seed=5)


def test_option_in_python_and_on_the_command_line(monkeypatch):
    assert errors.cli_terms is False
    assert (option("bands"), option("bands", "7,2,1"), option("overwrite", True)) == (
        "bands=", "bands='7,2,1'", "overwrite=True")
    assert option("stretch", (98.0, 2.0)) == "stretch=(98.0, 2.0)"
    assert option("fmt", "txt", flag="--format") == "fmt='txt'"
    monkeypatch.setattr(errors, "cli_terms", True)
    assert (option("bands"), option("bands", "7,2,1"), option("overwrite", True)) == (
        "--bands", "--bands 7,2,1", "--overwrite")
    assert option("tile_size", 8) == "--tile-size 8" and option("pixel_coords", True) == "--pixel-coords"
    assert option("stretch", (98.0, 2.0)) == "--stretch 98.0,2.0"  # as the option takes it
    assert option("layer", " ") == "--layer ' '" and option("prompts", "tree crown", flag="-p") == "-p 'tree crown'"
    assert option("fmt", "txt", flag="--format") == "--format txt"


# (python keywords, CLI arguments, what the Python message says, what the CLI line says)
CASES = {
    "bands": (dict(bands="7,2,1"), ["--bands", "7,2,1"], "bands=7 is out of range", "--bands 7 is out of range"),
    "bands-text": (dict(bands="4,x"), ["--bands", "4,x"],
                   "bands='4,x' is not a list of band numbers: use e.g. bands='4,3,2'",
                   "--bands 4,x is not a list of band numbers: use e.g. --bands 4,3,2"),
    "tile-size": (dict(tile_size=8), ["--tile-size", "8"], "tile_size=8 is too small", "--tile-size 8 is too small"),
    "overlap": (dict(tile_size=512, overlap=600), ["--tile-size", "512", "--overlap", "600"],
                "overlap=600 must be >= 0 and smaller than tile_size=512: try overlap=64",
                "--overlap 600 must be >= 0 and smaller than --tile-size 512: try --overlap 64"),
    "dst-crs": (dict(dst_crs="EPSG:0"), ["--dst-crs", "EPSG:0"], "dst_crs='EPSG:0': unknown CRS",
                "--dst-crs EPSG:0: unknown CRS"),
    "stretch": (dict(stretch=(98, 2)), ["--stretch", "98,2"], "stretch=(98.0, 2.0): need 0 <= low < high <= 100",
                "--stretch 98.0,2.0: need 0 <= low < high <= 100"),
    "bbox": (dict(bbox="1,2,3"), ["--bbox", "1,2,3"],
             "bbox='1,2,3': give four numbers minx,miny,maxx,maxy, e.g. bbox='404100,",
             "--bbox 1,2,3: give four numbers minx,miny,maxx,maxy, e.g. --bbox 404100,"),
    "bbox-crs": (dict(bbox_crs="EPSG:4326"), ["--bbox-crs", "EPSG:4326"],
                 "bbox_crs='EPSG:4326' goes with bbox=: add bbox='minx,miny,maxx,maxy'",
                 "--bbox-crs EPSG:4326 goes with --bbox: add --bbox minx,miny,maxx,maxy"),
    "aoi": (dict(aoi="missing-aoi.geojson"), ["--aoi", "missing-aoi.geojson"],
            "aoi='missing-aoi.geojson': no such file", "--aoi missing-aoi.geojson: no such file"),
    "layer": (dict(layer=" "), ["--layer", " "], "layer=' ': give a layer name", "--layer ' ': give a layer name"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_same_bad_input_is_told_in_each_callers_terms(scene, tmp_path, case):
    keywords, flags, python_text, cli_text = CASES[case]
    out = tmp_path / "out.gpkg"
    with pytest.raises(UsageError) as err:
        geoseg.segment(scene, "red", segmenter=ColorSegmenter(), output=out, **{**TILING, **keywords})
    assert python_text in str(err.value) and "--" not in str(err.value)

    line = one_line_error(run("segment", scene, "-p", "red", "-o", out, "--backend", "colors", "-q",
                              *CLI_TILING, *flags))
    assert cli_text in line
    assert python_text.split(" ")[0] not in line  # no `bands=`-style names on the command line
    assert not out.exists()


def test_an_existing_output_asks_for_overwrite_in_each_callers_terms(scene, tmp_path):
    out = tmp_path / "out.geojson"
    out.write_text("keep me")
    with pytest.raises(geoseg.OutputError, match="out.geojson exists: pass overwrite=True to replace it"):
        geoseg.segment(scene, "red", segmenter=ColorSegmenter(), output=out, **TILING)
    line = one_line_error(run("segment", scene, "-p", "red", "-o", out, "--backend", "colors", "-q"))
    assert "out.geojson exists: pass --overwrite to replace it" in line and "overwrite=" not in line
    assert out.read_text() == "keep me"


def test_a_vector_option_of_the_dataset_export_in_each_callers_terms(scene, tmp_path):
    vector = tmp_path / "objects.gpkg"
    pyogrio.write_dataframe(gpd.GeoDataFrame(geometry=[shapely.box(404100, 3285700, 404150, 3285750)],
                                             crs="EPSG:32617"), vector)
    with pytest.raises(UsageError, match=r"split='0.8,0.3': give 2 or 3 positive fractions"):
        export_dataset(scene, vector, tmp_path / "ds", split="0.8,0.3")
    line = one_line_error(run("export-dataset", scene, vector, "-o", tmp_path / "ds", "--split", "0.8,0.3"))
    assert "--split 0.8,0.3: give 2 or 3 positive fractions" in line
    assert not (tmp_path / "ds").exists()


@pytest.fixture
def interrupted(scene, tmp_path):
    """An output whose Python run failed part way: its work folder waits to be resumed."""
    out = tmp_path / "out.gpkg"
    with pytest.raises(RuntimeError, match="fell over"):
        geoseg.segment(scene, ["red", "green"], segmenter=CountingSegmenter(fail_after=2, batch_size=1), output=out,
                       **TILING)
    work = Path(f"{out}.geoseg-work")
    assert work.is_dir() and not out.exists()
    return out, work


def test_a_changed_prompt_refuses_to_resume_in_each_callers_terms(scene, interrupted):
    out, work = interrupted
    with pytest.raises(UsageError) as err:
        geoseg.segment(scene, ["red"], segmenter=ColorSegmenter(), output=out, **TILING)
    msg = str(err.value)
    assert "made with prompts=['red', 'green'], this run has prompts=['red']" in msg
    assert "rerun with the same prompts= to resume, or pass restart=True" in msg and "--" not in msg

    line = one_line_error(run("segment", scene, "-p", "red", "-o", out, "--backend", "colors", "-q", *CLI_TILING))
    assert "made with --prompt red,green, this run has --prompt red" in line
    assert "rerun with the same --prompt to resume, or pass --restart" in line
    assert work.is_dir() and not out.exists()  # nothing lost, nothing written


def test_a_changed_threshold_refuses_to_resume_in_each_callers_terms(scene, interrupted):
    out, work = interrupted
    with pytest.raises(UsageError) as err:
        geoseg.segment(scene, ["red", "green"], segmenter="colors", score_threshold=0.7, output=out, **TILING)
    assert "made with score_threshold=0.0, this run has score_threshold=0.7" in str(err.value)

    line = one_line_error(run("segment", scene, "-p", "red", "-p", "green", "-o", out, "--backend", "colors", "-q",
                              "--score-threshold", "0.7", *CLI_TILING))
    assert "made with --score-threshold 0.0, this run has --score-threshold 0.7" in line
    assert work.is_dir() and not out.exists()


def test_the_command_line_terms_end_with_the_command(scene, tmp_path):
    def python_message():
        with pytest.raises(UsageError) as err:
            geoseg.segment(scene, "red", segmenter=ColorSegmenter(), tile_size=8)
        return str(err.value)

    ok = run("segment", scene, "-p", "red", "-o", tmp_path / "ok.gpkg", "--backend", "colors", "-q", *CLI_TILING)
    assert ok.exit_code == 0, ok.output
    assert errors.cli_terms is False and python_message().startswith("tile_size=8 ")

    refused = run("segment", scene, "-p", "red", "-o", tmp_path / "no.gpkg", "--backend", "colors", "--tile-size", "8")
    assert "--tile-size 8" in one_line_error(refused)
    assert errors.cli_terms is False and python_message().startswith("tile_size=8 ")

    bad_click_value = run("segment", scene, "-p", "red", "--tile-size", "eight")  # refused by click itself
    assert bad_click_value.exit_code == 2
    assert errors.cli_terms is False and python_message().startswith("tile_size=8 ")
