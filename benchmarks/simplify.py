"""The default simplification: vertices and fidelity before and after, on four scenes.

- seam: sample_data/seam_scene.tif (2048² px, discs and rectangles of 6-30 px
  radius across the seams), merged objects of the `colors` test backend;
- crowns: the tree crowns of sample_data/OSBS_029.tif (NEON, 400² px at 0.1 m)
  found by sample_data/baseline_trees.py (a classical detector: real crown
  outlines from a real image, touching each other);
- buildings: 400 generated footprints (rectangles and L shapes, 12-60 px,
  rotated at random) burnt into a 2000² px raster;
- region: the forest and river of benchmarks/scale.py --region at 5000² px.

For each tolerance (pixels), each object's polygon as `geoseg segment` writes
it (`geoseg.core.vectorize.to_frame`) against its pixel polygon (`--simplify
0`): vertices; IoU of the polygons; IoU of the pixels the polygon burns back
to at pixel centres (as `--raster-out` does) against the object's mask;
Hausdorff distance; and for objects touching each other, the area where their
simplified polygons overlap, per pixel of shared edge.

    python benchmarks/simplify.py [--tolerances 0.3 0.5 0.75 1.0] [--write]

With --write the table replaces the "Simplification" section of benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import rasterio
import shapely
import shapely.affinity
from affine import Affine
from common import write_section
from pipeline import machine
from rasterio.features import rasterize
from scipy import ndimage as ndi

from geoseg.core.merge import Instance, merge
from geoseg.core.tiling import plan_tiles
from geoseg.core.vectorize import mask_of, polygons, to_frame, trace
from geoseg.testing import ColorSegmenter, pieces_in_memory

HERE = Path(__file__).resolve().parent
SAMPLES = HERE.parent / "sample_data"


def from_labels(labels: np.ndarray) -> list[Instance]:
    return [Instance("x", 1.0, 1, sl[0].start, sl[1].start, labels[sl] == k)
            for k, sl in enumerate(ndi.find_objects(labels), 1) if sl is not None]


def merged(path: Path, prompts: list[str]) -> list[Instance]:
    with rasterio.open(path) as src:
        rgb = np.moveaxis(src.read(), 0, -1)
    plan = plan_tiles(*rgb.shape[:2], 1008, 128)
    return merge(pieces_in_memory(rgb, plan, ColorSegmenter(), prompts), plan, trace=trace)


def crowns() -> list[Instance]:
    sys.path.insert(0, str(SAMPLES))
    from baseline_trees import detect

    with rasterio.open(SAMPLES / "OSBS_029.tif") as src:
        rgb, valid = np.moveaxis(src.read([1, 2, 3]), 0, -1), src.dataset_mask() > 0
    return from_labels(detect(rgb, valid)[0])


def buildings(n: int = 400, size: int = 2000, seed: int = 0) -> list[Instance]:
    rng = np.random.default_rng(seed)
    labels = np.zeros((size, size), np.int32)
    for k in range(1, n + 1):  # later ones on top
        w, h = rng.uniform(12, 60, 2)
        p = shapely.box(-w / 2, -h / 2, w / 2, h / 2)
        if rng.random() < 0.4:  # an L
            p = p.difference(shapely.box(0, 0, w, h))
        p = shapely.affinity.rotate(p, rng.uniform(0, 90), origin=(0, 0))
        p = shapely.affinity.translate(p, *rng.uniform(50, size - 50, 2))
        labels[rasterize([p], out_shape=labels.shape, dtype="uint8") > 0] = k
    return from_labels(labels)


def region() -> list[Instance]:
    from scale import region_scene

    return merged(region_scene(5000)[0], ["green", "blue"])


def measure(instances: list[Instance], tol: float) -> dict:
    raw = np.array(polygons(instances, Affine.identity()), dtype=object)
    simple = np.array(to_frame(instances, Affine.identity(), None, source="", simplify=tol).geometry.values,
                      dtype=object)
    inter, union = shapely.area(shapely.intersection(raw, simple)), shapely.area(shapely.union(raw, simple))
    burnt_inter = burnt_union = 0
    pixel_iou = []
    for g, inst in zip(simple, instances):
        pad = 2  # a simplified edge may reach past the crop
        mask = np.pad(mask_of(inst), pad)
        back = rasterize([g], out_shape=mask.shape, transform=Affine.translation(inst.col - pad, inst.row - pad),
                         dtype="uint8").astype(bool)
        i, u = int((back & mask).sum()), int((back | mask).sum())
        burnt_inter, burnt_union = burnt_inter + i, burnt_union + u
        pixel_iou.append(i / u)
    a, b = shapely.STRtree(raw).query(raw, predicate="touches")
    a, b = a[a < b], b[a < b]
    shared = shapely.length(shapely.intersection(raw[a], raw[b])).sum()
    overlap = shapely.area(shapely.intersection(simple[a], simple[b])).sum()
    before, after = int(shapely.get_num_coordinates(raw).sum()), int(shapely.get_num_coordinates(simple).sum())
    return {"tolerance": tol, "objects": len(instances), "vertices_before": before, "vertices_after": after,
            "cut": before / after, "polygon_iou_total": float(inter.sum() / union.sum()),
            "polygon_iou_mean": float((inter / union).mean()), "pixel_iou_total": burnt_inter / burnt_union,
            "pixel_iou_mean": float(np.mean(pixel_iou)), "pixel_iou_min": float(np.min(pixel_iou)),
            "hausdorff_max": float(shapely.hausdorff_distance(raw, simple).max()),
            "touching_pairs": len(a), "overlap_per_shared_px": float(overlap / shared) if shared else 0.0,
            "valid": bool(shapely.is_valid(simple).all())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tolerances", type=float, nargs="+", default=[0.3, 0.5, 0.75, 1.0])
    ap.add_argument("--write", action="store_true", help="write the table into benchmarks/README.md")
    args = ap.parse_args()
    scenes = {"seam": lambda: merged(SAMPLES / "seam_scene.tif", ["red", "green", "blue"]), "crowns": crowns,
              "buildings": buildings, "region": region}
    rows = []
    for name, make in scenes.items():
        instances = make()
        for tol in args.tolerances:
            rows.append({"scene": name, **measure(instances, tol)})
            print(json.dumps(rows[-1]), file=sys.stderr)
    table = ["| scene | objects | tolerance (px) | vertices before -> after | cut | polygon IoU (total / mean) | "
             "pixel IoU (total / mean / min) | Hausdorff max (px) | overlap of neighbours (px per px of edge) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    table += [f"| {r['scene']} | {r['objects']} | {r['tolerance']:g} | {r['vertices_before']:,} -> "
              f"{r['vertices_after']:,} | {r['cut']:.1f}x | "
              f"{r['polygon_iou_total']:.4f} / {r['polygon_iou_mean']:.4f} | "
              f"{r['pixel_iou_total']:.4f} / {r['pixel_iou_mean']:.4f} / {r['pixel_iou_min']:.3f} | "
              f"{r['hausdorff_max']:.2f} | "
              + (f"{r['overlap_per_shared_px']:.3f} ({r['touching_pairs']} pairs)" if r["touching_pairs"] else "-")
              + " |" for r in rows]
    text = "\n".join(table)
    print(text)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "simplify.json").write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))
    if args.write:
        command = " ".join(["python benchmarks/simplify.py", *sys.argv[1:]])
        write_section("Simplification", f"## Simplification\n\n`{command}` "
                      f"({time.strftime('%Y-%m-%d')}, {machine()}):\n\n{text}\n")


if __name__ == "__main__":
    main()
