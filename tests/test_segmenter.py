"""The backend registry: built-ins, a third-party backend found through a real
`geoseg.backends` entry point, option checks, and prompt cleaning."""

import sys
import textwrap

import pyogrio
import pytest
from conftest import one_line_error, run

from geoseg.core.segmenter import ENTRY_POINT_GROUP, backend_names, check_prompts, load_segmenter
from geoseg.errors import PromptError, UsageError
from geoseg.testing import ColorSegmenter, make_scene

PLUGIN = "geoseg_test_stripes_plugin"

PLUGIN_SOURCE = '''
"""A third-party backend: the colors test backend under another name, with an option of its own."""
from geoseg.testing import ColorSegmenter


class Stripes(ColorSegmenter):
    name = "stripes"

    def __init__(self, *, score_threshold=0.0, width=4):
        super().__init__(score_threshold=score_threshold, batch_size=2)
        self.width = width
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """Install a backend the way a package does: a module plus a dist-info
    folder whose entry_points.txt declares it in the `geoseg.backends` group."""
    site = tmp_path / "site"
    site.mkdir()
    (site / f"{PLUGIN}.py").write_text(textwrap.dedent(PLUGIN_SOURCE))
    info = site / "geoseg_stripes-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: geoseg-stripes\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nstripes = {PLUGIN}:Stripes\n")
    monkeypatch.syspath_prepend(str(site))
    yield "stripes"
    sys.modules.pop(PLUGIN, None)


def test_the_built_in_backends_are_listed():
    names = backend_names()
    assert {"sam3", "colors"} <= set(names) and names == sorted(names)
    assert "stripes" not in names


def test_a_backend_from_an_entry_point_is_listed_and_built_with_its_options(plugin):
    assert {"colors", "sam3", "stripes"} <= set(backend_names()) and backend_names() == sorted(backend_names())
    seg = load_segmenter(plugin, width=9, score_threshold=0.6, model=None)  # None: left to the backend
    assert type(seg).__module__ == PLUGIN and type(seg).__name__ == "Stripes"
    assert (seg.width, seg.score_threshold, seg.batch_size) == (9, 0.6, 2)


def test_an_option_the_backend_does_not_take_is_named(plugin):
    with pytest.raises(UsageError, match=r"backend 'stripes' does not take mask_threshold=: drop it"):
        load_segmenter(plugin, mask_threshold=0.3)
    with pytest.raises(UsageError, match=r"backend 'colors' does not take model="):
        load_segmenter("colors", model="facebook/sam3")


def test_an_unknown_backend_lists_the_known_ones(plugin):
    with pytest.raises(UsageError) as err:
        load_segmenter("stripe")
    assert str(err.value) == f"unknown backend 'stripe': choose one of {', '.join(backend_names())}"
    assert all(name in str(err.value) for name in ("colors", "sam3", "stripes"))


def test_the_cli_lists_and_runs_a_backend_from_an_entry_point(plugin, tmp_path):
    listed = run("backends")
    assert listed.exit_code == 0 and "stripes" in listed.output.split()
    scene = make_scene(tmp_path / "scene.tif", size=512, seed=2)
    out = tmp_path / "out.gpkg"
    done = run("segment", scene, "-p", "red", "--backend", "stripes", "--score-threshold", 0.7,
               "--tile-size", 256, "--overlap", 32, "-o", out, "-q")
    assert done.exit_code == 0, done.output
    got = pyogrio.read_dataframe(out)
    assert len(got) > 0 and (got["score"] >= 0.7).all()
    assert "does not take --model" in one_line_error(
        run("segment", scene, "-p", "red", "--backend", "stripes", "--model", "x", "-o", tmp_path / "b.gpkg"))
    assert not (tmp_path / "b.gpkg").exists()


def test_a_comma_separates_prompts_on_every_interface(tmp_path):
    # the CLI ran "tree,shrub" as one prompt and QGIS as two: now two everywhere
    assert check_prompts("tree, shrub") == check_prompts(["tree", "shrub"]) == ["tree", "shrub"]
    assert check_prompts(["red,green", "green"]) == ["red", "green"]
    with pytest.raises(PromptError, match="empty prompt ''"):
        check_prompts("tree,")
    scene = make_scene(tmp_path / "scene.tif", size=256, seed=2)
    both = run("segment", scene, "-p", "red,green", "--backend", "colors", "-o", tmp_path / "a.gpkg", "-q")
    apart = run("segment", scene, "-p", "red", "-p", "green", "--backend", "colors", "-o", tmp_path / "b.gpkg", "-q")
    assert both.exit_code == apart.exit_code == 0, both.output + apart.output
    a, b = pyogrio.read_dataframe(tmp_path / "a.gpkg"), pyogrio.read_dataframe(tmp_path / "b.gpkg")
    assert set(a["label"]) == {"red", "green"} and a.geometry.geom_equals_exact(b.geometry, tolerance=0).all()


def test_check_prompts_strips_and_drops_repeats_in_order():
    assert check_prompts("  tree crown ") == ["tree crown"]
    assert check_prompts(["building", " tree", "building ", "tree", "road"]) == ["building", "tree", "road"]


@pytest.mark.parametrize("prompts, match", [
    ([], "no prompt given"),
    ("", "empty prompt ''"),
    (["tree", "   "], "empty prompt ''"),
    (["tree", None], "empty prompt None"),
])
def test_check_prompts_refuses_blank_prompts(prompts, match):
    with pytest.raises(PromptError, match=match):
        check_prompts(prompts)


def test_a_prompt_with_a_control_character_is_refused_before_anything_is_read(tmp_path):
    # a newline or tab inside a prompt would be written as a label and break its line in every log
    for bad in ("tree\ncrown", "tree\tcrown", "red\x00"):
        with pytest.raises(PromptError, match="control character"):
            check_prompts(["red", bad])
    scene = make_scene(tmp_path / "scene.tif", size=64, seed=1)
    err = one_line_error(run("segment", scene, "-p", "red\nblue", "--backend", "colors", "-o", tmp_path / "x.gpkg"))
    assert "control character" in err and "-p" in err
    assert not (tmp_path / "x.gpkg").exists() and not list(tmp_path.glob("*.geoseg-work"))
    assert check_prompts("  tree crown\n") == ["tree crown"]  # surrounding whitespace is stripped, as before


def test_the_colors_backend_refuses_prompts_it_cannot_see():
    with pytest.raises(PromptError, match="red, green and blue, not 'tree'"):
        ColorSegmenter().check_prompts(["red", "tree"])
