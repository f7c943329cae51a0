"""SAM 3 throughput on 1008² tiles: geoseg's path against the naive one.

geoseg (`Sam3Segmenter`): the vision encoder once per batch of tiles, text features
once per prompt per run, the heads once on tiles x prompts; uint8 tiles go up (the
next batch while this one computes), resizing, normalising, mask upsampling and
thresholding happen on the device, and masks come back cropped to their boxes.
"geoseg+compile" is the same with the vision encoder compiled (`compile=True`).
Naive (what existing tools do): `Sam3Processor` -> `Sam3Model` ->
`post_process_instance_segmentation` -> masks to numpy, for every tile and every
prompt, one tile at a time, in the same dtype (float inputs cast to it).

Weights are random (nothing is downloaded): `--size full` is the real 840M-parameter
architecture (`Sam3Config()`), for GPUs; `--size small` is a 4M-parameter shrink that
keeps the 1008 px input and the 288 px mask grid, for CPU runs. Output layers are
rescaled (geoseg.testing.sam3) so that scores and masks look like a trained model's:
some instances pass the threshold, and post-processing has real work to do.

    python benchmarks/sam3_throughput.py                          # CUDA: full size, 24 configurations
    python benchmarks/sam3_throughput.py --size small --write     # CPU: a few configurations
    bash benchmarks/gpu.sh                                        # the GPU checks of issue 13, ~8 min

Results go to benchmarks/results/sam3_throughput_<device>_<size>.{json,md} (or --out);
with --write the table replaces the "SAM 3 throughput" section of benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import cpu_name, write_section

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

PROMPTS = ["building", "tree", "road", "car"]
NOTES = """\
Each figure is the best of `--repeats` timed passes after a warm-up pass (the machine may be
shared); geoseg gets each pass's tiles in one call, as `batch`-tile batches (the pipeline's
calls, one batch each, are measured end to end by `sam3_e2e.py`). "+% per extra prompt" is
(ms/tile at P prompts - ms/tile at 1 prompt) / (P - 1) over ms/tile at 1 prompt: the heads
alone, since the vision encoder and the tiles' upload are shared by all prompts (target
<= 20 %; tables before 2026-11-30 give it in seconds, "s per extra prompt"). "first pass
s" is the warm-up pass: with compile, it includes compiling. Speed-up is over the naive
path in the same dtype with as many prompts; on the naive path every prompt re-runs the
vision encoder. The GPU floor for the full model is ~7 ms per tile:
5.5 TFLOP in the vision encoder at ~790 TFLOP/s dense bf16 (H100 SXM)."""
SIDE = 1008


def machine(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return (
        f"CPU only: {cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}"
    )


def make_tiles(n: int, seed: int = 0) -> np.ndarray:
    """`n` aerial-looking tiles: a textured background with many coloured roofs."""
    rng = np.random.default_rng(seed)
    tiles = np.empty((n, SIDE, SIDE, 3), np.uint8)
    for t in tiles:
        t[:] = rng.integers(40, 110, 3)
        for _ in range(60):
            r, c = rng.integers(0, SIDE - 80, 2)
            h, w = rng.integers(12, 80, 2)
            t[r : r + h, c : c + w] = rng.integers(0, 256, 3)
        t[:] = np.clip(t + rng.normal(0, 8, t.shape), 0, 255).astype(np.uint8)
    return tiles


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: str) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**30 if device.startswith("cuda") else None


def geoseg_pass(seg, tiles: np.ndarray, prompts: list[str], batch: int):
    """One pass of geoseg's path over `tiles`; returns the detection count."""

    def work() -> int:
        seg.batch_size = batch  # one segmenter per dtype serves every batch size
        # One call: the backend batches, and uploads the next batch while one computes.
        return sum(len(d) for d in seg.segment(tiles, prompts))

    return work


def naive_pass(processor, model, tiles: np.ndarray, prompts: list[str], threshold: float, device: str):
    """One pass of the naive path: every tile and every prompt on its own, as existing tools do."""
    import torch

    def one(tile: np.ndarray, prompt: str) -> int:
        # BatchFeature.to casts the float inputs only (pixel values), as a user would.
        inputs = processor(images=tile, text=prompt, return_tensors="pt").to(device).to(model.dtype)
        out = model(**inputs)
        res = processor.post_process_instance_segmentation(
            out, threshold=threshold, mask_threshold=0.5, target_sizes=[tile.shape[:2]]
        )[0]
        res["scores"].float().cpu().numpy()
        return len(res["masks"].cpu().numpy())

    def work() -> int:
        with torch.inference_mode():
            return sum(one(t, p) for t in tiles for p in prompts)

    return work


def measure(jobs: list[dict], repeats: int, device: str) -> None:
    """Time every job's pass `repeats` times, round-robin, keeping the best.

    Round-robin and the best, not the mean: on a shared machine a neighbour's burst then
    spoils one pass of several configurations rather than every pass of one.
    """
    for job in jobs:
        sync(device)
        start = time.perf_counter()
        job["work"]()  # warm-up: first-call costs (compiling), and the text cache as a run's first batch fills it
        sync(device)
        job["first_pass_s"] = time.perf_counter() - start
        job["seconds"], job["peak_gpu_gib"] = float("inf"), None
    for k in range(repeats):
        for job in jobs:
            sync(device)
            reset_peak(device)
            start = time.perf_counter()
            job["detections"] = job["work"]()
            sync(device)
            job["seconds"] = min(job["seconds"], time.perf_counter() - start)
            # The OOM back-off may have lowered the batch; keep the one that ran.
            job["batch_used"] = job["seg"].batch_size if "seg" in job else 1
            peak = peak_gib(device)
            job["peak_gpu_gib"] = peak if job["peak_gpu_gib"] is None else max(peak or 0, job["peak_gpu_gib"])
        print(f"pass {k + 1}/{repeats} done", file=sys.stderr)


def table(rows: list[dict], on_gpu: bool) -> str:
    head = ("| path | dtype | batch | prompts | ms / tile | tiles / s | +% per extra prompt | detections / tile "
            "| first pass s |")
    rule = "|---|---|---:|---:|---:|---:|---:|---:|---:|"
    if on_gpu:
        head += " peak GPU GiB |"
        rule += "---:|"
    head += " speed-up vs naive |"
    rule += "---:|"
    lines = [head, rule]
    for r in rows:
        extra = "" if r["extra_prompt_pct"] is None else f"{r['extra_prompt_pct']:.0f} %"
        # after an out-of-memory back-off, the batch that ran
        batch = r["batch"] if r["batch_used"] == r["batch"] else f"{r['batch']} → {r['batch_used']}"
        line = (
            f"| {r['path']} | {r['dtype']} | {batch} | {r['prompts']} | {r['ms_per_tile']:.1f} "
            f"| {r['tiles_per_s']:.2f} | {extra} | {r['detections_per_tile']:.0f} | {r['first_pass_s']:.1f} |"
        )
        if on_gpu:
            line += f" {r['peak_gpu_gib']:.1f} |"
        line += f" {r['speedup']:.1f}x |"
        lines.append(line)
    return "\n".join(lines)


def derive(rows: list[dict]) -> None:
    """Add ms per tile, tiles/s, the cost of an extra prompt and the speed-up over the
    naive path in the same dtype with the same prompts."""
    for r in rows:
        r["ms_per_tile"] = 1000 * r["seconds"] / r["tiles"]
        r["tiles_per_s"] = r["tiles"] / r["seconds"]
        r["detections_per_tile"] = r["detections"] / r["tiles"]
    naive = {(r["dtype"], r["prompts"]): r["ms_per_tile"] for r in rows if r["path"] == "naive"}
    for r in rows:
        same = [q for q in rows if (q["path"], q["dtype"], q["batch"]) == (r["path"], r["dtype"], r["batch"])]
        one = next((q for q in same if q["prompts"] == 1), None)
        extra = (r["ms_per_tile"] - one["ms_per_tile"]) / (r["prompts"] - 1) if one and r["prompts"] > 1 else None
        r["s_per_extra_prompt"] = None if extra is None else extra / 1000
        r["extra_prompt_pct"] = None if extra is None else 100 * extra / one["ms_per_tile"]
        base = naive.get((r["dtype"], r["prompts"]))
        r["speedup"] = base / r["ms_per_tile"] if base else float("nan")


def write_readme() -> None:
    """Put every table in results/ (each device and size run so far) in benchmarks/README.md."""
    found = sorted((HERE / "results").glob("sam3_throughput_*.md"))
    tables = "\n".join(f.read_text() for f in found)
    if not any("_cuda_" in f.name for f in found):
        tables += (
            "\nNo GPU figures yet (none was available): on a CUDA machine, `bash benchmarks/gpu.sh` measures "
            "the full-size model (see docs/sam3.md); copy its results into benchmarks/results/ and run "
            "`python benchmarks/sam3_throughput.py --readme-only`.\n"
        )
    write_section("SAM 3 throughput", f"## SAM 3 throughput\n\n{tables}\n{NOTES}\n")


def main() -> None:
    import torch

    on_gpu = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["full", "small", "tiny"], default="full" if on_gpu else "small")
    ap.add_argument("--device", default="cuda" if on_gpu else "cpu")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8, 16] if on_gpu else [1, 2])
    ap.add_argument("--prompts", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--dtypes", nargs="+", default=["bf16", "fp32"] if on_gpu else ["fp32", "bf16"])
    ap.add_argument(
        "--tiles", type=int, default=32 if on_gpu else 4, help="tiles per timed pass (rounded up to whole batches)"
    )
    ap.add_argument("--naive-tiles", type=int, default=8 if on_gpu else 2)
    ap.add_argument("--naive-dtypes", nargs="+", default=None, help="dtypes of the naive path [default: --dtypes]")
    ap.add_argument("--compile", action="store_true",
                    help="also time geoseg with the vision encoder compiled, in the first of --dtypes")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per configuration; the best counts")
    ap.add_argument("--score-threshold", type=float, default=0.5)
    ap.add_argument("--model", default=None, help="a saved SAM 3 folder to use instead of building a random one")
    ap.add_argument("--out", type=Path, default=HERE / "results", help="folder for the .json and .md results")
    ap.add_argument("--write", action="store_true", help="write the tables into benchmarks/README.md")
    ap.add_argument("--readme-only", action="store_true", help="only rebuild the README section from results/")
    args = ap.parse_args()
    if args.readme_only:
        return write_readme()
    naive_dtypes = list(dict.fromkeys(args.dtypes if args.naive_dtypes is None else args.naive_dtypes))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from geoseg.backends.sam3 import Sam3Segmenter
    from geoseg.testing.sam3 import build_tiny_sam3

    device = args.device
    folder = args.model
    if folder is None:
        print(f"building a random {args.size} SAM 3 ...", file=sys.stderr)
        folder = build_tiny_sam3(Path(tempfile.mkdtemp(prefix="sam3_bench_")), size=args.size, device=device)
    segs = {
        dtype: Sam3Segmenter(model=str(folder), device=device, dtype=dtype, score_threshold=args.score_threshold)
        for dtype in dict.fromkeys([*args.dtypes, *naive_dtypes])
    }
    compiled = {}
    if args.compile:
        first = args.dtypes[0]
        compiled[first] = Sam3Segmenter(model=str(folder), device=device, dtype=first,
                                        score_threshold=args.score_threshold, compile=True)
    n_params = next(iter(segs.values())).n_params
    jobs: list[dict] = []
    for path, group in (("geoseg", {d: segs[d] for d in args.dtypes}), ("geoseg+compile", compiled)):
        for dtype, seg in group.items():
            for batch in args.batches:
                tiles = make_tiles(-(-args.tiles // batch) * batch)
                for p in args.prompts:
                    work = geoseg_pass(seg, tiles, PROMPTS[:p], batch)
                    jobs.append({"path": path, "dtype": dtype, "batch": batch, "prompts": p, "tiles": len(tiles),
                                 "work": work, "seg": seg})  # fmt: skip
    naive_tiles = make_tiles(args.naive_tiles)
    for dtype in naive_dtypes:
        seg = segs[dtype]
        for p in args.prompts:
            work = naive_pass(seg.processor, seg.model, naive_tiles, PROMPTS[:p], args.score_threshold, device)
            jobs.append({"path": "naive", "dtype": dtype, "batch": 1, "prompts": p, "tiles": args.naive_tiles,
                         "work": work})  # fmt: skip
    try:
        measure(jobs, args.repeats, device)
    finally:
        if args.model is None:
            shutil.rmtree(folder, ignore_errors=True)  # 3.4 GB for the full size
    rows = [{"size": args.size, "device": device, **{k: v for k, v in job.items() if k not in ("work", "seg")}}
            for job in jobs]  # fmt: skip
    del segs, compiled, jobs
    gc.collect()
    derive(rows)
    rows.sort(key=lambda r: (r["path"] != "naive", r["path"], r["dtype"], r["batch"], r["prompts"]))
    text = table(rows, device.startswith("cuda"))
    print(text)

    info = {
        "machine": machine(device),
        "size": args.size,
        "parameters": n_params,
        "tile": SIDE,
        "score_threshold": args.score_threshold,
        "date": time.strftime("%Y-%m-%d"),
        "rows": rows,
    }
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    stem = f"sam3_throughput_{device.split(':')[0]}_{args.size}"
    (out / f"{stem}.json").write_text(json.dumps(info, indent=2))
    command = " ".join(["python benchmarks/sam3_throughput.py", *sys.argv[1:]]).replace(" --write", "")
    header = (
        f"`{command}` ({info['date']}; {info['machine']}; random-weight SAM 3 `{args.size}`, "
        f"{n_params / 1e6:.1f}M parameters; {SIDE}² tiles; score threshold {args.score_threshold}):"
    )
    (out / f"{stem}.md").write_text(f"{header}\n\n{text}\n")
    if args.write:
        write_readme()


if __name__ == "__main__":
    main()
