"""Memory and speed at any raster size, and whether the model is kept busy.

Generates sparse RGB GeoTIFFs (tiled, deflate; random discs, many crossing
tile seams) of 4k², 16k² and 40k² px and runs the staged pipeline on each in a
fresh process, writing a GeoPackage as the CLI does, with the `colors` test
segmenter. Two passes per size:

- "fast": the segmenter as fast as it goes: Mpx/s and peak RSS (the whole
  process: no model weights here). Target: peak RSS < 1.5 GB at every size,
  time linear in area.
- "fixed": the segmenter sleeps `--delay` s per batch of 4 tiles, as a GPU's
  forward pass takes a fixed time. Reading runs ahead of it and merging behind
  it, so the wall time should be within 10 % of the time spent in the
  segmenter.

    python benchmarks/scale.py                        # 4k, 16k, 40k
    python benchmarks/scale.py --sizes 4096 --write

With --region, a region scene instead: a green forest over the whole raster
with round clearings (holes) and a blue river across 80 % of its width
(`geoseg.testing.scenes.write_region_scene`, written strip by strip), segmented
by `geoseg segment` in a fresh process with the default CPU workers. Peak
memory is the sum of the peak resident memory (VmHWM) of every process of the
run: the run's own, the fork server and the CPU workers. An object past
`geoseg.core.merge.SPLIT` vertices comes in strips sharing its `object_id`:
objects are counted by `object_id`, features apart. Targets: 20,000² <
1.5 GB and 50,000² < 2 GB with the `colors` backend, < 2 GB at 20,000² with
the random tiny SAM 3 (`--backend sam3-tiny`: prompt "tree"):

    python benchmarks/scale.py --region --sizes 5000 20000 50000 --write
    python benchmarks/scale.py --region --backend sam3-tiny --sizes 20000 --write

Scenes are cached in benchmarks/.data (ignored by git). With --write the table
replaces the "Scale" (or "Regions") section of benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import write_section
from pipeline import machine

from geoseg.testing.memory import run_measured

HERE = Path(__file__).resolve().parent
DATA = HERE / ".data"

CHILD = r"""
import json, resource, sys, time
from geoseg.run import pipeline
from geoseg.run.engine import LocalEngine
from geoseg.testing import ColorSegmenter

class Timed(ColorSegmenter):
    busy = 0.0
    def segment(self, tiles, prompts):
        t = time.perf_counter()
        try:
            return super().segment(tiles, prompts)
        finally:
            self.busy += time.perf_counter() - t

path, out, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
seg = Timed(batch_size=4, delay=delay)
settings = pipeline.Settings.of(["red", "green", "blue"])
t = time.perf_counter()
summary = pipeline.run([path], settings, LocalEngine(seg), output=out)
seconds = time.perf_counter() - t
print(json.dumps({"seconds": seconds, "busy": seg.busy, "objects": summary.files[0].objects,
                  "tiles": summary.files[0].tiles,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def scene(size: int, per_mpx: float) -> tuple[Path, int]:
    from geoseg.testing.scenes import write_large_scene

    DATA.mkdir(exist_ok=True)
    path = DATA / f"sparse_{size}.tif"
    meta = path.with_suffix(".json")
    if not path.exists() or not meta.exists() or json.loads(meta.read_text()).get("per_mpx") != per_mpx:
        t = time.perf_counter()
        n = write_large_scene(path, size, objects_per_mpx=per_mpx, seed=size)
        meta.write_text(json.dumps({"discs": n, "per_mpx": per_mpx}))
        print(f"wrote {path.name} ({n} discs) in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    return path, json.loads(meta.read_text())["discs"]


def measure(path: Path, delay: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run([sys.executable, "-c", CHILD, str(path), str(Path(tmp) / "out.gpkg"), str(delay)],
                             capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def region_scene(size: int) -> tuple[Path, dict[str, int]]:
    from geoseg.testing.scenes import write_region_scene

    DATA.mkdir(exist_ok=True)
    path = DATA / f"region_{size}.tif"
    meta = path.with_suffix(".json")
    if not path.exists() or not meta.exists():
        t = time.perf_counter()
        meta.write_text(json.dumps(write_region_scene(path, size)))
        print(f"wrote {path.name} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    return path, json.loads(meta.read_text())


def tiny_sam3() -> Path:
    from geoseg.testing import build_tiny_sam3

    folder = DATA / "tiny_sam3"
    if not (folder / "config.json").exists():
        build_tiny_sam3(folder)
    return folder


def measure_region(path: Path, backend: str) -> dict:
    import pyogrio
    import shapely

    cli = str(Path(sys.executable).with_name("geoseg"))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.gpkg"
        if backend == "colors":
            args = ["-p", "green", "-p", "blue", "--backend", "colors"]
        else:
            args = ["-p", "tree", "--backend", "sam3", "--model", str(tiny_sam3())]
        run = run_measured([cli, "segment", str(path), *args, "-o", str(out), "-q"],
                           env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if run.returncode:
            raise SystemExit(run.stderr)
        gdf = pyogrio.read_dataframe(out)
    vertices = shapely.get_num_coordinates(gdf.geometry.values)
    areas = gdf.groupby("label").geometry.apply(lambda g: float(g.area.sum()))
    per_object = gdf.assign(v=vertices).groupby("object_id")["v"].sum()  # a region past merge.SPLIT: its strips
    return {"seconds": run.seconds, "objects": int(gdf["object_id"].nunique()), "features": len(gdf),
            "vertices": int(vertices.sum()), "most_vertices": int(per_object.max()) if len(gdf) else 0,
            "most_feature_vertices": int(vertices.max()) if len(gdf) else 0,
            "peak_sum_mb": run.peak_mb, "largest_process_mb": max(run.peaks_mb.values()),
            "processes": len(run.peaks_mb),
            "process_mb": sorted((round(v) for v in run.peaks_mb.values()), reverse=True),
            "area_px": {k: v / 0.25 for k, v in areas.items()}}


def regions(args: argparse.Namespace) -> None:
    rows = []
    for size in args.sizes:
        path, painted = region_scene(size)
        r = measure_region(path, args.backend)
        row = {"size": size, "backend": args.backend, **r, "painted_px": painted}
        if args.backend == "colors":
            row["area_error"] = {k: r["area_px"].get(k, 0.0) / n - 1 for k, n in painted.items()}
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    table = ["| raster | backend | objects (features) | vertices (largest object; feature) | time (s) | "
             "peak RSS, sum (MB) | largest process (MB) | area vs painted |", "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        err = ", ".join(f"{k} {v:+.4%}" for k, v in r.get("area_error", {}).items()) or "-"
        table.append(f"| {r['size']:,}² | {r['backend']} | {r['objects']} ({r['features']}) | {r['vertices']:,} "
                     f"({r['most_vertices']:,}; {r['most_feature_vertices']:,}) "
                     f"| {r['seconds']:.0f} | {r['peak_sum_mb']:.0f} | {r['largest_process_mb']:.0f} | {err} |")
    text = "\n".join(table)
    print(text)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / f"scale_regions_{args.backend}.json").write_text(
        json.dumps({"machine": machine(), "rows": rows}, indent=2))
    if args.write:
        command = " ".join(["python benchmarks/scale.py", *sys.argv[1:]])
        section = (f"## Regions ({args.backend})\n\n`{command}` ({time.strftime('%Y-%m-%d')}, {machine()}; "
                   "region scene: a forest over the whole raster with round clearings and a river across 80 % "
                   "of it; `geoseg segment` with the default CPU workers and simplification; peak RSS summed "
                   "over every process of the run)\n\n"
                   + text + "\n")
        write_section(f"Regions ({args.backend})", section)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=None,
                    help="raster sizes (default: 4096 16384 40960; with --region 5000 20000 50000)")
    ap.add_argument("--region", action="store_true", help="the region scene (forest, clearings, river)")
    ap.add_argument("--backend", choices=["colors", "sam3-tiny"], default="colors", help="with --region")
    ap.add_argument("--per-mpx", type=float, default=20.0, help="discs per million pixels (sparse)")
    ap.add_argument("--delay", type=float, default=0.2, help="seconds per batch of 4 tiles in the fixed pass")
    ap.add_argument("--fixed-sizes", type=int, nargs="*", default=None,
                    help="sizes for the fixed-time pass (default: all)")
    ap.add_argument("--write", action="store_true", help="write the tables into benchmarks/README.md")
    args = ap.parse_args()
    if args.region:
        args.sizes = args.sizes or [5000, 20000, 50000]
        regions(args)
        return
    args.sizes = args.sizes or [4096, 16384, 40960]
    fixed_sizes = args.sizes if args.fixed_sizes is None else args.fixed_sizes
    rows = []
    for size in args.sizes:
        path, discs = scene(size, args.per_mpx)
        mpx = size * size / 1e6
        for mode, delay in [("fast", 0.0), ("fixed", args.delay)]:
            if mode == "fixed" and size not in fixed_sizes:
                continue
            r = measure(path, delay)
            row = {"size": size, "mode": mode, "delay": delay, "mpx": mpx, "discs": discs, **r,
                   "mpx_per_s": mpx / r["seconds"], "s_per_gpx": r["seconds"] / mpx * 1e3,
                   "wall_over_busy": r["seconds"] / r["busy"]}
            rows.append(row)
            print(f"{size}² {mode}: {r['seconds']:.1f} s, {row['mpx_per_s']:.1f} Mpx/s, {r['objects']} objects, "
                  f"peak RSS {r['peak_rss_mb']:.0f} MB, segmenter busy {r['busy']:.1f} s "
                  f"(wall/busy {row['wall_over_busy']:.3f})", file=sys.stderr)
    fast = [r for r in rows if r["mode"] == "fast"]
    fixed = [r for r in rows if r["mode"] == "fixed"]
    table = ["| raster | Mpx | tiles | objects | time (s) | Mpx/s | s per Gpx | peak RSS (MB) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    table += [f"| {r['size']}² | {r['mpx']:.0f} | {r['tiles']} | {r['objects']} | {r['seconds']:.1f} | "
              f"{r['mpx_per_s']:.1f} | {r['s_per_gpx']:.0f} | {r['peak_rss_mb']:.0f} |" for r in fast]
    fed = ["| raster | tiles | segmenter busy (s) | wall (s) | wall / busy | peak RSS (MB) |",
           "|---|---:|---:|---:|---:|---:|"]
    fed += [f"| {r['size']}² | {r['tiles']} | {r['busy']:.1f} | {r['seconds']:.1f} | {r['wall_over_busy']:.3f} | "
            f"{r['peak_rss_mb']:.0f} |" for r in fixed]
    text = "\n".join(table) + "\n\n" + "\n".join(fed)
    print(text)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "scale.json").write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))
    if args.write:
        section = (
            f"## Scale\n\n`python benchmarks/scale.py` ({time.strftime('%Y-%m-%d')}, {machine()}; sparse "
            f"generated rasters, {args.per_mpx:g} discs per Mpx, deflate-compressed tiled GeoTIFF; `colors` test "
            "segmenter, 3 prompts, tile 1008, overlap 128, batch 4; GeoPackage written as the CLI does; each run "
            "in a fresh process).\n\n"
            "Fast pass, the segmenter as fast as it goes. Peak RSS is the whole process (no model weights "
            "here; about 200 MB is the imported libraries). Target: < 1.5 GB at every size, time linear in area "
            "(constant s per Gpx):\n\n"
            + "\n".join(table)
            + f"\n\nFixed pass: the segmenter sleeps {args.delay:g} s per batch of 4 tiles, as a GPU's forward pass "
            "takes a fixed time. Reading runs ahead of it in a thread, staging and the seam merge and "
            "vectorising run behind it in others. Target: wall time within 10 % of the time spent in the "
            "segmenter (wall / busy <= 1.10):\n\n"
            + "\n".join(fed) + "\n\nOn a small raster the fixed costs of a run weigh more: opening, the first "
            "read before the model can start, the last rows' merge and writing the output after it ends "
            "(about 0.4 s here).\n"
        )
        write_section("Scale", section)


if __name__ == "__main__":
    main()
