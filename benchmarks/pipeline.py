"""End-to-end pipeline throughput and memory with a fast test segmenter.

Generates sparse RGB GeoTIFFs (about 65 discs per Mpx, so ~65 objects per
1008² tile, many crossing seams), runs `geoseg.segment` on each in a fresh
process with the `colors` test segmenter, and reports Mpx/s and peak RSS.

    python benchmarks/pipeline.py                 # 2k, 8k, 20k
    python benchmarks/pipeline.py --sizes 2048 4096 --write

Scenes are cached in benchmarks/.data (ignored by git). With --write the table
replaces the "Pipeline" section of benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from common import cpu_name, write_section

HERE = Path(__file__).resolve().parent
DATA = HERE / ".data"

CHILD = r"""
import json, resource, sys, time
import geoseg
from geoseg.testing import ColorSegmenter
path = sys.argv[1]
t = time.perf_counter()
gdf = geoseg.segment(path, ["red", "green", "blue"], segmenter=ColorSegmenter(batch_size=4))
seconds = time.perf_counter() - t
print(json.dumps({"seconds": seconds, "objects": len(gdf),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def scene(size: int) -> tuple[Path, int]:
    from geoseg.testing.scenes import write_large_scene

    DATA.mkdir(exist_ok=True)
    path = DATA / f"scene_{size}.tif"
    meta = path.with_suffix(".json")
    if not path.exists() or not meta.exists():
        n = write_large_scene(path, size, seed=size)
        meta.write_text(json.dumps({"discs": n}))
    return path, json.loads(meta.read_text())["discs"]


def machine() -> str:
    return f"{cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192, 20480])
    ap.add_argument("--write", action="store_true", help="write the table into benchmarks/README.md")
    args = ap.parse_args()
    rows = []
    for size in args.sizes:
        path, discs = scene(size)
        out = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        mpx = size * size / 1e6
        rows.append({"size": size, "mpx": mpx, "discs": discs, **r, "mpx_per_s": mpx / r["seconds"]})
        print(f"{size}²: {r['seconds']:.1f} s, {mpx / r['seconds']:.1f} Mpx/s, {r['objects']} objects, "
              f"peak RSS {r['peak_rss_mb']:.0f} MB", file=sys.stderr)
    table = ["| raster | Mpx | objects | time (s) | Mpx/s | peak RSS (MB) |", "|---|---:|---:|---:|---:|---:|"]
    table += [f"| {r['size']}² | {r['mpx']:.0f} | {r['objects']} | {r['seconds']:.1f} | {r['mpx_per_s']:.1f} "
              f"| {r['peak_rss_mb']:.0f} |" for r in rows]
    text = "\n".join(table)
    print(text)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "pipeline.json").write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))
    if args.write:
        section = (f"## Pipeline\n\n`python benchmarks/pipeline.py` ({time.strftime('%Y-%m-%d')}, {machine()}; "
                   f"`colors` test segmenter, 3 prompts, tile 1008, overlap 128, deflate-compressed tiled GeoTIFF):\n\n"
                   f"{text}\n\n"
                   "Time is the wall time of `geoseg.segment` in a fresh process (imports excluded): read, "
                   "segment, merge, vectorise, areas. Peak RSS is the process maximum, about 170 MB of which is the "
                   "imported libraries. Targets: >= 20 Mpx/s and < 1 GB at 20k². At 2k² (9 tiles) fixed costs "
                   "dominate. Detections are staged on disk and merged one row of tiles at a time, so memory does "
                   "not grow with their number (see the Scale section); GDAL's block cache is bounded to about one "
                   "row of tiles.\n")
        write_section("Pipeline", section)


if __name__ == "__main__":
    main()
