"""Distilling the `colors` teacher into a YOLO student, from scratch, on generated scenes.

For each amount of training data (a number of generated scenes), the teacher
labels the scenes, `geoseg train` fits a student from its architecture
definition (random weights: no download), keeping a checkpoint every few
epochs; each checkpoint then runs through the whole pipeline (tiles, seams)
over a held-out scene and is scored against the teacher there (F1 at IoU 0.5,
`geoseg evaluate`). Also: training time, and the student's tiles/s on 1008 px
tiles against full-size SAM 3's (measured with benchmarks/sam3_throughput.py
on the same machine, or `--sam3-s-per-tile`).

    python benchmarks/distill.py --scenes 4 16 --epochs 60 --every 10 --write
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

PROMPTS = ["red", "green", "blue"]


def teacher_labels(rasters: list[str], out: Path) -> Path:
    import geoseg

    geoseg.segment(rasters, PROMPTS, segmenter="colors", output=out, overwrite=True)
    return out


def student_f1(model: Path, heldout: str, truth: Path, work: Path) -> tuple[float, float, float, float]:
    """Over the held-out scene: F1 at IoU 0.5 at the default score threshold (0.25), the best F1 over
    thresholds and its threshold, and the seconds the student's run took."""
    import geoseg
    from geoseg.analysis.evaluate import evaluate

    pred = work / "pred.gpkg"
    started = time.perf_counter()
    found = geoseg.segment(heldout, PROMPTS, segmenter="yolo", model=str(model), output=pred, overwrite=True,
                           restart=True, work_dir=work / "pred-work", score_threshold=0.01)
    seconds = time.perf_counter() - started
    at_default = evaluate(found[found["score"] >= 0.25], truth, iou=0.5)
    swept = evaluate(pred, truth, iou=0.5, sweep="score")
    best = swept.best
    f1 = next(s.f1 for s in at_default.scores if s.label == "all")
    return f1, (best.f1 if best else 0.0), (best.threshold if best else float("nan")), seconds


def with_weights(model: Path, weights: Path, where: Path) -> Path:
    """A copy of the model folder holding other weights (a checkpoint)."""
    shutil.rmtree(where, ignore_errors=True)
    where.mkdir(parents=True)
    shutil.copy(model / "geoseg.json", where / "geoseg.json")
    shutil.copy(weights, where / "weights.pt")
    return where


def tiles_per_second(model: Path, tile: int = 1008, n: int = 4, batch: int = 4) -> float:
    from geoseg.backends.yolo import YoloSegmenter
    from geoseg.testing.scenes import draw, random_objects

    seg = YoloSegmenter(model=str(model), batch_size=batch)
    tiles = np.stack([draw(tile, tile, random_objects(tile, tile, 30, seed=k)) for k in range(n)])
    seg.segment(tiles[:1], PROMPTS)  # warm-up
    started = time.perf_counter()
    seg.segment(tiles, PROMPTS)
    return n / (time.perf_counter() - started)


def run(args: argparse.Namespace) -> dict:
    from affine import Affine

    from geoseg.analysis.train import train
    from geoseg.testing import make_scene

    root = Path(args.work or tempfile.mkdtemp(prefix="geoseg-distill-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    heldout = make_scene(root / "heldout.tif", size=2048, seed=0)
    truth = teacher_labels([heldout], root / "heldout-teacher.gpkg")
    results = {"runs": [], "args": vars(args)}
    for k in args.scenes:
        # side by side on the ground, so that one teacher layer labels them all
        scenes = [make_scene(root / f"train-{s}.tif", size=args.size, seed=s, n_objects=args.objects,
                             transform=Affine(0.5, 0, 404000.0 + s * args.size, 0, -0.5, 3286000.0))
                  for s in range(1, k + 1)]
        labels = teacher_labels(scenes, root / f"teacher-{k}.gpkg")
        model = root / f"student-{k}"
        started = time.perf_counter()
        info = train(scenes, model, vector=labels, epochs=args.epochs, weights=args.weights, patience=args.epochs,
                     chip_size=args.chip,
                     batch_size=args.batch, device="cpu", workers=args.workers, overwrite=True,
                     save_period=args.every, progress=False, close_mosaic=args.close_mosaic,
                     val=not args.no_val)
        seconds = time.perf_counter() - started
        curve = []
        for ckpt in sorted((model / "checkpoints").glob("epoch*.pt"), key=lambda p: int(p.stem[5:])):
            f1, best, at, _ = student_f1(with_weights(model, ckpt, root / "ckpt"), heldout, truth, root)
            curve.append({"epoch": int(ckpt.stem[5:]) + 1, "f1": round(f1, 3), "best_f1": round(best, 3),
                          "at_score": round(at, 3)})  # saved as 0-based
            print(k, curve[-1], flush=True)
        f1, best, at, run_s = student_f1(model, heldout, truth, root)
        row = {"scenes": k, "chips": info["dataset"]["chips"], "epochs_run": info["training"]["epochs_run"],
               "train_s": round(seconds, 1), "val": info["val"], "curve": curve, "f1": round(f1, 3),
               "best_f1": round(best, 3), "at_score": round(at, 3), "heldout_run_s": round(run_s, 2),
               "start": Path(info["training"]["start"]).name,
               "tiles_per_s": round(tiles_per_second(model), 3)}
        results["runs"].append(row)
        print(json.dumps(row), flush=True)
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


def command(a: dict) -> str:
    """The command line that made a results file."""
    return (f"`python benchmarks/distill.py --scenes {' '.join(map(str, a['scenes']))} --size {a['size']} "
            f"{'' if a['objects'] is None else '--objects ' + str(a['objects']) + ' '}--chip {a['chip']} "
            f"--epochs {a['epochs']} --every {a['every']} --batch {a['batch']}"
            f"{' --no-val' if a.get('no_val') else ''}{' --weights ' + a['weights'] if a.get('weights') else ''}`")


def table(parts: list[dict], sam3_s: float, machine: str) -> str:
    a = parts[-1]["args"]
    lines = [
        "## Distillation",
        "",
        "; ".join(command(p["args"]) for p in parts) +
        f" ({time.strftime('%Y-%m-%d')}, {machine}; `colors` teacher; training scenes "
        f"`make_scene(size={a['size']}, n_objects={a['objects']})` seeds 1..N, held-out scene "
        f"`make_scene(size=2048, seed=0)` through the whole pipeline, tile 1008, overlap 128; F1 at IoU 0.5 "
        f"against the teacher; full SAM 3 at {sam3_s:g} s per 1008² tile, see SAM 3 throughput):",
        "",
        "| scenes | train / val chips | from | epochs | training time | held-out F1 by epoch: at score 0.25 / "
        "best (its score) | F1 at the end: 0.25 / best (score) | val mask mAP50 | student tiles/s (1008²) | "
        "vs full SAM 3 |",
        "|---:|---:|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    runs = [r for p in parts for r in p["runs"]]
    for r in sorted(runs, key=lambda r: (r["scenes"], r.get("start", ""), r["epochs_run"])):
        curve = ", ".join(f"{c['epoch']}: {c['f1']:.2f} / {c['best_f1']:.2f} ({c['at_score']:.2f})"
                          for c in r["curve"])
        lines.append(f"| {r['scenes']} | {r['chips']['train']} / {r['chips']['val']} | "
                     f"{r.get('start', 'yolo11n-seg.yaml')} | {r['epochs_run']} | {r['train_s'] / 60:.1f} min | "
                     f"{curve} | {r['f1']:.2f} / {r['best_f1']:.2f} ({r['at_score']:.2f}) | "
                     f"{r['val']['mask_map50']:.2f} | {r['tiles_per_s']:.2f} | {r['tiles_per_s'] * sam3_s:.0f}x |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenes", type=int, nargs="+", default=[4, 16], help="training scenes per run")
    p.add_argument("--size", type=int, default=1024, help="side of each training scene, px")
    p.add_argument("--objects", type=int, default=None,
                   help="random objects per training scene [default: make_scene's, 1 per 40000 px]")
    p.add_argument("--chip", type=int, default=256, help="chip side, px (the training image size)")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--every", type=int, default=10, help="score a checkpoint every this many epochs")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--weights", default=None, help="start from this checkpoint [default: yolo11n-seg.yaml]")
    p.add_argument("--close-mosaic", type=int, default=10)
    p.add_argument("--no-val", action="store_true",
                   help="skip Ultralytics' validation after each epoch (the checkpoints are scored here anyway)")
    p.add_argument("--workers", type=int, default=0, help="data loader processes")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--sam3-s-per-tile", type=float, default=25.5,
                   help="full-size SAM 3 on a 1008² tile (this machine: benchmarks/README.md, SAM 3 throughput)")
    p.add_argument("--work", default=None, help="keep scenes and models in this folder")
    p.add_argument("--json", default="distill.json", help="results, written after each run")
    p.add_argument("--from-json", nargs="+", default=None, help="only make the table from these results files")
    p.add_argument("--write", action="store_true", help="put the table into benchmarks/README.md")
    args = p.parse_args()
    import torch
    from common import cpu_name, write_section

    torch.set_num_threads(args.threads)
    parts = [json.loads(Path(f).read_text()) for f in args.from_json] if args.from_json else [run(args)]
    text = table(parts, args.sam3_s_per_tile, f"{cpu_name()}, {os.cpu_count()} cores, "
                                                f"{torch.get_num_threads()} torch threads")
    print(text)
    if args.write:
        write_section("Distillation", text)


if __name__ == "__main__":
    main()
