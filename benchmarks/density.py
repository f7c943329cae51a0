"""Dense scenes: recall and cost of refinement as objects per tile grow past the model's capacity.

A 2016 x 2016 px scene (3 x 3 tiles of 1008 px, overlap 128) of small discs at
100 to 2,000 objects per tile, segmented by the deterministic test backend
capped at 200 objects per tile and prompt (SAM 3's query count). Recall: the
share of the untiled truth's objects matched one-to-one at IoU >= 0.98
(`geoseg evaluate`); cost: pixels passed to the segmenter over the plain plan's.

    python benchmarks/density.py            # print the table
    python benchmarks/density.py --write    # also benchmarks/results/density.json and the README table
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import cpu_name, write_section  # noqa: E402

import geoseg  # noqa: E402
from geoseg.analysis.evaluate import evaluate  # noqa: E402
from geoseg.testing import CountingSegmenter, disc, draw, write_geotiff  # noqa: E402

SIZE, TILE, OVERLAP, CAP = 2016, 1008, 128, 200
DENSITIES = (100, 200, 500, 1000, 2000)


def scene(path: Path, per_tile: int, seed: int = 0) -> str:
    """Discs of radius 3-7 px, `per_tile` per 1008² px, on a jittered grid (few overlap)."""
    n = per_tile * SIZE * SIZE // (TILE * TILE)
    side = int(np.ceil(np.sqrt(n)))
    step = SIZE / side
    rng = np.random.default_rng(seed)
    cells = rng.permutation(side * side)[:n]
    r = np.minimum(rng.uniform(3, 7, n), 0.4 * step)
    cy = (cells // side + 0.5) * step + rng.uniform(-0.1, 0.1, n) * step
    cx = (cells % side + 0.5) * step + rng.uniform(-0.1, 0.1, n) * step
    objs = [disc("red", k, cy[k], cx[k], r[k]) for k in range(n)]
    return write_geotiff(path, draw(SIZE, SIZE, objs))


def recall(truth, got) -> float:
    """Share of truth objects matched one-to-one, at IoU >= 0.98, by an object of `got` (`geoseg evaluate`)."""
    return float(evaluate(got, truth, iou=0.98).score().recall)


def run(per_tile: int, folder: Path) -> dict[str, float]:
    path = scene(folder / f"d{per_tile}.tif", per_tile)
    truth = geoseg.segment(path, "red", segmenter=CountingSegmenter(), tile_size=SIZE, overlap=0)
    row: dict[str, float] = {"objects_per_tile": per_tile, "objects": len(truth)}
    plain_pixels = 0
    for name, depth in (("plain", 0), ("refined", 2)):
        seg = CountingSegmenter(max_objects=CAP)
        t0 = time.perf_counter()
        got = geoseg.segment(path, "red", segmenter=seg, tile_size=TILE, overlap=OVERLAP, refine_depth=depth)
        row[f"{name}_seconds"] = round(time.perf_counter() - t0, 2)
        row[f"{name}_recall"] = round(recall(truth, got), 4)
        plain_pixels = plain_pixels or seg.pixels
        row[f"{name}_cost"] = round(seg.pixels / plain_pixels, 2)
        if name == "refined":
            row["deepest_level"] = got.attrs["geoseg"]["refined"]["deepest_level"]
    return row


def table(rows: list[dict[str, float]]) -> str:
    lines = ["| objects / tile | objects | plain recall | refined recall | refined cost (× plain px) | deepest level "
             "| plain s | refined s |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['objects_per_tile']} | {r['objects']} | {r['plain_recall']:.1%} | {r['refined_recall']:.1%} | "
              f"{r['refined_cost']:.2f} | {r['deepest_level']} | {r['plain_seconds']:.1f} | "
              f"{r['refined_seconds']:.1f} |"
              for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="write results/density.json and the README table")
    parser.add_argument("--densities", default=",".join(map(str, DENSITIES)))
    args = parser.parse_args()
    logging.getLogger("geoseg").setLevel(logging.ERROR)  # the plain runs warn of every saturated tile
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run(int(d), Path(tmp)) for d in args.densities.split(",")]
    text = table(rows)
    print(text)
    if args.write:
        out = Path(__file__).resolve().parent / "results" / "density.json"
        out.write_text(json.dumps({"cpu": cpu_name(), "rows": rows}, indent=2) + "\n")
        write_section("Dense scenes", (
            "## Dense scenes\n\n"
            f"`python benchmarks/density.py --write` on {cpu_name()}: a {SIZE} × {SIZE} px scene of small discs "
            f"(3 × 3 tiles of {TILE} px, overlap {OVERLAP}), the test backend capped at {CAP} objects per tile "
            "and prompt as SAM 3 is. Recall: truth objects matched one-to-one at IoU ≥ 0.98 (`geoseg evaluate`); "
            "cost: pixels passed to the segmenter over the plain plan's (see docs/dense.md).\n\n" + text + "\n"))


if __name__ == "__main__":
    main()
