"""The cost of exemplars with SAM 3: ms per 1008² tile with 0, 1 and 10 exemplar boxes.

Boxes are encoded once per run and level (`encode_exemplars`: a vision pass of the
box's tile and the geometry encoder), then their tokens join the prompt of every
tile: the vision encoder's cost per tile is the same, and only the heads see a longer
prompt (32 text tokens, plus the boxes' and one per box group). So this measures the
vision encoder once per tile, and the heads (`segment_features`) with 0, 1 and 10
boxes (one group) on the same features: ms per tile = vision + heads.

Weights are random (nothing is downloaded; see sam3_throughput.py): `--size tiny`
(tests' model), `small`, or `full` (the real 840M-parameter architecture; ~26 s per
tile on 2 CPU cores, so measure one tile).

    python benchmarks/exemplars.py --size tiny --write
    python benchmarks/exemplars.py --size full --tiles 1 --repeats 1 --write

Results go to benchmarks/results/exemplars_<device>_<size>.json; with --write the
"Exemplars" section of benchmarks/README.md is rebuilt from every such file.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from common import write_section
from sam3_throughput import machine, make_tiles

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

BOXES = (0, 1, 10)
NOTES = """\
ms per tile = the vision encoder's ms per tile (the same with or without boxes) + the heads'
with that many boxes (one group: 32 text tokens + boxes + 1); best of `repeats` rounds after
a warm-up, the configurations interleaved. No object passes the score threshold, so
post-processing (which scales with the objects found, as with text) is left out: this is
the model's cost. "encode" is the one-off cost of a group of boxes, paid once per run and
level: a vision pass of the boxes' tile and the geometry encoder. Random weights; fp32 on
the CPU; on a shared 2-core machine, differences of 10-20 % between rows are noise. The
full-size rows (2026-12-04) were measured while other jobs kept the machine's load average
near 5 (idle, its vision encoder takes ~26 s a tile): read their ratios, not their times."""


def boxes(n: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x0, y0 = rng.uniform(0, 900, (2, n))
    w, h = rng.uniform(20, 100, (2, n))
    return np.stack([x0, y0, x0 + w, y0 + h], axis=1)


def best(calls: dict[int, Any], repeats: int) -> dict[int, float]:
    """The best time of each call over `repeats` rounds, interleaved (a shared machine's noise
    falls on all alike), after a warm-up round."""
    times: dict[int, list[float]] = {k: [] for k in calls}
    for round_ in range(repeats + 1):
        for k, fn in calls.items():
            t = time.perf_counter()
            fn()
            if round_:
                times[k].append(time.perf_counter() - t)
    return {k: min(v) for k, v in times.items()}


def measure(folder: str, device: str, n_tiles: int, repeats: int) -> dict:
    from geoseg.backends.sam3 import Sam3Segmenter
    from geoseg.core.exemplars import EncodedExemplars

    # nothing passes the threshold: the model's own cost, not that of post-processing the objects the
    # random weights happen to find (which boxes change, as a text would)
    seg = Sam3Segmenter(model=folder, device=device, score_threshold=1.01, batch_size=n_tiles)
    tiles = make_tiles(n_tiles)
    vision = best({0: partial(seg.vision_features, tiles)}, repeats)[0] / n_tiles
    features = seg.vision_features(tiles)
    encoders = {n: partial(seg.encode_exemplars, tiles[0], boxes(n), np.ones(n, bool)) for n in BOXES if n}
    encode = best(encoders, repeats)
    given = {n: None if n == 0 else {"building": EncodedExemplars((encoders[n](),), True)} for n in BOXES}
    heads = best({n: partial(seg.segment_features, features, ["building"], given[n]) for n in BOXES}, repeats)
    rows = [{"boxes": n, "ms_per_tile": round(1000 * (vision + heads[n] / n_tiles), 1),
             "heads_ms": round(1000 * heads[n] / n_tiles, 1),
             "encode_ms": round(1000 * encode[n], 1) if n else None} for n in BOXES]
    return {"machine": machine(device), "tiles": n_tiles, "repeats": repeats, "vision_ms": round(1000 * vision, 1),
            "rows": rows}


def table(results: dict[str, dict]) -> str:
    lines = [f"## Exemplars\n\n{NOTES}\n",
             "| model | machine | boxes | ms per tile | heads ms | encode ms (once) | vs 0 boxes |",
             "|---|---|---|---|---|---|---|"]
    for name, r in sorted(results.items()):
        base = r["rows"][0]["ms_per_tile"]
        for row in r["rows"]:
            enc = "–" if row["encode_ms"] is None else f"{row['encode_ms']:g}"
            lines.append(f"| {name} | {r['machine']} | {row['boxes']} | {row['ms_per_tile']:g} | {row['heads_ms']:g} "
                         f"| {enc} | {100 * (row['ms_per_tile'] / base - 1):+.1f} % |")
    return "\n".join(lines) + ("\n\nRun: `python benchmarks/exemplars.py --size tiny --write`; "
                               "`--size full --tiles 1 --repeats 1` for the real architecture.\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=["tiny", "small", "full"], default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tiles", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--write", action="store_true", help="rebuild the README section from results/")
    ap.add_argument("--readme-only", action="store_true", help="only rebuild the README section from results/")
    args = ap.parse_args()
    if args.readme_only:
        write_section("Exemplars", table(_results()))
        return
    from geoseg.testing.sam3 import build_tiny_sam3

    folder = build_tiny_sam3(Path(tempfile.mkdtemp(prefix="sam3_exemplars_")), size=args.size, device=args.device)
    try:
        result = measure(str(folder), args.device, args.tiles, args.repeats)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    kind = "cuda" if args.device.startswith("cuda") else "cpu"
    out = HERE / "results" / f"exemplars_{kind}_{args.size}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if args.write:
        write_section("Exemplars", table(_results()))


def _results() -> dict[str, dict]:
    return {p.stem.removeprefix("exemplars_").replace("_", " "): json.loads(p.read_text())
            for p in sorted((HERE / "results").glob("exemplars_*.json"))}


if __name__ == "__main__":
    main()
