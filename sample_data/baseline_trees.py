"""A tiny classical tree-crown detector for the OSBS sample: a baseline, not a model.

Excess green (2g - r - b on chromatic coordinates), smoothed and thresholded
with Otsu's method; the vegetation mask is cut into crowns around the maxima
of its distance transform (crown tops at least `--min-distance` pixels apart),
each vegetation pixel going to its nearest top (a Voronoi split of the mask).
Each crown is written as its bounding box (the reference is boxes) with
`score` = the crown's mean excess green, ready for `geoseg evaluate --sweep score`.
Only numpy and scipy.ndimage.

Run:  python sample_data/baseline_trees.py [-o baseline.gpkg] && \
      geoseg evaluate baseline.gpkg sample_data/OSBS_029_trees.gpkg --class-agnostic --sweep score
"""

from __future__ import annotations

import argparse
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
from scipy import ndimage as ndi
from shapely import box

HERE = Path(__file__).resolve().parent


def otsu(values: np.ndarray, bins: int = 256) -> float:
    """The threshold maximising the between-class variance."""
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres) / np.maximum(w0, 1)
    m1 = (np.sum(hist * centres) - np.cumsum(hist * centres)) / np.maximum(w1, 1)
    return float(centres[np.argmax(w0 * w1 * (m0 - m1) ** 2)])


def detect(rgb: np.ndarray, valid: np.ndarray, *, sigma: float = 2.0, min_distance: int = 10,
           min_pixels: int = 150) -> tuple[np.ndarray, np.ndarray]:
    """Crown labels (0 = background) and the excess-green image."""
    r, g, b = (rgb[..., k].astype(float) for k in range(3))
    total = r + g + b + 1e-6
    exg = ndi.gaussian_filter((2 * g - r - b) / total, sigma)
    veg = (exg > otsu(exg[valid])) & valid
    veg = ndi.binary_opening(veg, iterations=2)
    dist = ndi.distance_transform_edt(veg)
    peaks = (dist == ndi.maximum_filter(dist, size=2 * min_distance + 1)) & (dist > 3)
    markers, _ = ndi.label(peaks)
    # each vegetation pixel goes to its nearest crown top (a Voronoi split of the mask)
    _, (rows, cols) = ndi.distance_transform_edt(markers == 0, return_indices=True)
    crowns = np.where(veg, markers[rows, cols], 0)
    sizes = np.bincount(crowns.ravel())
    crowns[sizes[crowns] < min_pixels] = 0
    return crowns, exg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("raster", nargs="?", default=str(HERE / "OSBS_029.tif"))
    ap.add_argument("-o", "--output", default="baseline_trees.gpkg")
    ap.add_argument("--min-distance", type=int, default=10, help="Least distance between crown tops, pixels.")
    args = ap.parse_args()
    with rasterio.open(args.raster) as src:
        rgb = np.moveaxis(src.read([1, 2, 3]), 0, -1)
        valid = src.dataset_mask() > 0
        t, crs = src.transform, src.crs
    crowns, exg = detect(rgb, valid, min_distance=args.min_distance)
    rows = []
    for k, sl in enumerate(ndi.find_objects(crowns), 1):
        if sl is None:
            continue
        (r0, r1), (c0, c1) = (sl[0].start, sl[0].stop), (sl[1].start, sl[1].stop)
        x0, y0 = t @ (c0, r1)
        x1, y1 = t @ (c1, r0)
        rows.append({"label": "tree", "score": float(exg[crowns == k].mean()), "geometry": box(x0, y0, x1, y1)})
    gdf = gpd.GeoDataFrame(rows, geometry="geometry", crs=crs)
    gdf.to_file(args.output)
    print(f"{args.output}: {len(gdf)} crowns")


if __name__ == "__main__":
    main()
