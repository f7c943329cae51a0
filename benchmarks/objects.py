"""Time per click: SAM 3's single-object head on a window seen for the first time (the vision
backbone runs) and on a window whose features are kept (the prompt decoder alone).

A random-weight SAM 3 (`geoseg.testing.build_tiny_sam3`, saved as `facebook/sam3` is: detector,
tracker and the tracker's neck, one backbone) times like the real one of its size.

    python benchmarks/objects.py --sizes tiny small full      # full: 840M parameters, 3.4 GB on disk
    python benchmarks/objects.py --sizes tiny --device cuda --no-readme
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

from geoseg.core.objects import ObjectPrompt
from geoseg.testing.sam3 import build_tiny_sam3

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_name, write_section  # noqa: E402


def clicks(size: int, n: int, seed: int) -> list[ObjectPrompt]:
    rng = np.random.default_rng(seed)
    return [ObjectPrompt(rng.uniform(0.2, 0.8, (1, 2)) * size, np.array([True]), None) for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"], choices=["tiny", "small", "full"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clicks", type=int, default=5, help="clicks timed per case")
    parser.add_argument("--no-readme", action="store_true")
    args = parser.parse_args()
    import torch

    from geoseg.backends.sam3 import Sam3Segmenter

    rows = []
    for size in args.sizes:
        with tempfile.TemporaryDirectory(prefix="geoseg-objects-bench-") as tmp:
            folder = build_tiny_sam3(Path(tmp) / "model", size=size, device=args.device)
            seg = Sam3Segmenter(model=str(folder), device=args.device, dtype="fp32")
            rng = np.random.default_rng(1)
            tiles = rng.integers(0, 256, (args.clicks + 1, 1008, 1008, 3), dtype=np.uint8)
            seg.segment_objects(tiles[-1], clicks(1008, 1, 0))  # loads the object head, warms up
            new, kept = [], []
            for k in range(args.clicks):
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                t = time.perf_counter()
                seg.segment_objects(tiles[k], clicks(1008, 1, k))  # a window seen for the first time
                new.append(time.perf_counter() - t)
                t = time.perf_counter()
                seg.segment_objects(tiles[k], clicks(1008, 1, 100 + k))  # another click there
                kept.append(time.perf_counter() - t)
            params = seg.n_params + sum(p.numel() for n, p in seg._tracker.net.named_parameters()  # type: ignore[union-attr]
                                        if not n.startswith("vision_encoder.backbone."))
            rows.append((size, params, float(np.median(new)), float(np.median(kept))))
            print(f"{size}: {rows[-1][2]:.3f} s a new window, {rows[-1][3]:.4f} s a kept one", flush=True)
    table = ["| model | parameters (detector + object head, backbone once) | click, new window (s) "
             "| click, features kept (s) | speed-up |", "|---|---:|---:|---:|---:|"]
    for size, params, new_s, kept_s in rows:
        table.append(f"| {size} | {params / 1e6:.1f} M | {new_s:.3f} | {kept_s:.4f} | {new_s / kept_s:.0f}x |")
    cmd = " ".join(["python", "benchmarks/objects.py", *sys.argv[1:]])
    device = args.device if args.device != "cpu" else f"CPU only: {cpu_name()}, {os.cpu_count()} cores"
    section = (f"## Object prompts\n\n`{cmd}` ({date.today()}, {device}, torch {torch.__version__}, fp32; "
               f"random-weight SAM 3 of each size; a 1008² window, one click; median of {args.clicks}):\n\n"
               + "\n".join(table) + "\n\n"
               "A click on a window seen for the first time runs the vision backbone (shared by the detector and "
               "the object head: one copy in memory) and the object head's neck, then the prompt encoder and mask "
               "decoder; another click on a window among the last four runs the two last alone.\n")
    print(section)
    if not args.no_readme:
        write_section("Object prompts", section)


if __name__ == "__main__":
    main()
