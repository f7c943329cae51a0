"""Array jobs over one mosaic: shards of its rows of tiles, merged across their boundaries by `combine`.

Shard K of N stages the detections of rows ``(K-1)·R//N`` to ``K·R//N`` of
the mosaic's R rows of tiles (a band across it), as any run stages them, and
writes its staged pieces, not merged objects, to ``OUT/NAME.part-K-of-N.sqlite``
with what the merge needs (the mosaic, its grid, the settings). `combine`
copies every part's rows into one store and runs the row merge over all rows
in order, as a single run would: objects on a shard boundary come back once,
and memory stays bounded by the rows an object spans.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sqlite3
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import rasterio
import shapely
from pyproj import CRS
from rasterio.crs import CRS as RasterioCRS

from geoseg.core.staging import TileStore
from geoseg.core.tiling import Window, plan_tiles
from geoseg.core.vectorize import parse_crs
from geoseg.errors import UsageError
from geoseg.io import export, files
from geoseg.run.assemble import Assembler, empty_frame, provenance
from geoseg.run.checks import exemplars_of
from geoseg.run.engine import Engine
from geoseg.run.inspection import RasterInfo, inspect
from geoseg.run.progress import Progress
from geoseg.run.rowmerge import FileMerge
from geoseg.run.settings import Settings, fingerprint
from geoseg.run.shards import _provenance, find_outputs
from geoseg.run.stage import stage_rows
from geoseg.run.workdir import WorkDir, _key, default_work_dir, show

log = logging.getLogger("geoseg")

PART = re.compile(r"^(?P<name>.+)\.part-(?P<k>\d+)-of-(?P<n>\d+)\.sqlite$")
META = "mosaic_part"


def rows_of(shard: tuple[int, int], n_rows: int) -> range:
    """The rows of tiles shard K of N holds: a contiguous band, every row in exactly one shard."""
    k, n = shard
    return range((k - 1) * n_rows // n, k * n_rows // n)


def part_path(output_dir: str | os.PathLike[str], name: str, shard: tuple[int, int]) -> Path:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    return Path(output_dir) / f"{stem}.part-{shard[0]}-of-{shard[1]}.sqlite"


def run_part(xml: str, settings: Settings, engine: Engine, *, shard: tuple[int, int],
             output_dir: str | os.PathLike[str], work_dir: Any = None, restart: bool = False) -> tuple[Path, int]:
    """Stage shard `shard`'s rows of the mosaic `xml` and write its part; (the part, tiles segmented).

    Resumable like any run (its work folder is kept until the part is written).
    """
    info = inspect(xml, tile_size=settings.tile_size, overlap=settings.overlap, read=settings.read)
    target = part_path(output_dir, info.name, shard)
    done = _done(target, xml, fingerprint(settings, engine), settings)
    if done is not None:
        log.info("%s: done before", target)
        return target, done
    n_rows, n_cols = info.plan.shape
    rows = rows_of(shard, n_rows)
    others = [t for t in range(len(info.plan)) if t // n_cols not in rows]
    share = replace(info, skip=tuple(sorted(set(info.skip) | set(others))))  # staged empty, never read
    work = WorkDir(work_dir if work_dir is not None else default_work_dir(None, output_dir, shard),
                   fingerprint(settings, engine), restart=restart)
    try:  # the folder's lock is let go however this ends
        engine.check(settings.text_prompts, exemplars_of([xml], settings))  # also loads the model where it runs
        progress = Progress(bars=settings.progress, n_files=1, total_tiles=share.tiles)
        store = work.store(xml, len(share.plan), share.plan.shape)  # refuses a mosaic changed since
        try:  # staged only: `combine` merges every shard's rows at once
            stage_rows(xml, settings, engine, share, store, progress)
        finally:
            store.close()
            progress.close()
        meta = {"shard": list(shard), "rows": [rows.start, rows.stop], "tiles": share.tiles, "key": _key(xml),
                "xml": xml, "settings": work.settings, "info": _info_json(info), "output": _output_json(settings),
                "provenance": provenance(engine, settings, [info.name])}  # as the unsharded run's
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            with TileStore(work.path / f"{work.name(xml)}.sqlite") as store:
                store.save(META, meta)
            with sqlite3.connect(work.path / f"{work.name(xml)}.sqlite") as src, sqlite3.connect(tmp) as dst:
                src.backup(dst)  # consistent, WAL included
                dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, read without -wal/-shm files
            files.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        work.remove()
    finally:
        work.close()
    log.info("%s: rows %d to %d of %d rows of tiles staged", target, rows.start, rows.stop - 1, n_rows)
    return target, share.tiles


def _done(target: Path, xml: str, fingerprint: dict[str, Any], settings: Settings) -> int | None:
    """The tiles of a part written before by the same shard, mosaic and settings; None to (re)make it."""
    if not target.is_file():
        return None
    try:
        meta = _load(target)
    except UsageError:
        return None
    same = (meta["key"] == _key(xml) and meta["settings"] == json.loads(json.dumps(fingerprint, default=str))
            and meta["output"] == _output_json(settings))
    return int(meta["tiles"]) if same else None


def _info_json(info: RasterInfo) -> dict[str, Any]:
    win = info.window
    return {"name": info.name, "width": info.width, "height": info.height, "bands": list(info.bands),
            "dtype": info.dtype, "crs": info.crs.to_wkt(), "transform": list(info.transform)[:6],
            "pixel_size": info.pixel_size, "nodata": info.nodata,
            "utm": None if info.utm is None else CRS.from_user_input(info.utm).to_wkt(),
            "area_km2": info.area_km2, "skip": list(info.skip),
            "zone": None if info.zone is None else shapely.to_wkt(info.zone, rounding_precision=-1),
            "window": None if win is None else [win.row, win.col, win.height, win.width], "grid": list(info.grid)}


def _output_json(settings: Settings) -> dict[str, Any]:
    return {"prompts": settings.prompts, "tile_size": settings.tile_size, "overlap": settings.overlap,
            "dst_crs": None if settings.dst_crs is None else settings.dst_crs.to_wkt(),
            "simplify": settings.simplify, "min_area": settings.min_area, "match_iou": settings.match_iou}


def _rebuild(meta: dict[str, Any], dst_crs: Any) -> tuple[RasterInfo, Settings]:
    i, o = meta["info"], meta["output"]
    plan = plan_tiles(i["height"], i["width"], o["tile_size"], o["overlap"])
    info = RasterInfo(
        path=meta["xml"], name=i["name"], width=i["width"], height=i["height"], bands=tuple(i["bands"]),
        dtype=i["dtype"], crs=RasterioCRS.from_wkt(i["crs"]), transform=rasterio.Affine(*i["transform"]),
        pixel_size=i["pixel_size"], nodata=i["nodata"], utm=None if i["utm"] is None else CRS.from_wkt(i["utm"]),
        area_km2=i["area_km2"], plan=plan, skip=tuple(i["skip"]),
        zone=None if i["zone"] is None else shapely.from_wkt(i["zone"]),
        window=None if i["window"] is None else Window(*i["window"]), grid=tuple(i["grid"]))
    crs = dst_crs if dst_crs is not None else (None if o["dst_crs"] is None else CRS.from_wkt(o["dst_crs"]))
    settings = Settings(prompts=o["prompts"], tile_size=o["tile_size"], overlap=o["overlap"], dst_crs=crs,
                        simplify=o["simplify"], min_area=o["min_area"], match_iou=o["match_iou"])
    return info, settings


def find_parts(folder: Path) -> list[Path]:
    """The mosaic parts directly in `folder` (where the shards write them)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and PART.match(p.name))


def _load(path: Path) -> dict[str, Any]:
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (META,)).fetchone()
    except sqlite3.Error:
        row = None
    if row is None:
        raise UsageError(f"{path} is not a shard of a mosaic written by geoseg: remove it, or rerun that shard")
    return json.loads(row[0])  # type: ignore[no-any-return]


def _check(folder: Path, parts: list[Path]) -> list[tuple[Path, dict[str, Any]]]:
    """The parts in row order, checked to be one complete, consistent set."""
    names = sorted({PART.match(p.name).group("name") for p in parts})  # type: ignore[union-attr]
    if len(names) > 1:
        raise UsageError(f"{folder} holds shards of several mosaics ({', '.join(names)}): give each mosaic's "
                         f"shards their own --output-dir")
    loaded = [(p, _load(p)) for p in parts]
    first_path, first = loaded[0]
    n = first["shard"][1]
    for p, meta in loaded[1:]:
        if meta["shard"][1] != n:
            raise UsageError(f"{p} is shard {meta['shard'][0]} of {meta['shard'][1]} but {first_path} of {n}: "
                             f"remove the shards of the other run")
        if meta["key"] != first["key"]:
            raise UsageError(f"{p} and {first_path} are shards of different mosaics (other files or grid): rerun "
                             f"the shards of one mosaic with the same inputs")
        for key in sorted(set(meta["settings"]) | set(first["settings"])):
            a, b = meta["settings"].get(key), first["settings"].get(key)
            if a != b:
                raise UsageError(f"{p} was made with {key} {show(a)}, {first_path} with {key} {show(b)}: rerun "
                                 f"that shard with the same settings")
        if meta["output"] != first["output"]:
            raise UsageError(f"{p} and {first_path} were made with different output settings (--dst-crs, "
                             f"--simplify or --min-area): rerun that shard with the same settings")
    have = sorted({meta["shard"][0] for _, meta in loaded})
    missing = [k for k in range(1, n + 1) if k not in have]
    if missing:
        raise UsageError(f"{folder} holds shards {', '.join(map(str, have))} of {n} of the mosaic {names[0]}: "
                         f"shard {missing[0]}/{n} is missing: run it first (--mosaic --shard {missing[0]}/{n})")
    return sorted(loaded, key=lambda pm: pm[1]["shard"][0])


def combine(folder: Path, output: str | os.PathLike[str], *, layer: str = "detections", overwrite: bool = False,
            dst_crs: Any = None) -> tuple[int, int]:
    """Merge the shards of one mosaic in `folder` into `output`; (objects, shards).

    Raises:
        UsageError: a shard missing, shards of other settings or mosaics, an
            output that cannot be written.
    """
    target = export.check_output(output, overwrite, layer)
    if [p for p in find_outputs(folder, exclude=target) if "combined_from" not in _provenance(p, layer)]:
        raise UsageError(f"{folder} holds both shards of a mosaic and per-file outputs: give each its own "
                         f"--output-dir")
    parts = _check(folder, find_parts(folder))
    info, settings = _rebuild(parts[0][1], None if dst_crs is None else parse_crs(dst_crs))
    n_rows = info.plan.shape[0]
    work = folder / f".geoseg-combine-{os.getpid()}"
    work.mkdir()
    try:
        store_path = work / "rows.sqlite"
        TileStore(store_path).close()  # the staging schema of this geoseg
        with sqlite3.connect(store_path) as db:
            columns = ", ".join(r[1] for r in db.execute("PRAGMA table_info(pieces)"))
            for path, meta in parts:
                lo, hi = meta["rows"]
                db.execute("ATTACH DATABASE ? AS part", (f"file:{path}?mode=ro",))
                db.execute(f"INSERT INTO pieces ({columns}) SELECT {columns} FROM part.pieces "
                           f"WHERE trow >= ? AND trow < ?", (lo, hi))
                db.commit()
                db.execute("DETACH DATABASE part")
        objects = work / "objects.gpkg"
        merging = FileMerge(store_path, info, settings, objects)
        merging.feed(n_rows)
        merging.join()
        meta = {**parts[0][1]["provenance"], "combined_from": [p.name for p, _ in parts],
                "combined": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        if settings.dst_crs is not None:
            meta["dst_crs"] = settings.dst_crs.to_string()
        with export.Writer(target, layer=layer, overwrite=overwrite, provenance=meta,
                           crs=settings.dst_crs) as w:
            assembler = Assembler(w, collect=False)
            assembler.add(objects)
            w.commit(assembler.empty if assembler.empty is not None else empty_frame())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return merging.objects, len(parts)


