"""Dense scenes: recall and cost of refinement as objects per tile grow past the model's capacity.

A 2016 x 2016 px scene (3 x 3 tiles of 1008 px, overlap 128) of small discs at
100 to 2,000 objects per tile, segmented by the deterministic test backend
capped at 200 objects per tile and prompt (SAM 3's query count), three ways:
the plain plan (no refinement), the cascade (every tile starts at the plan's
level) and neighbour start (each tile starts at the level its finished
neighbours needed; the default). Recall: the share of the untiled truth's
objects matched one-to-one at IoU >= 0.98 (`geoseg evaluate`). Cost, both
ways: forward passes (images given to the model: what SAM 3's time follows,
as it resizes every tile and sub-tile to 1008 px) and pixels (what a model
run at native resolution pays), over the plain plan's. "Deepest alone": the
passes of segmenting every tile only at the deepest level reached
(9 x 4^level), the least any exact run can pay.

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


RUNS = {"plain": dict(refine_depth=0), "cascade": dict(neighbour_start=False), "neighbour": {}}


def run(per_tile: int, folder: Path) -> dict[str, float]:
    path = scene(folder / f"d{per_tile}.tif", per_tile)
    truth = geoseg.segment(path, "red", segmenter=CountingSegmenter(), tile_size=SIZE, overlap=0)
    row: dict[str, float] = {"objects_per_tile": per_tile, "objects": len(truth)}
    for name, options in RUNS.items():
        seg = CountingSegmenter(max_objects=CAP)
        t0 = time.perf_counter()
        got = geoseg.segment(path, "red", segmenter=seg, tile_size=TILE, overlap=OVERLAP, **options)
        row[f"{name}_seconds"] = round(time.perf_counter() - t0, 2)
        row[f"{name}_recall"] = round(recall(truth, got), 4)
        cost = got.attrs["geoseg"]["cost"]
        assert cost == {"forward_passes": seg.tiles, "pixels": seg.pixels}  # what the provenance says is paid
        row[f"{name}_passes"], row[f"{name}_pixels"] = seg.tiles, seg.pixels
        row[f"{name}_deepest"] = got.attrs["geoseg"]["refined"]["deepest_level"]
    row["deepest_alone"] = row["plain_passes"] * 4 ** max(row["cascade_deepest"], row["neighbour_deepest"])
    return row


def table(rows: list[dict[str, float]]) -> str:
    lines = ["| objects / tile | objects | recall: plain | cascade | neighbour | forward passes: plain | cascade "
             "| neighbour | deepest alone | neighbour ÷ deepest alone | pixels × plain: cascade | neighbour "
             "| deepest level | s: cascade | neighbour |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['objects_per_tile']} | {r['objects']} | {r['plain_recall']:.1%} | {r['cascade_recall']:.1%} | "
              f"{r['neighbour_recall']:.1%} | {r['plain_passes']} | {r['cascade_passes']} | {r['neighbour_passes']} | "
              f"{r['deepest_alone']} | {r['neighbour_passes'] / r['deepest_alone']:.3f} | "
              f"{r['cascade_pixels'] / r['plain_pixels']:.2f} | {r['neighbour_pixels'] / r['plain_pixels']:.2f} | "
              f"{r['neighbour_deepest']} | {r['cascade_seconds']:.1f} | {r['neighbour_seconds']:.1f} |"
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
            "and prompt as SAM 3 is: the plain plan, the cascade (`--no-neighbour-start`) and neighbour start "
            "(the default). Recall: truth objects matched one-to-one at IoU ≥ 0.98 (`geoseg evaluate`). Forward "
            "passes: images given to the model, what SAM 3's time follows (it resizes every tile and sub-tile to "
            "1008 px); deepest alone: every tile segmented only at the deepest level reached (9 × 4^level), the "
            "least an exact run can pay; pixels: what a model run at native resolution pays (see docs/dense.md)."
            "\n\n" + text + "\n"))


if __name__ == "__main__":
    main()
