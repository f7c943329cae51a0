"""What a person feels in the explorer, measured in a real JupyterLab in headless Chromium.

- first objects: from pressing Run to the first frame drawing objects, with a model taking
  `--model-time` s per tile (the `colors` backend with that delay, one tile a batch), against
  the target "one tile's model time + 0.5 s";
- 100,000 polygons: from their message reaching the browser to the first frame drawing them,
  then the frame time while panning;
- the score slider over those 100,000: from the input event to the frame drawn.

Run: python benchmarks/explore.py [--polygons 100000] [--model-time 2]
(needs the test extra and /usr/bin/chromium). WebGL here is whatever the browser gets: on a
machine without a GPU, Chromium's software rasteriser (SwiftShader), so the draw figures are
an upper bound of what a laptop's GPU gives.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import geopandas as gpd
import nbformat
import numpy as np
import rasterio
import shapely

from geoseg.testing.browser import Notebook, chromium, lab

ROOT = Path(__file__).parent.parent
SCENE = ROOT / "sample_data" / "seam_scene.tif"


def many_polygons(n: int, seed: int = 0) -> gpd.GeoDataFrame:
    """`n` small 16-sided discs over the seam scene, with scores uniform in [0, 1]."""
    rng = np.random.default_rng(seed)
    with rasterio.open(SCENE) as src:
        x0, y0, x1, y1 = src.bounds
        crs = src.crs
    cx, cy = rng.uniform(x0, x1, n), rng.uniform(y0, y1, n)
    r = rng.uniform(0.5, 3.0, n)
    a = np.linspace(0, 2 * np.pi, 17)[:-1]
    rings = np.stack([cx[:, None] + r[:, None] * np.cos(a), cy[:, None] + r[:, None] * np.sin(a)], axis=-1)
    geoms = shapely.polygons(np.concatenate([rings, rings[:, :1]], axis=1))
    return gpd.GeoDataFrame({"label": "many", "score": rng.uniform(0, 1, n), "area_m2": shapely.area(geoms),
                             "n_tiles": 1, "level": 0}, geometry=geoms, crs=crs)


def wait_timing(page, key: str, timeout: float = 300) -> float:
    page.wait_for_function(f"() => document.querySelector('.geoseg-explorer').timings['{key}'] !== undefined",
                           timeout=timeout * 1000)
    return float(page.evaluate(f"() => document.querySelector('.geoseg-explorer').timings['{key}']"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--polygons", type=int, default=100_000)
    ap.add_argument("--model-time", type=float, default=2.0, help="seconds per tile of the stand-in model")
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="geoseg-explore-bench-"))
    shutil.copy(SCENE, folder / SCENE.name)
    many_polygons(args.polygons).to_file(folder / "many.gpkg")
    cells = [f'import geoseg\nex = geoseg.explore("{SCENE.name}", backend="colors", basemap=None, '
             f'delay={args.model_time}, batch_size=1, tile_size=512, overlap=64)\nex',
             'ex.add("many.gpkg")']
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, folder / "bench.ipynb")
    out: dict[str, float] = {"model_time_s": args.model_time, "polygons": args.polygons}
    with lab(folder) as url, chromium() as page:
        notebook = Notebook(page, url, "bench.ipynb")
        notebook.run(0)
        page.wait_for_selector(".geoseg-explorer canvas", timeout=60_000)
        page.click(".gs-prompt")
        page.keyboard.type("red")
        page.click(".gs-run")
        out["first_objects_s"] = wait_timing(page, "first_objects") / 1000
        print("first objects drawn after", out["first_objects_s"], "s", flush=True)
        page.wait_for_function("() => /objects found/.test(document.querySelector('.gs-status').textContent)",
                               timeout=600_000)

        print("the run ended", flush=True)
        t = time.perf_counter()
        notebook.run(1, timeout=600)
        out["add_cell_s"] = time.perf_counter() - t
        page.wait_for_function(f"() => +document.querySelector(\".gs-layer[data-label='many'] .gs-count\")"
                               f"?.textContent > {args.polygons // 4}", timeout=600_000)
        out["draw_polygons_ms"] = wait_timing(page, "results")
        print(args.polygons, "polygons drawn in", out["draw_polygons_ms"], "ms", flush=True)

        slider, script = [], []
        for value in (0.8, 0.2, 0.6, 0.4):
            page.evaluate("""(v) => { const el = document.querySelector('.geoseg-explorer');
                delete el.timings.slider; const s = el.querySelector('.gs-threshold');
                s.value = String(v); s.dispatchEvent(new Event('input')); }""", value)
            slider.append(wait_timing(page, "slider"))
            script.append(wait_timing(page, "slider_js"))
            print("slider", value, slider[-1], "ms, of which", script[-1], "ms in the input handler", flush=True)
        out["slider_ms_median"] = statistics.median(slider)
        out["slider_ms_max"] = max(slider)
        out["slider_handler_ms_median"] = statistics.median(script)

        frames = page.evaluate("""async () => {
            const deck = document.querySelector('.geoseg-explorer').deck;
            const vs = deck.viewManager.getViewState();
            const times = [];
            for (let k = 0; k < 10; k++) {
              const t = performance.now();
              deck.setProps({ initialViewState: { ...vs, longitude: vs.longitude + k * 2e-5 } });
              await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
              times.push((performance.now() - t) / 2);
            }
            return times; }""")
        out["pan_frame_ms_median"] = statistics.median(frames)
    shutil.rmtree(folder, ignore_errors=True)
    out["first_objects_target_s"] = args.model_time + 0.5
    print(json.dumps(out, indent=1))
    data = ROOT / "benchmarks" / ".data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "explore.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
