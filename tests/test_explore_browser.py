"""The explorer in a real JupyterLab, driven in headless Chromium as a person drives it.

On the seam scene with the `colors` backend: type a prompt and press Run, see the
objects drawn, drag the slider, draw an example box, click an object and reject it,
save; the saved file equals `geoseg segment` over the same area. Then a kernel
restart brings back the results, the decisions and the box from the state file.
Screenshots go to test-artifacts/explore/ (one is docs/images/explore.png).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nbformat
import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from click.testing import CliRunner
from pyproj import Transformer
from scipy import ndimage

from geoseg.cli import main
from geoseg.testing.browser import CHROMIUM, Notebook, chromium, lab, screenshot

pytestmark = pytest.mark.browser
ROOT = Path(__file__).parent.parent
SCENE = ROOT / "sample_data" / "seam_scene.tif"
ARTIFACTS = ROOT / "test-artifacts" / "explore"

CELLS = [
    'import geoseg\nex = geoseg.explore("seam_scene.tif", backend="colors", basemap=None, state="state.gpkg")\nex',
    'import json\nex.save("kept.gpkg")\nex.exemplars.to_file("boxes.gpkg")\n'
    'json.dump({"view": ex.view_lonlat, "threshold": ex.threshold}, open("run.json", "w"))\nprint(ex)',
    'import json\nex.save("again.gpkg")\nprint(json.dumps({"shown": len(ex.results), "boxes": len(ex.exemplars), '
    '"threshold": ex.threshold}))',
]


def _components(colour: int) -> list[tuple[slice, slice]]:
    """The pixel boxes of the scene's pure objects of one colour family (0 red, 1 green, 2 blue)."""
    with rasterio.open(SCENE) as src:
        rgb = src.read().transpose(1, 2, 0).astype(int)
    others = np.delete(rgb, colour, axis=2)
    labels, _ = ndimage.label((rgb[..., colour] >= 192) & (others.max(axis=2) < 64))
    return [b for b in ndimage.find_objects(labels) if b is not None]


def _lonlat(rows: slice, cols: slice, pad: float = 0) -> tuple[float, float, float, float]:
    with rasterio.open(SCENE) as src:
        t, crs = src.transform, src.crs
    x0, y0 = t @ (cols.start - pad, rows.stop + pad)
    x1, y1 = t @ (cols.stop + pad, rows.start - pad)
    lon, lat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform([x0, x1], [y0, y1])
    return lon[0], lat[0], lon[1], lat[1]


def _on_page(page, lon: float, lat: float) -> tuple[float, float]:
    """Where a lon/lat point is drawn, in the page's pixels."""
    x, y = page.evaluate("([lon, lat]) => document.querySelector('.geoseg-explorer').deck.getViewports()[0]"
                         ".project([lon, lat])", [lon, lat])
    box = page.locator(".gs-map").bounding_box()
    return box["x"] + x, box["y"] + y


def _shown_red(page) -> tuple[float, float, tuple[slice, slice]]:
    """The page position of the middle of the largest red object drawn, and its pixel box."""
    for rows, cols in sorted(_components(0), key=lambda b: -(b[0].stop - b[0].start) * (b[1].stop - b[1].start)):
        w, s, e, n = _lonlat(rows, cols)
        x, y = _on_page(page, (w + e) / 2, (s + n) / 2)
        box = page.locator(".gs-map").bounding_box()
        if page.evaluate("([x, y]) => !!document.querySelector('.geoseg-explorer').deck.pickObject("
                         "{x, y, layerIds: ['results']})", [x - box["x"], y - box["y"]]):
            return x, y, (rows, cols)
    raise AssertionError("no red object is drawn")


def _drag_box(page, mode: str, lonlat, then=lambda: None) -> None:
    """In `mode` (positive, negative, review), drag the mouse over the box `lonlat`; `then()`; back to pan."""
    w, s, e, n = lonlat
    page.click(f"button[data-mode='{mode}']")
    (x0, y0), (x1, y1) = _on_page(page, w, n), _on_page(page, e, s)
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move(x1, y1, steps=8)
    page.mouse.up()
    then()
    page.click("button[data-mode='pan']")


def _count(page) -> int:
    return int(page.inner_text(".gs-layer[data-label='red'] .gs-count"))


def _drawn(page) -> int:
    """The objects deck.gl actually draws (GPU picking over the whole map)."""
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
    return int(page.evaluate("""() => {
        const el = document.querySelector('.geoseg-explorer'), map = el.querySelector('.gs-map');
        const picked = el.deck.pickObjects({x: 0, y: 0, width: map.clientWidth, height: map.clientHeight,
                                            layerIds: ['results'], maxObjects: 100000});
        return new Set(picked.map(p => p.index)).size; }"""))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: tests/run-all.sh installs Debian's chromium")
    d = tmp_path_factory.mktemp("explore")
    shutil.copy(SCENE, d / SCENE.name)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, d / "explore.ipynb")
    return d


def test_explore_in_jupyterlab(folder):
    with lab(folder, log=folder / "lab.log") as url, chromium() as page:
        nb = Notebook(page, url, "explore.ipynb")
        try:
            _session(page, nb, folder)
        finally:
            screenshot(page, ARTIFACTS, "last")
            (ARTIFACTS / "console.log").write_text("\n".join(page.logs))


def _session(page, nb: Notebook, folder: Path) -> None:
    nb.run(0)
    page.wait_for_selector(".geoseg-explorer canvas", timeout=60_000)
    page.wait_for_function("document.querySelector('.geoseg-explorer').deck.getViewports().length > 0")

    # a prompt typed, Run pressed with the mouse: the objects appear, drawn
    page.click(".gs-prompt")
    page.keyboard.type("red")
    page.click(".gs-run")
    page.wait_for_selector(".gs-layer[data-label='red']", timeout=60_000)
    first = _count(page)
    assert first > 10
    assert _drawn(page) == first
    screenshot(page, ARTIFACTS, "explore", ".geoseg-explorer")

    # the slider dragged to the right: fewer objects, at once, without a run
    slider = page.locator(".gs-threshold").bounding_box()
    y = slider["y"] + slider["height"] / 2
    page.mouse.move(slider["x"] + slider["width"] * 0.5, y)
    page.mouse.down()
    page.mouse.move(slider["x"] + slider["width"] * 0.85, y, steps=5)
    page.mouse.up()
    higher = float(page.inner_text(".gs-threshold-value"))
    assert higher > 0.6
    fewer = _count(page)
    assert 0 < fewer < first
    assert _drawn(page) == fewer

    # a positive example box around a blue object, then Run (the Enter key): its family joins "red"
    blue = max(_components(2), key=lambda b: (b[0].stop - b[0].start) * (b[1].stop - b[1].start))
    _drag_box(page, "positive", _lonlat(*blue, pad=3))
    page.click(".gs-prompt")
    page.keyboard.press("Enter")
    page.wait_for_function(f"+document.querySelector(\".gs-layer[data-label='red'] .gs-count\").textContent > {fewer}",
                           timeout=60_000)
    more = _count(page)

    # a click on a red object shown (above the threshold) shows it; R rejects it
    x, y, (red_rows, red_cols) = _shown_red(page)
    page.mouse.click(x, y)
    page.wait_for_selector(".gs-object td[data-key='label']")
    assert page.inner_text(".gs-object td[data-key='label']") == "red"
    page.keyboard.press("r")
    page.wait_for_function(f"+document.querySelector(\".gs-layer[data-label='red'] .gs-count\").textContent "
                           f"=== {more - 1}")
    assert page.inner_text(".gs-object td[data-key='review']") == "rejected"
    screenshot(page, ARTIFACTS, "reviewed", ".geoseg-explorer")

    # a review box over the quarter of the scene away from that object: A accepts all it selects
    with rasterio.open(SCENE) as src:
        h, w = src.height, src.width
    rows = slice(h // 2, h) if red_rows.start < h // 2 else slice(0, h // 2)
    cols = slice(w // 2, w) if red_cols.start < w // 2 else slice(0, w // 2)
    _drag_box(page, "review", _lonlat(rows, cols), then=lambda: page.wait_for_selector(".gs-selected"))
    selected = int(page.inner_text(".gs-selected").split()[0])
    assert 0 < selected < more - 1
    page.keyboard.press("a")

    # saved; the same run from the CLI over the same area gives the same objects
    nb.run(1)
    run = json.loads((folder / "run.json").read_text())
    assert run["threshold"] == pytest.approx(higher)
    out = folder / "cli.gpkg"
    result = CliRunner().invoke(main, [
        "segment", str(folder / SCENE.name), "-p", "red", "--backend", "colors", "-o", str(out),
        "--exemplars", str(folder / "boxes.gpkg"), "--bbox", ",".join(map(str, run["view"])),
        "--bbox-crs", "EPSG:4326"])
    assert result.exit_code == 0, result.output
    cli = pyogrio.read_dataframe(out)
    cli = cli[cli["score"] >= run["threshold"]]
    kept = pyogrio.read_dataframe(folder / "kept.gpkg")
    assert len(kept) == len(cli) == more
    tree = shapely.STRtree(cli.geometry.values)
    for geom in kept.geometry.values:
        hits = tree.query(geom, predicate="intersects")
        iou = max(shapely.area(shapely.intersection(geom, c)) / shapely.area(shapely.union(geom, c))
                  for c in cli.geometry.values[hits])
        assert iou >= 0.98
    assert (kept["review"] == "rejected").sum() == 1
    assert (kept["review"] == "accepted").sum() == selected
    assert kept["review"].isna().sum() == len(kept) - 1 - selected

    # a kernel restart: the state file brings back the results, the decision and the box
    nb.restart_kernel()
    nb.run(0)
    page.wait_for_function(f"+document.querySelector(\".gs-layer[data-label='red'] .gs-count\")?.textContent "
                           f"=== {more - 1}", timeout=60_000)
    back = json.loads(nb.run(2).strip().splitlines()[-1])
    assert back == {"shown": more - 1, "boxes": 1, "threshold": run["threshold"]}
    again = pyogrio.read_dataframe(folder / "again.gpkg")
    assert again.drop(columns="geometry").equals(kept.drop(columns="geometry"))
    assert shapely.equals(again.geometry.values, kept.geometry.values).all()

    # the object mode: one click outlines the one object under it
    page.click("button[data-mode='object']")
    green = max(_components(1), key=lambda b: (b[0].stop - b[0].start) * (b[1].stop - b[1].start))
    rows, cols = green
    w, s, e, n = _lonlat(slice(rows.start, rows.start + 40), slice(cols.start + 20, cols.stop - 20))
    page.mouse.click(*_on_page(page, (w + e) / 2, (s + n) / 2))
    page.wait_for_function("document.querySelector(\".gs-layer[data-label='object'] .gs-count\")?.textContent "
                           "=== '1'", timeout=60_000)
    screenshot(page, ARTIFACTS, "object", ".geoseg-explorer")
