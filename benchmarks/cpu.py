"""The CPU side of the pipeline with a model that costs nothing: how it scales
with worker processes (`cpu_workers`), and where the time goes.

An "instant" segmenter returns, for each tile, detections computed before the
timed run (the `colors` test segmenter's, looked up by a CRC of the tile's
pixels), so everything measured is the pipeline's own CPU work: reading,
masks -> pieces, staging, the seam merge, vectorising, areas, writing.
Scenes are generated with about 0, 20, 100 and 300 objects per 1008² tile.
Each run is a fresh process writing a GeoPackage as the CLI does.

    python benchmarks/cpu.py                              # 6144², 0/20/100/300 per tile, 0 and 1 workers
    python benchmarks/cpu.py --size 4096 --objects 100 --workers 0 1
    python benchmarks/cpu.py --read 20480 --write         # and the sparse 20k² scene against its bare read

"processes" counts the run's own process plus its `cpu_workers`. With
--write the tables replace the "CPU side" section of benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import cpu_name, write_section
from pipeline import machine

HERE = Path(__file__).resolve().parent
DATA = HERE / ".data"

CHILD = r"""
import json, resource, sys, tempfile, time, zlib
from geoseg.run import pipeline
from geoseg.run.engine import LocalEngine, read_ahead
from geoseg.run.inspection import inspect
from geoseg.io.raster import RasterSource
from geoseg.testing import ColorSegmenter
from geoseg.run.workers import Pool, default_workers

PROMPTS = ["red", "green", "blue"]

class Instant(ColorSegmenter):
    name = "instant"
    def __init__(self):
        super().__init__(batch_size=4)
        self.cache = {}
    def segment(self, tiles, prompts):
        return [self.cache[zlib.crc32(t)] for t in tiles]

path, workers = sys.argv[1], int(sys.argv[2])
seg = Instant()
settings = pipeline.Settings.of(PROMPTS, cpu_workers=workers)
info = inspect(path, tile_size=settings.tile_size, overlap=settings.overlap, read=settings.read)
with RasterSource(path, settings.read) as src:  # the detections, before the clock starts
    for tile, rgb, valid in read_ahead(src, list(info.plan), depth=4):
        if valid.any():
            seg.cache[zlib.crc32(rgb)] = ColorSegmenter.segment(seg, rgb[None], PROMPTS)[0]
if workers:  # the fork server's start (imports, once per process: ~1.5 s here) is left out of the clock
    with Pool(1) as pool:
        pool.submit(default_workers).result()
out = tempfile.mkdtemp() + "/out.gpkg"
t = time.perf_counter()
summary = pipeline.run([path], settings, LocalEngine(seg), output=out)
seconds = time.perf_counter() - t
assert summary.files[0].objects or not any(len(d) for d in seg.cache.values()), "no object found"
p = summary.profile
print(json.dumps({"seconds": seconds, "tiles": summary.files[0].tiles, "objects": summary.files[0].objects,
                  "profile": {k: getattr(p, k) for k in ("read", "model", "post", "stage", "merge", "write")},
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

READ = r"""
import json, sys, time
from geoseg.run import pipeline
from geoseg.run.engine import read_ahead
from geoseg.run.inspection import inspect
from geoseg.io.raster import RasterSource
path = sys.argv[1]
settings = pipeline.Settings.of(["red"])
info = inspect(path, tile_size=settings.tile_size, overlap=settings.overlap, read=settings.read)
t = time.perf_counter()
with RasterSource(path, settings.read) as src:
    for _ in read_ahead(src, list(info.plan), depth=8):
        pass
print(json.dumps({"seconds": time.perf_counter() - t}))
"""


def dense_scene(size: int, per_tile: int) -> Path:
    from geoseg.testing.scenes import write_large_scene

    DATA.mkdir(exist_ok=True)
    path = DATA / f"dense_{size}_{per_tile}.tif"
    if not path.exists():
        write_large_scene(path, size, objects_per_mpx=per_tile / 1.016, seed=per_tile + 1, r_range=(8, 30))
    return path


def child(code: str, *args: object) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True)
    if out.returncode:
        sys.exit(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=6144, help="side of the dense scenes (px)")
    ap.add_argument("--objects", type=int, nargs="+", default=[0, 20, 100, 300], help="objects per tile")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1], help="cpu_workers to compare")
    ap.add_argument("--repeats", type=int, default=1, help="runs per point; the best is kept")
    ap.add_argument("--read", type=int, default=None, metavar="SIZE",
                    help="also compare with the bare tile read on the sparse SIZE² scene of scale.py")
    ap.add_argument("--write", action="store_true", help="write the tables into benchmarks/README.md")
    args = ap.parse_args()
    rows = []
    for per_tile in args.objects:
        path = dense_scene(args.size, per_tile)
        for w in args.workers:
            r = min((child(CHILD, path, w) for _ in range(args.repeats)), key=lambda r: r["seconds"])
            r.update(per_tile=per_tile, workers=w, tiles_per_s=r["tiles"] / r["seconds"])
            rows.append(r)
            print(f"{per_tile} objects/tile, {w} workers: {r['tiles_per_s']:.1f} tiles/s "
                  f"({r['seconds']:.2f} s, {r['objects']} objects, {r['peak_rss_mb']:.0f} MB)", file=sys.stderr)
    base = {r["per_tile"]: r["tiles_per_s"] for r in rows if r["workers"] == min(args.workers)}
    table = ["| objects / tile | processes | tiles / s | vs 1 process | tiles / s per core "
             "| read | post | stage | merge | vectorise+write | peak RSS (MB) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        procs = r["workers"] + 1
        p = r["profile"]
        table.append(f"| {r['per_tile']} | {procs} | {r['tiles_per_s']:.1f} | "
                     f"{r['tiles_per_s'] / base[r['per_tile']]:.2f}x | {r['tiles_per_s'] / procs:.1f} | "
                     f"{p['read']:.2f} | {p['post']:.2f} | {p['stage']:.2f} | {p['merge']:.2f} | "
                     f"{p['write']:.2f} | {r['peak_rss_mb']:.0f} |")
    text = "\n".join(table)
    print(text)
    read_text = ""
    if args.read:
        path = DATA / f"sparse_{args.read}.tif"
        if not path.exists():
            sys.exit(f"{path}: run `python benchmarks/scale.py --sizes {args.read}` first to make it")
        bare = child(READ, path)["seconds"]
        fulls = {w: child(CHILD, path, w)["seconds"] for w in args.workers}
        read_text = "\n".join(
            ["| raster | processes | bare tile read (s) | whole pipeline (s) | pipeline / read |",
             "|---|---:|---:|---:|---:|"]
            + [f"| {args.read}² sparse | {w + 1} | {bare:.1f} | {s:.1f} | {s / bare:.1f}x |" for w, s in fulls.items()])
        print(read_text)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "cpu.json").write_text(json.dumps({"machine": machine(), "size": args.size, "rows": rows},
                                                          indent=2))
    if args.write:
        given = " ".join(a for a in sys.argv[1:] if a != "--write")
        section = (f"## CPU side\n\n`python benchmarks/cpu.py {given}` "
                   f"({time.strftime('%Y-%m-%d')}, {cpu_name()}, {os.cpu_count()} cores; {args.size}² dense "
                   "scenes, instant segmenter, 3 prompts, tile 1008, overlap 128, batch 4, GeoPackage output):\n\n"
                   f"{text}\n\n" + (read_text + "\n\n" if read_text else "")
                   + "Processes: the run's own plus `--cpu-workers`. Stage columns are busy seconds summed over "
                   "threads and processes (`--profile`). \"tiles / s per core\" divides by the processes, to "
                   "project a machine with more cores while the run's own process keeps up. Peak RSS is the "
                   "run's own process; each worker adds about 80 MB of private memory (170 MB RSS, the rest "
                   "shared with the fork server).\n\n"
                   "What the workers take: vectorising, areas, reprojection and the area filter. What stays in "
                   "the run's own process: reading (GIL-free in GDAL, but a core's worth of decoding), the model, "
                   "masks -> pieces (inside the segment step that refinement needs whole), staging, the seam merge "
                   "and writing. Those set the rate once the workers keep up: more workers cannot pass it.\n")
        write_section("CPU side", section)


if __name__ == "__main__":
    main()
