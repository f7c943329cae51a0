"""Make docs/quickstart.png: notebook 1's figure (trees over OSBS_029, axes in metres, scale bar),
and docs/dense.png: a saturated tile and its refinement (the deterministic test backend, no weights).

    python docs/make_figures.py            # real SAM 3 from the Hugging Face cache
    GEOSEG_MODEL=DIR python docs/make_figures.py

Without usable weights it draws the sample's 61 reference trees instead, and says so in the title.
"""

from __future__ import annotations

import os
import pathlib

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import matplotlib  # noqa: E402

matplotlib.use("Agg")

import geoseg  # noqa: E402
from geoseg.errors import ModelLoadError  # noqa: E402
from geoseg.io.vectors import read_vector  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
RASTER = ROOT / "sample_data" / "OSBS_029.tif"


def main() -> None:
    model = os.environ.get("GEOSEG_MODEL", "facebook/sam3")
    try:
        trees = geoseg.segment(RASTER, "tree", model=model)
        title = f"SAM 3 ({pathlib.Path(model).name}): {len(trees)} trees"
    except ModelLoadError as err:
        print(f"no SAM 3 weights ({err}); drawing the reference trees instead")
        trees = read_vector(ROOT / "sample_data" / "OSBS_029_trees.gpkg")
        title = f"OSBS_029: the {len(trees)} reference trees (run with SAM 3 weights for detections)"
    ax = geoseg.plot(RASTER, trees, title=title, figsize=(7, 7))
    out = ROOT / "docs" / "quickstart.png"
    ax.figure.savefig(out, dpi=90, bbox_inches="tight")
    print(f"wrote {out}")


def dense() -> None:
    """A 256 px tile of ~240 small objects, segmented by a backend that returns at most 40 per prompt:
    the plain tile (left) and its 2 x 2 refinement (right)."""
    import tempfile

    import matplotlib.pyplot as plt
    import rasterio
    from matplotlib.patches import Rectangle

    from geoseg.core.tiling import plan_tiles
    from geoseg.testing import CountingSegmenter, draw, write_geotiff
    from geoseg.testing.scenes import random_objects

    size, prompts = 1024, ["red", "green", "blue"]
    tile = plan_tiles(size, size, 256, 32).tile(12).window
    sub = plan_tiles(256, 256, 136, 16)
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.6))
    with tempfile.TemporaryDirectory() as tmp:
        path = write_geotiff(f"{tmp}/dense.tif", draw(size, size, random_objects(size, size, 3000, seed=1,
                                                                                 r_range=(3, 6))))
        with rasterio.open(path) as src:
            rgb = src.read(window=((tile.row, tile.row_stop), (tile.col, tile.col_stop))).transpose(1, 2, 0)
            inverse = ~src.transform
        for ax, depth in zip(axes, (0, 2)):
            gdf = geoseg.segment(path, prompts, segmenter=CountingSegmenter(max_objects=40), tile_size=256,
                                 overlap=32, refine_depth=depth, cpu_workers=0)
            ax.imshow(rgb, extent=(0, 256, 256, 0))
            n = 0
            for geom in gdf.geometry:
                xs, ys = geom.exterior.xy if geom.geom_type == "Polygon" else geom.geoms[0].exterior.xy
                px = [inverse @ xy for xy in zip(xs, ys)]
                cols, rows = [c - tile.col for c, _ in px], [r - tile.row for _, r in px]
                if min(cols) < 256 and max(cols) > 0 and min(rows) < 256 and max(rows) > 0:
                    ax.plot(cols, rows, color="white", lw=0.8)
                    n += 1
            if depth:
                for t in sub:
                    w = t.window
                    ax.add_patch(Rectangle((w.col, w.row), w.width, w.height, fill=False, ec="yellow", lw=1.2,
                                           ls="--"))
                ax.set_title(f"refined: 4 sub-tiles of 136 px (level 1), {n} objects")
            else:
                ax.set_title(f"saturated: the model's 40 per prompt, {n} objects")
            ax.set_xlim(0, 256)
            ax.set_ylim(256, 0)
            ax.set_xticks([])
            ax.set_yticks([])
    out = ROOT / "docs" / "dense.png"
    fig.savefig(out, dpi=80, bbox_inches="tight")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
    dense()
