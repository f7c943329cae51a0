"""Training datasets from a raster and a polygon layer: image chips + COCO or YOLO labels.

Chips come from `plan_tiles` (the last row and column pinned to the raster
edge) and are read with `RasterSource` (uint8 RGB, nodata zeroed). Chips
without any valid pixel are skipped. Polygons are reprojected to the raster's
CRS, moved to chip pixel coordinates (x right, y down, origin at the chip's
top-left corner, pixel edges on integers) and clipped to the chip; an object
cut by the chip edge is kept and flagged *truncated*. Pieces smaller than
`min_area` pixels inside the chip are dropped. COCO and YOLO polygons have no
holes: only exterior rings are written; a multi-part piece gives one polygon per part.

Splits are drawn by spatial blocks, never chip by chip: the raster is cut into
square blocks of `block_size` chip sides, a chip belongs to the block holding
its centre, and whole blocks are dealt to the splits (shuffled with `seed`, one
block to each split first, then each block to the split furthest below its
share of chips). Chips of different splits may still overlap along block
edges (with `overlap` > 0, or where edge chips are pinned); such a chip is
dropped from the split listed first (train before val before test), so no
pixel, and no piece of an object, is in two splits. An object straddling two
non-overlapping chips of different splits is still cut in two there: that is
the block edge.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from pyproj import CRS
from rasterio.errors import NotGeoreferencedWarning

from geoseg.errors import OutputError, UsageError
from geoseg.evaluate import polygons_only, read_vector
from geoseg.raster import RasterSource, ReadOptions, parse_bands
from geoseg.tiling import Window, plan_tiles

SPLITS = ("train", "val", "test")
FORMATS = ("coco", "yolo")
IMAGE_FORMATS = {"png": ("PNG", ".png"), "tif": ("GTiff", ".tif")}
MANIFEST = "dataset.json"
DEFAULT_CLASS = "object"


@dataclass(frozen=True)
class Piece:
    """The part of one object inside one chip, in chip pixel coordinates."""

    index: int  # row number of the object in the vector layer
    category: int  # 0-based category number
    rings: list[np.ndarray]  # exterior rings (n, 2) of the polygon parts, closing point dropped
    area: float  # pixels
    truncated: bool


@dataclass
class DatasetSummary:
    """What `export_dataset` wrote."""

    out_dir: Path
    fmt: str
    categories: list[str]
    chips: dict[str, int] = field(default_factory=dict)
    objects: dict[str, int] = field(default_factory=dict)
    truncated: int = 0
    too_small: int = 0
    skipped_nodata: int = 0
    skipped_empty: int = 0
    dropped_overlap: int = 0
    blocks: dict[str, int] = field(default_factory=dict)


def parse_split(text: str | tuple[float, ...]) -> tuple[float, ...]:
    """'0.8,0.2' or '0.7,0.2,0.1' -> fractions for train, val(, test)."""
    try:
        parts = tuple(float(v) for v in (text.split(",") if isinstance(text, str) else text))
    except ValueError:
        raise UsageError(f"--split {text!r}: give 2 or 3 fractions, e.g. --split 0.8,0.2") from None
    if len(parts) not in (2, 3) or any(p <= 0 for p in parts) or abs(sum(parts) - 1) > 1e-6:
        raise UsageError(f"--split {text!r}: give 2 or 3 positive fractions summing to 1, e.g. 0.8,0.2 or 0.7,0.2,0.1")
    return parts


def chip_blocks(windows: list[Window], block_px: float) -> list[tuple[int, int]]:
    """The (row, col) of the block holding each chip's centre."""
    return [(int((w.row + w.height / 2) // block_px), int((w.col + w.width / 2) // block_px)) for w in windows]


def assign_splits(blocks: list[tuple[int, int]], fractions: tuple[float, ...], seed: int) -> dict[tuple[int, int], int]:
    """Deal whole blocks to splits: block -> split number.

    Blocks are shuffled with `seed`; the first goes to each split in turn, then
    each block to the split furthest below its share of chips.
    """
    names = sorted(set(blocks))
    if len(names) < len(fractions):
        raise UsageError(f"--split needs {len(fractions)} spatial blocks and the raster has {len(names)}: "
                         "use a smaller --block-size (or --chip-size)")
    size = {b: blocks.count(b) for b in names}
    target = np.asarray(fractions) * len(blocks)
    have = np.zeros(len(fractions))
    order = np.random.default_rng(seed).permutation(len(names))
    out = {}
    for n, k in enumerate(order):
        s = n if n < len(fractions) else int(np.argmax(target - have))
        out[names[k]] = s
        have[s] += size[names[k]]
    return out


def overlap_guard(windows: list[Window], splits: list[int]) -> np.ndarray:
    """Keep-mask: a chip overlapping a chip of a later split is dropped."""
    boxes = shapely.box([w.col for w in windows], [w.row for w in windows],
                        [w.col_stop for w in windows], [w.row_stop for w in windows])
    keep = np.ones(len(windows), bool)
    if not len(windows):
        return keep
    a, b = shapely.STRtree(boxes).query(boxes, predicate="intersects")
    for p, q in zip(a, b):
        if splits[p] < splits[q] and windows[p].intersection(windows[q]) is not None:
            keep[p] = False
    return keep


def to_pixels(geoms: np.ndarray, transform: Any) -> np.ndarray:
    """Map coordinates -> raster pixel coordinates (col, row), any affine."""
    inv = ~transform
    return shapely.transform(geoms, lambda xy: np.column_stack([inv.a * xy[:, 0] + inv.b * xy[:, 1] + inv.c,
                                                                   inv.d * xy[:, 0] + inv.e * xy[:, 1] + inv.f]))


def chip_pieces(window: Window, geoms: np.ndarray, tree: shapely.STRtree, categories: np.ndarray,
                min_area: float) -> tuple[list[Piece], int]:
    """The objects' pieces inside `window` (pixel geometries), and how many were too small."""
    chip = shapely.box(window.col, window.row, window.col_stop, window.row_stop)
    cand = np.sort(tree.query(chip, predicate="intersects"))
    clipped = shapely.intersection(geoms[cand], chip)
    covered = shapely.covered_by(geoms[cand], chip)
    pieces, small = [], 0
    for k, g, whole in zip(cand, clipped, covered):
        parts = [p for p in shapely.get_parts(g) if p.geom_type == "Polygon" and p.area > 0]
        area = float(sum(p.area for p in parts))
        if not parts or area < min_area:
            small += bool(parts)
            continue
        rings = [np.asarray(p.exterior.coords)[:-1] - (window.col, window.row) for p in parts]
        pieces.append(Piece(int(k), int(categories[k]), rings, area, not bool(whole)))
    return pieces, small


def _coco_annotation(piece: Piece, ann_id: int, image_id: int) -> dict[str, Any]:
    pts = np.concatenate(piece.rings)
    x0, y0 = pts.min(axis=0)
    x1, y1 = pts.max(axis=0)
    return {
        "id": ann_id, "image_id": image_id, "category_id": piece.category + 1, "iscrowd": 0,
        "segmentation": [np.round(r, 3).ravel().tolist() for r in piece.rings],
        "area": round(float(sum(shapely.area(shapely.polygons(r)) for r in piece.rings)), 3),
        "bbox": [round(float(v), 3) for v in (x0, y0, x1 - x0, y1 - y0)],
        "truncated": piece.truncated, "source_index": piece.index,
    }


def _yolo_lines(pieces: list[Piece], size: tuple[int, int]) -> tuple[list[str], list[int]]:
    """One line per polygon part; and the 1-based numbers of lines of truncated pieces."""
    h, w = size
    lines, cut = [], []
    for piece in pieces:
        for ring in piece.rings:
            xy = np.clip(ring / (w, h), 0, 1)
            lines.append(f"{piece.category} " + " ".join(f"{v:.6f}" for v in xy.ravel()))
            if piece.truncated:
                cut.append(len(lines))
    return lines, cut


def check_out_dir(out_dir: str | os.PathLike[str], overwrite: bool) -> Path:
    """The output folder must not exist, be empty, or be a dataset geoseg wrote (with `overwrite`)."""
    out = Path(out_dir)
    if not out.parent.is_dir():
        raise OutputError(f"-o {out}: folder {str(out.parent)!r} does not exist: create it first")
    if out.exists() and not out.is_dir():
        raise OutputError(f"-o {out} is a file: give a folder for the dataset")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MANIFEST).is_file():
            raise OutputError(f"-o {out} is not empty and holds no geoseg dataset: choose a new or empty folder")
        if not overwrite:
            raise OutputError(f"-o {out} holds a dataset: pass --overwrite to replace it, or choose another folder")
    if not os.access(out.parent, os.W_OK):
        raise OutputError(f"-o {out}: folder {str(out.parent)!r} is not writable: choose another output")
    return out


def _write_image(path: Path, rgb: np.ndarray, valid: np.ndarray, driver: str, transform: Any, crs: Any) -> None:
    h, w = valid.shape
    meta: dict[str, Any] = dict(driver=driver, height=h, width=w, count=3, dtype="uint8")
    if driver == "GTiff":
        meta.update(transform=transform, crs=crs, compress="deflate")
    with warnings.catch_warnings():  # PNG chips carry no georeferencing, on purpose
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **meta) as dst:
            dst.write(np.moveaxis(rgb, -1, 0))
            if driver == "GTiff" and not valid.all():
                dst.write_mask(valid)


def _on_raster(gdf: gpd.GeoDataFrame, src: RasterSource, vector: Any, raster: Any) -> np.ndarray:
    """The geometries in raster pixel coordinates; an error when none is over the raster."""
    geoms = np.array(gdf.geometry.values, dtype=object)
    if len(geoms):  # None for what was reprojected out of the projection's domain
        geoms[~np.isfinite(shapely.bounds(geoms)).all(axis=1)] = None
    px = to_pixels(geoms, src.transform)
    if len(px) and not shapely.intersects(px, shapely.box(0, 0, src.width, src.height)).any():
        raise UsageError(f"VECTOR {vector}: no object lies over {raster}: check that both cover the same place "
                         f"(and the vector's CRS)")
    return px  # type: ignore[no-any-return]


def _categories(gdf: gpd.GeoDataFrame, label_field: str | None) -> tuple[list[str], np.ndarray]:
    if label_field is None:
        if "label" not in gdf.columns:
            return [DEFAULT_CLASS], np.zeros(len(gdf), np.int64)
        label_field = "label"
    elif label_field not in gdf.columns:
        cols = ", ".join(c for c in gdf.columns if c != gdf.geometry.name) or "none"
        raise UsageError(f"--label-field {label_field}: VECTOR has no such column (columns: {cols})")
    values = gdf[label_field].astype(str).to_numpy()
    names = sorted(set(values))
    return names, np.searchsorted(names, values)


def export_dataset(
    raster: str | os.PathLike[str], vector: str | os.PathLike[str] | gpd.GeoDataFrame,
    out_dir: str | os.PathLike[str], *, fmt: str = "coco", chip_size: int = 512, overlap: int = 0,
    image_format: str = "png", label_field: str | None = None, min_area: float = 1.0, block_size: float = 4,
    split: str | tuple[float, ...] = (0.8, 0.2), seed: int = 0, bands: str | None = None,
    skip_empty: bool = False, overwrite: bool = False,
) -> DatasetSummary:
    """Cut `raster` into chips and write them with the polygons of `vector` as COCO or YOLO labels.

    Args:
        fmt: "coco" (annotations/instances_<split>.json) or "yolo" (labels/<split>/*.txt + data.yaml).
        chip_size, overlap: chip side and overlap, pixels.
        image_format: "png" or "tif" (GeoTIFF chips keep their georeferencing).
        label_field: column giving the categories (default `label` if present, else one class "object").
        min_area: drop pieces smaller than this many pixels inside a chip.
        block_size: side of the spatial blocks, in chips.
        split: fractions of chips for train, val(, test).
        seed: shuffles the blocks among splits.
        skip_empty: leave out chips without objects (else they are kept as negatives).
    See the module docstring for the rules. Returns what was written.
    """
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r}: use coco or yolo")
    if image_format not in IMAGE_FORMATS:
        raise UsageError(f"--image-format {image_format!r}: use png or tif")
    if block_size <= 0 or min_area < 0:
        raise UsageError("--block-size must be > 0 and --min-area >= 0")
    fractions = parse_split(split)
    out = check_out_dir(out_dir, overwrite)
    with RasterSource(raster, ReadOptions(bands=parse_bands(bands))) as src:
        gdf = polygons_only(read_vector(vector, "VECTOR"), "VECTOR")
        assert src.crs is not None  # RasterSource refuses rasters without a CRS
        if gdf.crs is None and len(gdf):
            raise UsageError(f"VECTOR {vector} has no CRS: set it (e.g. ogr2ogr -a_srs EPSG:XXXX) so it can be "
                             f"placed on {raster}")
        if len(gdf) and not CRS(gdf.crs).equals(CRS(src.crs)):
            gdf = gdf.to_crs(src.crs)
        names, cats = _categories(gdf, label_field)
        geoms = _on_raster(gdf, src, vector, raster)
        tree = shapely.STRtree(geoms)
        plan = plan_tiles(src.height, src.width, chip_size, overlap)
        windows = [t.window for t in plan]
        blocks = chip_blocks(windows, block_size * chip_size)
        deal = assign_splits(blocks, fractions, seed)
        splits = [deal[b] for b in blocks]
        keep = overlap_guard(windows, splits)
        summary = DatasetSummary(out, fmt, names, dropped_overlap=int((~keep).sum()))
        for s in range(len(fractions)):
            summary.blocks[SPLITS[s]] = sum(1 for v in deal.values() if v == s)
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            chips = _write_chips(src, tmp, windows, blocks, splits, keep, geoms, tree, cats, summary,
                                 fractions=fractions, image_format=image_format, min_area=min_area,
                                 skip_empty=skip_empty, stem=Path(str(raster)).stem)
            _write_labels(tmp, fmt, names, chips, len(fractions), src.crs.to_string(), out)
            manifest = {
                "geoseg": "export-dataset", "raster": str(raster), "vector": str(vector), "crs": src.crs.to_wkt(),
                "transform": list(src.transform)[:6], "format": fmt, "image_format": image_format,
                "chip_size": chip_size, "overlap": overlap, "block_size_chips": block_size,
                "split": dict(zip(SPLITS, fractions)), "seed": seed, "min_area_px": min_area,
                "categories": names, "summary": {k: v for k, v in summary.__dict__.items() if k != "out_dir"},
                "chips": [{k: c[k] for k in ("file", "split", "row", "col", "block", "objects")} for c in chips],
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str))
            _replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return summary


def _write_chips(src: RasterSource, tmp: Path, windows: list[Window], blocks: list[tuple[int, int]],
                 splits: list[int], keep: np.ndarray, geoms: np.ndarray, tree: shapely.STRtree, cats: np.ndarray,
                 summary: DatasetSummary, *, fractions: tuple[float, ...], image_format: str, min_area: float,
                 skip_empty: bool, stem: str) -> list[dict[str, Any]]:
    driver, ext = IMAGE_FORMATS[image_format]
    for s in range(len(fractions)):
        (tmp / "images" / SPLITS[s]).mkdir(parents=True, exist_ok=True)
        summary.chips[SPLITS[s]] = summary.objects[SPLITS[s]] = 0
    chips = []
    for w, block, s, ok in zip(windows, blocks, splits, keep):
        if not ok:
            continue
        rgb, valid = src.read(w)
        if not valid.any():
            summary.skipped_nodata += 1
            continue
        pieces, small = chip_pieces(w, geoms, tree, cats, min_area)
        summary.too_small += small
        if skip_empty and not pieces:
            summary.skipped_empty += 1
            continue
        name = f"{stem}_r{w.row}_c{w.col}{ext}"
        t = src.transform @ rasterio.Affine.translation(w.col, w.row)
        _write_image(tmp / "images" / SPLITS[s] / name, rgb, valid, driver, t, src.crs)
        split = SPLITS[s]
        summary.chips[split] += 1
        summary.objects[split] += len(pieces)
        summary.truncated += sum(p.truncated for p in pieces)
        chips.append({"file": f"images/{split}/{name}", "split": split, "row": w.row, "col": w.col,
                      "height": w.height, "width": w.width, "block": list(block), "objects": len(pieces),
                      "transform": list(t)[:6], "pieces": pieces})
    return chips


def _write_labels(tmp: Path, fmt: str, names: list[str], chips: list[dict[str, Any]], n_splits: int,
                  crs: str, out: Path) -> None:
    if fmt == "coco":
        (tmp / "annotations").mkdir()
        for split in SPLITS[:n_splits]:
            images: list[dict[str, Any]] = []
            anns: list[dict[str, Any]] = []
            for c in (c for c in chips if c["split"] == split):
                image_id = len(images) + 1
                images.append({"id": image_id, "file_name": c["file"], "width": c["width"], "height": c["height"],
                               "row": c["row"], "col": c["col"], "transform": c["transform"]})
                anns += [_coco_annotation(p, len(anns) + k, image_id) for k, p in enumerate(c["pieces"], 1)]
            coco = {"info": {"description": "geoseg export-dataset", "crs": crs},
                    "licenses": [], "images": images, "annotations": anns,
                    "categories": [{"id": k + 1, "name": n, "supercategory": "object"} for k, n in enumerate(names)]}
            (tmp / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
        return
    rows = []
    for c in chips:
        label = Path(c["file"].replace("images/", "labels/", 1)).with_suffix(".txt")
        (tmp / label).parent.mkdir(parents=True, exist_ok=True)
        lines, cut = _yolo_lines(c["pieces"], (c["height"], c["width"]))
        (tmp / label).write_text("".join(f"{line}\n" for line in lines))
        rows += [(c["split"], str(label), n) for n in cut]
    with open(tmp / "truncated.csv", "w", newline="") as f:
        csv.writer(f).writerows([("split", "label_file", "line"), *rows])
    yaml = [f"path: {json.dumps(str(out.resolve()))}", *(f"{s}: images/{s}" for s in SPLITS[:n_splits]),
            f"nc: {len(names)}", "names:"]
    yaml += [f"  {k}: {json.dumps(n)}" for k, n in enumerate(names)]
    (tmp / "data.yaml").write_text("\n".join(yaml) + "\n")


def _replace(tmp: Path, out: Path) -> None:
    """Move the finished dataset into place; an old one goes only once the new one is complete."""
    if out.exists():
        old = out.with_name(f".{out.name}.{os.getpid()}.old")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
