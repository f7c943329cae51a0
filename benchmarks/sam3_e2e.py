"""End to end with SAM 3: is the GPU kept busy through a whole pipeline run?

Runs `geoseg.segment` with a `Sam3Segmenter` (random weights: the full size costs the
real model's FLOPs) on generated scenes (`write_large_scene`: deflate-compressed
tiled GeoTIFFs of discs) and writes a GeoPackage, as the CLI does: reading,
segmenting, the seam merge, vectorising and writing all run. While it runs:

- GPU busy: `nvidia-smi` samples utilization.gpu (the share of time a kernel runs)
  every 100 ms; the mean over the run. Target: >= 90 %.
- In segment(): host time inside the segmenter's calls over the wall time.
- GPU span: CUDA events at the start and end of each segment() call, summed over
  the wall time: the time the GPU had the segmenter's work queued or running.

    python benchmarks/sam3_e2e.py                              # CUDA: full size, 20k² and 40k²
    python benchmarks/sam3_e2e.py --size tiny --sizes 2048     # CPU: the plumbing only

Results go to <out>/sam3_e2e_<device>_<size>.{json,md}. Scenes are cached in
benchmarks/.data (ignored by git).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / ".data"
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

PROMPTS = ["building", "tree", "road", "car"]


class GpuSampler:
    """utilization.gpu from `nvidia-smi` every `ms` milliseconds, in a thread; None
    where there is no nvidia-smi (or no GPU)."""

    def __init__(self, gpu: str, ms: int = 100) -> None:
        self.samples: list[float] = []
        cmd = ["nvidia-smi", f"--id={gpu}", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
               f"-lms={ms}"]
        try:
            self.proc: subprocess.Popen[str] | None = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except OSError:
            self.proc = None
            return
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.samples.append(float(line.strip()))
            except ValueError:
                pass

    def stop(self) -> float | None:
        """Mean busy share in %, over the samples so far."""
        if self.proc is None:
            return None
        self.proc.terminate()
        self.proc.wait()
        self.thread.join(timeout=2)
        return sum(self.samples) / len(self.samples) if self.samples else None


def gpu_id(device: str) -> str:
    """The GPU as nvidia-smi names it: its UUID (CUDA_VISIBLE_DEVICES renumbers indices)."""
    import torch

    props = torch.cuda.get_device_properties(device)
    uuid = str(getattr(props, "uuid", "") or "")
    if uuid:
        return uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"
    return str(torch.device(device).index or 0)


def timed(seg, device: str) -> dict:
    """Wrap `seg.segment` to count tiles, host seconds and CUDA events per call."""
    import torch

    stats: dict = {"tiles": 0, "calls": 0, "host_s": 0.0, "events": []}
    real = seg.segment
    cuda = device.startswith("cuda")

    def segment(tiles, prompts):
        start = time.perf_counter()
        if cuda:
            begin = torch.cuda.Event(enable_timing=True)
            begin.record()
        try:
            return real(tiles, prompts)
        finally:
            if cuda:
                end = torch.cuda.Event(enable_timing=True)
                end.record()
                stats["events"].append((begin, end))
            stats["host_s"] += time.perf_counter() - start
            stats["tiles"] += len(tiles)
            stats["calls"] += 1

    seg.segment = segment
    return stats


def scene(size: int) -> Path:
    from geoseg.testing.scenes import write_large_scene

    DATA.mkdir(exist_ok=True)
    path = DATA / f"scene_{size}.tif"
    if not path.exists():
        print(f"writing a {size}² scene ...", file=sys.stderr)
        partial = path.with_suffix(".partial.tif")
        write_large_scene(partial, size, seed=size)
        partial.rename(path)
    return path


def run_one(seg, path: Path, prompts: list[str], device: str, gpu: str | None, work: Path) -> dict:
    import torch

    import geoseg

    stats = timed(seg, device)
    out = work / f"{path.stem}.gpkg"
    sampler = GpuSampler(gpu) if gpu is not None else None
    start = time.perf_counter()
    frame = geoseg.segment(str(path), prompts, segmenter=seg, output=str(out), overwrite=True,
                           work_dir=str(work / f"{path.stem}.work"))
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - start
    busy = sampler.stop() if sampler is not None else None
    del seg.segment  # the class's own again
    span = sum(b.elapsed_time(e) for b, e in stats["events"]) / 1000 if stats["events"] else None
    return {"raster": path.name, "tiles": stats["tiles"], "calls": stats["calls"], "objects": len(frame),
            "wall_s": wall, "tiles_per_s": stats["tiles"] / wall, "in_segment_pct": 100 * stats["host_s"] / wall,
            "gpu_span_pct": None if span is None else 100 * span / wall, "gpu_busy_pct": busy}


def table(rows: list[dict]) -> str:
    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.0f} %"

    lines = ["| raster | tiles | objects | wall (s) | tiles / s | in segment() | GPU span | GPU busy (nvidia-smi) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['raster']} | {r['tiles']} | {r['objects']} | {r['wall_s']:.1f} | {r['tiles_per_s']:.1f} "
              f"| {pct(r['in_segment_pct'])} | {pct(r['gpu_span_pct'])} | {pct(r['gpu_busy_pct'])} |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    import torch

    on_gpu = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["full", "small", "tiny"], default="full" if on_gpu else "tiny")
    ap.add_argument("--device", default="cuda" if on_gpu else "cpu")
    ap.add_argument("--dtype", default="bf16" if on_gpu else "fp32")
    ap.add_argument("--sizes", type=int, nargs="+", default=[20480, 40960] if on_gpu else [2048],
                    help="scene sizes in px, run in this order")
    ap.add_argument("--prompts", type=int, default=1, help="how many prompts")
    ap.add_argument("--batch-size", type=int, default=None, help="[default: the backend's]")
    ap.add_argument("--score-threshold", type=float, default=0.5)
    ap.add_argument("--compile", action="store_true", help="compile the vision encoder")
    ap.add_argument("--model", default=None, help="a saved SAM 3 folder to use instead of building a random one")
    ap.add_argument("--out", type=Path, default=HERE / "results", help="folder for the .json and .md results")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from sam3_throughput import machine

    from geoseg.backends.sam3 import Sam3Segmenter
    from geoseg.testing.sam3 import build_tiny_sam3

    device = args.device
    work = Path(tempfile.mkdtemp(prefix="sam3_e2e_"))
    folder = args.model
    if folder is None:
        print(f"building a random {args.size} SAM 3 ...", file=sys.stderr)
        folder = build_tiny_sam3(work / "model", size=args.size, device=device)
    seg = Sam3Segmenter(model=str(folder), device=device, dtype=args.dtype, batch_size=args.batch_size,
                        score_threshold=args.score_threshold, compile=args.compile)
    gpu = gpu_id(device) if device.startswith("cuda") else None
    prompts = PROMPTS[: args.prompts]
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"sam3_e2e_{device.split(':')[0]}_{args.size}"
    info = {"machine": machine(device), "size": args.size, "dtype": args.dtype, "prompts": prompts,
            "batch_size": seg.batch_size, "compile": args.compile, "score_threshold": args.score_threshold,
            "date": time.strftime("%Y-%m-%d"), "rows": []}
    command = " ".join(["python benchmarks/sam3_e2e.py", *sys.argv[1:]])
    try:
        for size in args.sizes:
            path = scene(size)
            row = run_one(seg, path, prompts, device, gpu, work)
            info["rows"].append(row)
            print(json.dumps(row), file=sys.stderr)
            # Written after each scene: a run cut short keeps what it measured.
            (args.out / f"{stem}.json").write_text(json.dumps(info, indent=2))
            header = (f"`{command}` ({info['date']}; {info['machine']}; random-weight SAM 3 `{args.size}`, "
                      f"{args.dtype}, batch {seg.batch_size}, {len(prompts)} prompt(s), score threshold "
                      f"{args.score_threshold}{', compiled' if args.compile else ''}):")
            (args.out / f"{stem}.md").write_text(f"{header}\n\n{table(info['rows'])}\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(table(info["rows"]))


if __name__ == "__main__":
    main()
