"""Reading a tile service: service tiles per second with 1, 2 and 8 connections, and the share of a
run's time spent waiting on the network.

A generated scene is cut into the 256 px tiles of zoom 17 and served by the test suite's local
HTTP server (`geoseg.testing.http.RangeServer`, a child process), which waits `--latency` seconds
before each answer, as a distant server would. Each configuration runs `geoseg.segment` with the
`colors` test segmenter twice over the same area: with an empty tile cache (fetching every tile)
and again with the cache full (no request). The difference is the time spent on the network.

    python benchmarks/web.py                     # 24 x 24 service tiles, 50 ms latency
    python benchmarks/web.py --tiles 12 --latency 0 --no-readme
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import geoseg
from geoseg.testing import ColorSegmenter
from geoseg.testing.http import RangeServer
from geoseg.testing.tiles import write_tiles

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_name, write_section  # noqa: E402


def run_once(url: str, bounds: tuple[float, float, float, float], cache: Path, connections: int) -> float:
    started = time.perf_counter()
    geoseg.segment(url, ["red", "green", "blue"], segmenter=ColorSegmenter(), tile_size=1008, overlap=128,
                   bbox=bounds, web_zoom=17, tile_cache=cache, max_connections=connections, max_tiles=100_000)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiles", type=int, default=24, help="service tiles per side of the scene")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds the server waits per request")
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 2, 8])
    parser.add_argument("--no-readme", action="store_true", help="print the table only")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="geoseg-web-bench-") as tmp:
        scene = write_tiles(Path(tmp) / "scene", columns=args.tiles, rows=args.tiles,
                            n_objects=args.tiles * args.tiles * 3)
        x0, y0, x1, y1 = scene.bounds
        inset = 200.0  # metres: the area and geoseg's margin (128 px of 1.19 m) stay inside the scene's tiles
        bounds = (x0 + inset, y0 + inset, x1 - inset, y1 - inset)
        with RangeServer(Path(tmp) / "scene" / "tiles") as server:
            url = server.url("") + "{z}/{x}/{y}.png"
            if args.latency:
                server.faults({"path": ".", "statuses": [200], "delay": args.latency})
            for n in args.connections:
                cache = Path(tmp) / f"cache-{n}"
                server.clear()
                cold = run_once(url, bounds, cache, n)
                fetched = sum(r.status == 200 for r in server.requests)
                most = max(r.active for r in server.requests)
                server.clear()
                warm = run_once(url, bounds, cache, n)
                assert not server.requests, "the second run should take every tile from the cache"
                network = max(cold - warm, 0.0)
                rows.append((n, fetched, cold, warm, fetched / network if network else float("inf"),
                             network / cold, most))
                print(f"{n} connections: {fetched} tiles, {cold:.1f} s cold, {warm:.1f} s warm", flush=True)
    px = args.tiles * 256
    table = ["| connections | service tiles | run, cache empty (s) | run, cache full (s) | tiles / s fetched "
             "| share of the run on the network | most requests at once |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for n, fetched, cold, warm, rate, share, most in rows:
        table.append(f"| {n} | {fetched} | {cold:.1f} | {warm:.1f} | {rate:.0f} | {share:.0%} | {most} |")
    cmd = " ".join(["python", "benchmarks/web.py", *sys.argv[1:]])
    section = (f"## Tile services\n\n`{cmd}` ({date.today()}, {cpu_name()}, {os.cpu_count()} cores; a "
               f"{px}² px scene in {args.tiles} x {args.tiles} service tiles of zoom 17 served by the local test "
               f"server, which waits {args.latency * 1000:.0f} ms before each answer; `colors` test segmenter, "
               f"3 prompts, tile 1008, overlap 128):\n\n" + "\n".join(table) + "\n\n"
               "Each configuration runs twice over the same area: with an empty tile cache, then with the cache "
               "full (no request at all, checked at the server). The difference is the time spent waiting on the "
               "network; tiles / s is the tiles fetched over that time. Reads of one geoseg tile fetch its service "
               "tiles at once, up to `--max-connections` in parallel, so with a distant server more connections "
               "hide more of the latency (ask the provider what it allows).\n")
    print(section)
    if not args.no_readme:
        write_section("Tile services", section)


if __name__ == "__main__":
    main()
