"""Make docs/quickstart.png: notebook 1's figure (trees over OSBS_029, axes in metres, scale bar).

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
from geoseg.evaluate import read_vector  # noqa: E402

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


if __name__ == "__main__":
    main()
