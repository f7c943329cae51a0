"""Training datasets from rasters and a polygon layer: image chips + COCO or YOLO labels.

Several rasters (files or folders) make one dataset; chip names start with the
raster's name, made unique among the inputs. Chips come from `plan_tiles` (the
last row and column pinned to the raster edge; a raster smaller than a chip
gives one padded with nodata) and are read with `RasterSource` (uint8 RGB,
nodata zeroed). Chips without any valid pixel are skipped. Polygons are
reprojected to each raster's CRS, moved to chip pixel coordinates (x right,
y down, origin at the chip's top-left corner, pixel edges on integers) and
clipped to the chip; an object cut by the chip edge is kept and flagged
*truncated*. Pieces smaller than `min_area` pixels inside the chip are
dropped. COCO and YOLO polygons have no holes: only exterior rings are
written; a multi-part piece gives one polygon per part.

Splits are drawn by spatial blocks, never chip by chip: each raster is cut
into square blocks of `block_size` chip sides (a block never spans two
rasters), a chip belongs to the block holding its centre, and whole blocks are
dealt to the splits (shuffled with `seed`, one block to each split first, then
each block to the split furthest below its share of chips). Chips of different
splits may still overlap along block edges (with `overlap` > 0, or where edge
chips are pinned); such a chip is dropped from the split listed first (train
before val before test), so no pixel, and no piece of an object, is in two
splits. An object straddling two non-overlapping chips of different splits is
still cut in two there: that is the block edge. Two rasters over the same
ground are not tied together: a warning says when they land in two splits.

With `reviewed` (a `review` column, see `geoseg.io.review`), only accepted
objects become labels. A rejected object is background where it lies: its
chips are kept without a label for it (hard negatives). A chip where an
object not reviewed yet lies (a piece of `min_area` pixels or more) is left
out: its label there is unknown, and neither format has an ignore value.
`skip_empty` then leaves out the chips without a reviewed object (accepted or
rejected), keeping the hard negatives.
"""

from __future__ import annotations

import csv
import json
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from pyproj import CRS
from rasterio.errors import NotGeoreferencedWarning

from geoseg.analysis.folders import building, check_out_dir
from geoseg.analysis.splits import assign_splits, chip_blocks, overlap_guard, parse_split
from geoseg.core.tiling import Window, plan_tiles
from geoseg.errors import GeosegWarning, UsageError, option
from geoseg.io.inputs import list_inputs
from geoseg.io.raster import RasterSource, ReadOptions, parse_bands
from geoseg.io.review import ACCEPTED, REJECTED, reviewed_decisions, warn_unreviewed_use
from geoseg.io.sources import unique_names
from geoseg.io.vectors import polygons_only, read_vector

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
    reviewed: bool = False
    skipped_unreviewed: int = 0  # chips left out: an object not reviewed yet lies there
    negatives: int = 0  # pieces of rejected objects in the chips written, without a label


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


def _on_raster(gdf: gpd.GeoDataFrame, src: RasterSource) -> np.ndarray:
    """The geometries in the raster's pixel coordinates; None for those not over it."""
    if len(gdf) and not CRS(gdf.crs).equals(CRS(src.crs)):
        gdf = gdf.to_crs(src.crs)
    geoms = np.array(gdf.geometry.values, dtype=object)
    if len(geoms):  # None for what was reprojected out of the projection's domain
        geoms[~np.isfinite(shapely.bounds(geoms)).all(axis=1)] = None
    px = to_pixels(geoms, src.transform)
    if len(px):
        px[~shapely.intersects(px, shapely.box(0, 0, src.width, src.height))] = None
    return px  # type: ignore[no-any-return]


def chip_stems(paths: list[Any]) -> list[str]:
    """A chip-name prefix per raster, unique among `paths` (the file name, or the trailing
    folders that tell two rasters of one name apart, joined with `_`)."""
    stems = [str(PurePosixPath(n).with_suffix("")).replace("/", "_") for n in unique_names(paths)]
    twice = [n for n, k in Counter(stems).items() if k > 1]
    if twice:
        raise UsageError(f"RASTERS: two inputs would both name their chips {twice[0]}_r..: rename one of them")
    return stems


def _categories(gdf: gpd.GeoDataFrame, label_field: str | None) -> tuple[list[str], np.ndarray]:
    if label_field is None:
        if "label" not in gdf.columns:
            return [DEFAULT_CLASS], np.zeros(len(gdf), np.int64)
        label_field = "label"
    elif label_field not in gdf.columns:
        cols = ", ".join(c for c in gdf.columns if c != gdf.geometry.name) or "none"
        raise UsageError(f"{option('label_field', label_field)}: VECTOR has no such column (columns: {cols})")
    values = gdf[label_field].astype(str).to_numpy()
    names = sorted(set(values))
    return names, np.searchsorted(names, values)


@dataclass
class _Objects:
    """The objects over one raster, in its pixel coordinates (None for the others): the labels, and
    with `reviewed` the rejected (background) and the not reviewed (their chips are left out)."""

    labels: np.ndarray
    rejected: np.ndarray | None = None
    unreviewed: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.trees = [None if g is None else shapely.STRtree(g) for g in (self.labels, self.rejected,
                                                                          self.unreviewed)]


def _objects(gdf: gpd.GeoDataFrame, src: RasterSource, review: np.ndarray | None) -> _Objects:
    geoms = _on_raster(gdf, src)
    if review is None:
        return _Objects(geoms)
    accepted, rejected = review == ACCEPTED, review == REJECTED
    return _Objects(*(np.where(rows, geoms, None) for rows in (accepted, rejected, ~(accepted | rejected))))


@dataclass
class _Raster:
    """One input raster as planned in the first pass."""

    path: Any
    stem: str
    windows: list[Window]
    blocks: list[tuple[int, int, int]]  # (raster number, block row, block col) per chip
    crs: str
    transform: list[float]
    height: int
    width: int
    objects: int  # objects over the raster
    footprint: shapely.Polygon  # the raster's outline in its CRS, to find rasters showing the same ground


def _plan_rasters(paths: list[Any], stems: list[str], gdf: gpd.GeoDataFrame, read: ReadOptions, chip_size: int,
                  overlap: int) -> list[_Raster]:
    """Open each raster once, check it, and plan its chips (no pixel is read)."""
    planned = []
    for path, stem in zip(paths, stems):
        with RasterSource(path, read) as src:
            assert src.crs is not None  # RasterSource refuses rasters without a CRS
            plan = plan_tiles(src.height, src.width, chip_size, overlap)
            n = int((~shapely.is_missing(_on_raster(gdf, src))).sum()) if len(gdf) else 0
            outline = shapely.Polygon([src.transform @ xy for xy in ((0, 0), (src.width, 0), (src.width, src.height),
                                                                      (0, src.height))])
            planned.append(_Raster(path, stem, [t.window for t in plan], [], src.crs.to_string(),
                                   list(src.transform)[:6], src.height, src.width, n, outline))
    return planned


def _deal(rasters: list[_Raster], chip_size: int, block_size: float | None, fractions: tuple[float, ...],
          seed: int) -> tuple[float, dict[tuple[int, int, int], int]]:
    """Blocks of each raster (never shared by two rasters), dealt to the splits: (block size, deal).

    Without `block_size`: 4 chips, or 2, or 1 when the rasters hold fewer blocks than there
    are splits; still fewer, the last splits stay empty (with a warning).
    """
    sizes = [block_size] if block_size is not None else [4.0, 2.0, 1.0]
    for size in sizes:
        for k, r in enumerate(rasters):
            r.blocks = [(k, *b) for b in chip_blocks(r.windows, size * chip_size)]
        blocks = [b for r in rasters for b in r.blocks]
        if len(set(blocks)) >= len(fractions):
            return size, assign_splits(blocks, fractions, seed)  # type: ignore[arg-type]
    if block_size is not None:
        assign_splits(blocks, fractions, seed)  # type: ignore[arg-type]  # raises: the user chose the size
    n = len(set(blocks))
    what = f"{rasters[0].path} holds" if len(rasters) == 1 else f"the {len(rasters)} rasters hold"
    warnings.warn(f"{what} {n} chip{'s' * (n > 1)} of {chip_size} px for {len(fractions)} splits: "
                  f"{', '.join(SPLITS[n:len(fractions)])} stay{'s' * (len(fractions) - n == 1)} empty; use a smaller "
                  f"{option('chip_size')} (e.g. {max(16, chip_size // 4)}) or more rasters",
                  GeosegWarning, stacklevel=3)
    return sizes[-1], assign_splits(blocks, fractions, seed, strict=False)  # type: ignore[arg-type]


def _share_ground(a: _Raster, b: _Raster) -> bool:
    """Whether two rasters show some of the same ground: not when they only share an edge (blocks cut
    side by side from one raster), whatever the rounding of their corners. In two CRSs, b's outline
    (densified) is reprojected into a's, and an overlap under 0.1 % of the smaller raster is taken for
    an edge bent by the reprojection."""
    other = b.footprint
    if not CRS(a.crs).equals(CRS(b.crs)):
        dense = shapely.segmentize(other, other.length / 400)
        other = gpd.GeoSeries([dense], crs=b.crs).to_crs(a.crs).iloc[0]
        if not other.is_valid or other.is_empty:
            return False
        return bool(shapely.intersection(a.footprint, other).area > 1e-3 * min(a.footprint.area, other.area))
    return bool(shapely.intersection(a.footprint, other).area > 1e-6 * min(a.footprint.area, other.area))


def _warn_shared_ground(rasters: list[_Raster], deal: dict[Any, int]) -> None:
    """Blocks are per raster: two rasters over the same ground may put it in two splits. Say so."""
    for a in range(len(rasters)):
        for b in range(a + 1, len(rasters)):
            ra, rb = rasters[a], rasters[b]
            splits = {deal[k] for k in ra.blocks + rb.blocks}
            if len(splits) > 1 and _share_ground(ra, rb):
                warnings.warn(f"{ra.path} and {rb.path} overlap: the ground they share may be in two splits "
                              f"(blocks are per raster); export them as separate datasets or crop the overlap",
                              GeosegWarning, stacklevel=3)


def export_dataset(
    rasters: Any, vector: str | os.PathLike[str] | gpd.GeoDataFrame,
    out_dir: str | os.PathLike[str], *, fmt: str = "coco", chip_size: int = 512, overlap: int = 0,
    image_format: str = "png", label_field: str | None = None, min_area: float = 1.0,
    block_size: float | None = None, split: str | tuple[float, ...] = (0.8, 0.2), seed: int = 0,
    bands: str | None = None, skip_empty: bool = False, reviewed: bool = False, overwrite: bool = False,
) -> DatasetSummary:
    """Cut `rasters` into chips and write them with the polygons of `vector` as COCO or YOLO labels.

    Args:
        rasters: a raster, a folder (searched recursively for rasters) or a list of them: one dataset.
        fmt: "coco" (annotations/instances_<split>.json) or "yolo" (labels/<split>/*.txt + data.yaml).
        chip_size, overlap: chip side and overlap, pixels. A raster smaller than a chip gives
            chips padded with nodata (0).
        image_format: "png" or "tif" (GeoTIFF chips keep their georeferencing).
        label_field: column giving the categories (default `label` if present, else one class "object").
        min_area: drop pieces smaller than this many pixels inside a chip.
        block_size: side of the spatial blocks, in chips (default 4, halved down to 1 while the
            rasters hold fewer blocks than there are splits).
        split: fractions of chips for train, val(, test).
        seed: shuffles the blocks among splits.
        skip_empty: leave out chips without objects (else they are kept as negatives); with
            `reviewed`, chips without a reviewed object.
        reviewed: `vector` has a `review` column: accepted objects are the labels, rejected ones
            background, and chips where an object not reviewed yet lies are left out.
    See the module docstring for the rules. Returns what was written.
    """
    if fmt not in FORMATS:
        raise UsageError(f"{option('fmt', fmt, flag='--format')}: use coco or yolo")
    if image_format not in IMAGE_FORMATS:
        raise UsageError(f"{option('image_format', image_format)}: use png or tif")
    if (block_size is not None and block_size <= 0) or min_area < 0:
        raise UsageError(f"{option('block_size')} must be > 0 and {option('min_area')} >= 0")
    fractions = parse_split(split)
    out = check_out_dir(out_dir, overwrite, what="dataset")
    paths = list_inputs(rasters)
    stems = chip_stems(paths)
    read = ReadOptions(bands=parse_bands(bands))
    gdf = polygons_only(read_vector(vector, "VECTOR"), "VECTOR")
    if gdf.crs is None and len(gdf):
        raise UsageError(f"VECTOR {vector} has no CRS: set it (e.g. ogr2ogr -a_srs EPSG:XXXX) so it can be "
                         f"placed on the rasters")
    review = reviewed_decisions(gdf, f"VECTOR {vector}") if reviewed else None
    labelled = gdf if review is None else gdf[review == ACCEPTED]
    names, cats = _categories(labelled, label_field)
    if review is not None:  # a category per row of gdf: -1 for those that are no label
        per_row = np.full(len(gdf), -1, np.int64)
        per_row[review == ACCEPTED] = cats
        cats = per_row
    planned = _plan_rasters(paths, stems, labelled, read, chip_size, overlap)
    if len(labelled) and not any(r.objects for r in planned):
        where = paths[0] if len(paths) == 1 else f"any of the {len(paths)} rasters"
        what = "accepted object" if reviewed else "object"
        raise UsageError(f"VECTOR {vector}: no {what} lies over {where}: check that both cover the same place "
                         f"(and the vector's CRS)")
    size, deal = _deal(planned, chip_size, block_size, fractions, seed)
    for r in planned:  # warned only now: a refused input gives one line, no warning before it
        if r.height < chip_size or r.width < chip_size:
            warnings.warn(f"{r.path} ({r.width} x {r.height} px) is smaller than {option('chip_size', chip_size)}: "
                          f"its chips are padded to {chip_size} x {chip_size} px with nodata (0)",
                          GeosegWarning, stacklevel=2)
    _warn_shared_ground(planned, deal)
    if not reviewed:
        warn_unreviewed_use(gdf, f"VECTOR {vector}", option("reviewed"))
    summary = DatasetSummary(Path(out_dir), fmt, names, reviewed=reviewed)
    for s in range(len(fractions)):
        summary.blocks[SPLITS[s]] = sum(1 for v in deal.values() if v == s)
    with building(out, "dataset") as tmp:
        chips = []
        for r in planned:
            splits = [deal[b] for b in r.blocks]
            keep = overlap_guard(r.windows, splits)  # within a raster, no pixel in two splits
            summary.dropped_overlap += int((~keep).sum())
            with RasterSource(r.path, read) as src:
                chips += _write_chips(src, tmp, r.windows, r.blocks, splits, keep, _objects(gdf, src, review),
                                      cats, summary, fractions=fractions, image_format=image_format,
                                      min_area=min_area, skip_empty=skip_empty, stem=r.stem)
        crs = {r.crs for r in planned}
        _write_labels(tmp, fmt, names, chips, len(fractions), crs.pop() if len(crs) == 1 else None)
        manifest = {
            "geoseg": "export-dataset", "vector": str(vector), "reviewed": reviewed,
            "rasters": [{"path": str(r.path), "name": r.stem, "crs": CRS(r.crs).to_wkt(), "transform": r.transform,
                         "height": r.height, "width": r.width} for r in planned],
            "format": fmt, "image_format": image_format, "chip_size": chip_size, "overlap": overlap,
            "bands": None if read.bands is None else list(read.bands),
            "block_size_chips": size, "split": dict(zip(SPLITS, fractions)), "seed": seed, "min_area_px": min_area,
            "categories": names, "summary": {k: v for k, v in summary.__dict__.items() if k != "out_dir"},
            "chips": [{k: c[k] for k in ("file", "source", "split", "row", "col", "block", "objects",
                                         *(("negatives",) if reviewed else ()))} for c in chips],
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str))
    return summary


def _write_chips(src: RasterSource, tmp: Path, windows: list[Window], blocks: list[tuple[int, int, int]],
                 splits: list[int], keep: np.ndarray, objects: _Objects, cats: np.ndarray, summary: DatasetSummary,
                 *, fractions: tuple[float, ...], image_format: str, min_area: float, skip_empty: bool,
                 stem: str) -> list[dict[str, Any]]:
    driver, ext = IMAGE_FORMATS[image_format]
    for s in range(len(fractions)):
        (tmp / "images" / SPLITS[s]).mkdir(parents=True, exist_ok=True)
        summary.chips.setdefault(SPLITS[s], 0)
        summary.objects.setdefault(SPLITS[s], 0)
    chips = []
    for w, block, s, ok in zip(windows, blocks, splits, keep):
        if not ok:
            continue
        rgb, valid = src.read(w)
        if not valid.any():
            summary.skipped_nodata += 1
            continue
        pieces, small = chip_pieces(w, objects.labels, objects.trees[0], cats, min_area)
        negatives = 0
        if objects.unreviewed is not None:
            if chip_pieces(w, objects.unreviewed, objects.trees[2], cats, min_area)[0]:
                summary.skipped_unreviewed += 1
                continue
            negatives = len(chip_pieces(w, objects.rejected, objects.trees[1], cats, min_area)[0])
        summary.too_small += small
        if skip_empty and not pieces and not negatives:
            summary.skipped_empty += 1
            continue
        name = f"{stem}_r{w.row}_c{w.col}{ext}"
        t = src.transform @ rasterio.Affine.translation(w.col, w.row)
        _write_image(tmp / "images" / SPLITS[s] / name, rgb, valid, driver, t, src.crs)
        split = SPLITS[s]
        summary.chips[split] += 1
        summary.objects[split] += len(pieces)
        summary.truncated += sum(p.truncated for p in pieces)
        summary.negatives += negatives
        chips.append({"file": f"images/{split}/{name}", "source": stem, "crs": src.crs, "split": split,
                      "row": w.row, "col": w.col, "negatives": negatives,
                      "height": w.height, "width": w.width, "block": list(block), "objects": len(pieces),
                      "transform": list(t)[:6], "pieces": pieces})
    return chips


def _write_labels(tmp: Path, fmt: str, names: list[str], chips: list[dict[str, Any]], n_splits: int,
                  crs: str | None) -> None:
    """COCO: one JSON per split (`info.crs` when all rasters share one CRS, else each image's
    `crs`). YOLO: label files, truncated.csv, and a data.yaml without `path`, so that the
    dataset root is the yaml's own folder and the dataset can be moved."""
    if fmt == "coco":
        (tmp / "annotations").mkdir()
        for split in SPLITS[:n_splits]:
            images: list[dict[str, Any]] = []
            anns: list[dict[str, Any]] = []
            for c in (c for c in chips if c["split"] == split):
                image_id = len(images) + 1
                images.append({"id": image_id, "file_name": c["file"], "width": c["width"], "height": c["height"],
                               "source": c["source"], "row": c["row"], "col": c["col"], "transform": c["transform"],
                               **({} if crs else {"crs": c["crs"].to_string()})})
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
    # No `path:` key: ultralytics then takes the yaml's own folder as the dataset root, so the
    # folder can be moved or copied to another machine (an absolute path would break there).
    yaml = ["# geoseg export-dataset: image folders are relative to this file's folder",
            *(f"{s}: images/{s}" for s in SPLITS[:n_splits]), f"nc: {len(names)}", "names:"]
    yaml += [f"  {k}: {json.dumps(n)}" for k, n in enumerate(names)]
    (tmp / "data.yaml").write_text("\n".join(yaml) + "\n")
