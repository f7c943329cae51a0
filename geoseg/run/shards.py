"""Array jobs: one shard of a collection per job, then the shards' outputs combined.

Shard K of N holds the inputs whose name hashes to K - 1 modulo N: the name as
`geoseg.io.sources.unique_names` gives it ("a.tif", "2020/a.tif"), never the
absolute path, which differs between machines. Membership is the same on every
machine and rerun, and adding a file moves no other file (unless the new file
shares a name with one: both names then grow a folder, see `unique_names`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq
import pyogrio
import shapely
from pyproj import CRS

from geoseg.core.vectorize import parse_crs
from geoseg.errors import OutputError, UsageError, option
from geoseg.io import export
from geoseg.io.files import replace as move_into_place
from geoseg.io.inputs import visible_files
from geoseg.run.assemble import read_chunks
from geoseg.run.workdir import show

log = logging.getLogger("geoseg")

Shard = tuple[int, int]

# the formats geoseg writes (`--format`); .json and other vector files are not its outputs
SUFFIXES = tuple(export.FORMATS.values())


def parse(text: str) -> Shard:
    """"K/N" -> (K, N), K from 1 to N."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if m is None:
        raise UsageError(f"{option('shard', text)}: give K/N, e.g. 2/8 for job 2 of 8 (K from 1 to N)")
    return _in_range((int(m.group(1)), int(m.group(2))))


def _in_range(shard: Shard) -> Shard:
    k, n = shard
    if n < 1 or not 1 <= k <= n:
        raise UsageError(f"{option('shard', f'{k}/{n}')}: K must be from 1 to N (job K of N, counted from 1)")
    return k, n


def check(shard: Shard, output: Any = None, output_dir: Any = None, raster_out: Any = None) -> Shard:
    """A valid shard, with the per-input outputs it needs; else a UsageError."""
    k, n = _in_range(shard)
    if output is not None or output_dir is None:
        raise UsageError(f"{option('shard')} writes one output per input: give {option('output_dir')} DIR, "
                         f"not {option('output')} (then `geoseg combine DIR` makes one file)")
    if raster_out is not None:  # its per-input names would be the shard's, not the collection's
        raise UsageError(f"{option('shard')} does not write label rasters yet: leave out {option('raster_out')}")
    return k, n


def member(name: str, shard: Shard) -> bool:
    """Whether the input named `name` (see `unique_names`) is in `shard`."""
    k, n = shard
    return int(hashlib.sha1(name.encode("utf-8")).hexdigest(), 16) % n == k - 1


def select(paths: list[Any], names: list[str], shard: Shard) -> tuple[list[Any], list[str]]:
    """The inputs of `shard`, with their names (those of the whole collection)."""
    keep = [k for k, name in enumerate(names) if member(name, shard)]
    return [paths[k] for k in keep], [names[k] for k in keep]


def find_outputs(folder: Path, exclude: Path | None = None) -> list[Path]:
    """The per-input outputs under `folder`, recursively, by sorted relative
    path; hidden files and folders (work folders, temporary files) left out."""
    skip = exclude.resolve() if exclude is not None else None
    found = [p for p in visible_files(folder) if p.name.lower().endswith(SUFFIXES) and p.resolve() != skip]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


MANIFEST = re.compile(r"\.geoseg-shard-(\d+)-of-(\d+)\.json")


def write_manifest(folder: str | os.PathLike[str], shard: Shard, names: list[str], settings: dict[str, Any],
                   results: list[Any], layer: str, *, remote: Any = None) -> Path:
    """Record in `folder` that shard `shard` is done: the collection (`names`), the
    settings fingerprint, and per input of the shard its state and output (from the
    runs' `FileResult`s) with its number of objects and SHA-256, so that `combine` can
    tell a missing, mixed or changed shard. With `remote` (a `geoseg.io.upload.Target`),
    the outputs are objects under its URL, their records taken as they were uploaded."""
    k, n = shard
    path = Path(folder) / manifest_name(shard)
    files: dict[str, Any] = {}
    for f in results:
        files[f.source] = {"state": f.state, "output": None}
        if f.output is None:
            continue
        if remote is not None:
            rel = str(f.output)[len(remote.url.rstrip("/")) + 1:]
            files[f.source].update(output=rel, **remote.record_of(str(f.output)))
        else:  # what combine checks the output against: it may be replaced meanwhile
            out = Path(f.output)
            files[f.source].update(output=out.relative_to(folder).as_posix(), **export.record(out, layer))
    manifest = {"shard": [k, n], "inputs": names, "settings": settings, "layer": layer, "files": files}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, default=str))
    move_into_place(tmp, path)
    return path


def manifest_name(shard: Shard) -> str:
    return f".geoseg-shard-{shard[0]}-of-{shard[1]}.json"


def _manifests(folder: Path) -> list[tuple[Path, dict[str, Any]]]:
    found = sorted(p for p in folder.iterdir() if MANIFEST.fullmatch(p.name))
    out = []
    for p in found:
        k, n = (int(v) for v in MANIFEST.fullmatch(p.name).groups())  # type: ignore[union-attr]
        try:
            m = json.loads(p.read_text())
        except ValueError:
            m = None
        if not _well_formed(m) or m["shard"] != [k, n]:
            raise UsageError(f"{p} is damaged: rerun shard {k}/{n} (--shard {k}/{n}) to write it again")
        out.append((p, m))
    return out


def _well_formed(m: Any) -> bool:
    """Whether `m` has the fields `write_manifest` writes, of their types (a hand-edited or truncated
    manifest must be refused in one line, not fail deep in combine)."""
    if not isinstance(m, dict) or not isinstance(m.get("shard"), list) or len(m["shard"]) != 2:
        return False
    if not all(isinstance(v, int) for v in m["shard"]) or not isinstance(m.get("layer"), str):
        return False
    if not isinstance(m.get("inputs"), list) or not all(isinstance(v, str) for v in m["inputs"]):
        return False
    if not isinstance(m.get("settings"), dict) or not isinstance(m.get("files"), dict):
        return False
    for f in m["files"].values():
        if not isinstance(f, dict) or not isinstance(f.get("state"), str):
            return False
        if f.get("output") is not None and not (isinstance(f["output"], str) and isinstance(f.get("objects"), int)
                                                and isinstance(f.get("sha256"), str)):
            return False
    return True


def _from_manifests(folder: Path, layer: str) -> list[Path] | None:
    """The outputs the shards' manifests list, checked to be one complete set made
    with one set of settings; None where the folder has no manifest (older outputs)."""
    loaded = _manifests(folder)
    if not loaded:
        return None
    first_path, first = loaded[0]
    n = first["shard"][1]
    for p, m in loaded[1:]:
        if m["shard"][1] != n or m["inputs"] != first["inputs"]:
            raise UsageError(f"{p} is shard {m['shard'][0]}/{m['shard'][1]} of {len(m['inputs'])} inputs, "
                             f"{first_path} shard {first['shard'][0]}/{n} of {len(first['inputs'])}: remove the "
                             f"shards of the other run")
        for key in sorted(set(m["settings"]) | set(first["settings"])):
            a, b = m["settings"].get(key), first["settings"].get(key)
            if a != b:
                raise UsageError(f"shard {m['shard'][0]}/{n} was made with {key} {show(a)}, shard "
                                 f"{first['shard'][0]}/{n} with {key} {show(b)}: rerun that shard with the same "
                                 f"settings")
        if m["layer"] != first["layer"]:
            raise UsageError(f"shard {m['shard'][0]}/{n} wrote layer {m['layer']!r}, shard {first['shard'][0]}/{n} "
                             f"layer {first['layer']!r}: rerun that shard with the same --layer")
    have = {m["shard"][0] for _, m in loaded}
    missing = [k for k in range(1, n + 1) if k not in have]
    if missing:
        raise UsageError(f"{folder}: shard {missing[0]}/{n} has not finished ({len(have)} of {n} have): run it "
                         f"first (--shard {missing[0]}/{n}), then combine")
    outputs = []
    for _, m in sorted(loaded, key=lambda pm: pm[1]["shard"][0]):
        for name, f in m["files"].items():
            if f["state"] == "failed":
                raise UsageError(f"shard {m['shard'][0]}/{n} failed on {name}: rerun it (--shard "
                                 f"{m['shard'][0]}/{n}), then combine")
            if f["output"] is not None:
                path = folder / f["output"]
                shard = f"shard {m['shard'][0]}/{n}"
                if not path.is_file():
                    raise UsageError(f"{path} is missing: {shard} wrote it; rerun that shard")
                try:
                    found = export.record(path, m["layer"])
                except Exception as e:  # another program's file, or a damaged one
                    raise UsageError(f"{path} cannot be read as {shard} wrote it ({str(e).splitlines()[0]}): "
                                     f"rerun that shard (--shard {m['shard'][0]}/{n})") from None
                count = found["objects"]
                if count != f["objects"]:
                    raise UsageError(f"{path} holds {count} features but {shard} wrote {f['objects']}: it was "
                                     f"replaced or changed since; rerun that shard (--shard {m['shard'][0]}/{n})")
                if found["sha256"] != f["sha256"]:
                    raise UsageError(f"{path} is not the file {shard} wrote (its content changed since): rerun "
                                     f"that shard (--shard {m['shard'][0]}/{n})")
                outputs.append(path)
    if first["layer"] != layer:
        raise UsageError(f"the shards wrote layer {first['layer']!r}: pass {option('layer', first['layer'])}")
    return sorted(outputs, key=lambda p: p.relative_to(folder).as_posix())


def _layer(path: Path, layer: str) -> str | None:
    return layer if path.suffix.lower() == ".gpkg" else None


def _parquet_crs(path: Path) -> CRS | None:
    geo = json.loads((pq.read_schema(path).metadata or {}).get(b"geo", b"{}"))
    column = geo.get("columns", {}).get(geo.get("primary_column", "geometry"), {})
    crs = column.get("crs", "OGC:CRS84")  # GeoParquet: no crs key means lon/lat
    return None if crs is None else CRS.from_user_input(crs)


def _crs(path: Path, layer: str) -> CRS | None:
    if path.suffix.lower() == ".parquet":
        return _parquet_crs(path)
    if _layer(path, layer) is not None and layer.lower() not in (export.gpkg_layers(path) or set()):
        raise OutputError(f"{path} has no layer {layer!r}: pass {option('layer')} with the layer the outputs "
                          f"were written to")
    crs = pyogrio.read_info(path, layer=_layer(path, layer))["crs"]
    return None if crs is None else CRS.from_user_input(crs)


def _chunks(path: Path, layer: str, chunk: int) -> Iterator[gpd.GeoDataFrame]:
    if path.suffix.lower() == ".parquet":
        crs = _parquet_crs(path)
        for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk):
            df = batch.to_pandas()
            geometry = shapely.from_wkb(df.pop("geometry"))
            yield gpd.GeoDataFrame(df, geometry=geometry, crs=crs)
        return
    yield from read_chunks(path, _layer(path, layer), chunk)


def _sources(path: Path, layer: str) -> list[str]:
    """The distinct `source` values of one output, in order; only that column is read."""
    if path.suffix.lower() == ".parquet":
        values = pq.read_table(path, columns=["source"]).column("source").to_pylist()
    else:
        table = pyogrio.read_dataframe(path, layer=_layer(path, layer), columns=["source"], read_geometry=False)
        values = table["source"].tolist() if "source" in table else []
    return [str(v) for v in dict.fromkeys(values)]


def _provenance(path: Path, layer: str) -> dict[str, Any]:
    try:
        return export.read_provenance(path, layer)
    except (OSError, ValueError):  # written by another program, or its sidecar lost
        return {}


def combine(folder: str | os.PathLike[str], output: str | os.PathLike[str], *, layer: str = "detections",
            overwrite: bool = False, dst_crs: Any = None, chunk: int = 100_000) -> tuple[int, int]:
    """Stream every per-input output under `folder` into `output`, chunk by
    chunk, numbering `id` from 1 in sorted relative path order.

    Returns the number of objects and of files combined.

    Raises:
        UsageError: no such folder, no output in it, outputs in several CRSs
            without `dst_crs`, or an output that cannot be written (see
            `export.check_output`).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"{folder}: no such folder: give the --output-dir of the shards")
    target = export.check_output(output, overwrite, layer)
    crs = None if dst_crs is None else parse_crs(dst_crs)
    listed = _from_manifests(folder, layer)
    files = find_outputs(folder, exclude=target) if listed is None else listed
    if not files:
        raise UsageError(f"{folder}: holds no geoseg output ({', '.join(SUFFIXES)}), also in its subfolders: "
                         f"give the --output-dir of the shards")
    crss = {p: _crs(p, layer) for p in files}
    earlier = [p for p in files if "combined_from" in _provenance(p, layer)]
    for p in earlier:  # e.g. an earlier combine's output in OUT_DIR: its objects are in the per-input files
        log.info("%s: skipped: it was made by geoseg combine", p)
    files = [p for p in files if p not in earlier]
    if not files:
        raise UsageError(f"{folder}: holds only combined files, no per-input output: give the --output-dir "
                         f"of the shards")
    if crs is None:
        first = crss[files[0]]
        other = next((p for p in files if crss[p] != first), None)
        if other is not None:
            raise UsageError(f"{other} is in {_name(crss[other])} but {files[0]} in {_name(first)}: pass "
                             f"{option('dst_crs')} to put them in one")
    rels = [p.relative_to(folder).as_posix() for p in files]
    # the first file's provenance; its sources, the files' own (a per-input file names only its input)
    meta = {**_provenance(files[0], layer), "combined_from": rels,
            "combined": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "sources": [s for p in files for s in _sources(p, layer)]}
    if crs is not None:
        meta["dst_crs"] = crs.to_string()
    if listed is None:
        log.info("%s: no shard manifest (outputs of an older geoseg): every output found is combined, and a "
                 "missing shard cannot be told", folder)
    n = objects = 0
    with export.Writer(target, layer=layer, overwrite=overwrite, provenance=meta,
                       crs=crs) as writer:
        columns: list[str] | None = None
        empty = None
        for path in files:
            for gdf in _chunks(path, layer, chunk):
                if columns is None:
                    columns = ["id", *[c for c in gdf.columns if c != "id"]]
                elif set(gdf.columns) | {"id"} != set(columns):
                    raise OutputError(f"{path} has other columns than {files[0]}: combine outputs of one geoseg "
                                      f"version and settings")
                ids = np.arange(n + 1, n + 1 + len(gdf), dtype=np.int64)
                first = np.ones(len(gdf), bool)
                if "object_id" in gdf.columns:  # the strips of one object keep one id: their first's
                    gdf["object_id"] = gdf["object_id"].to_numpy(np.int64) + ids - gdf["id"].to_numpy(np.int64)
                    first = gdf["object_id"].to_numpy(np.int64) == ids
                gdf["id"] = ids
                objects += int(first.sum())  # a region's strips: one object
                gdf = gdf[columns]
                if crs is not None:
                    gdf = gdf.to_crs(crs)
                if empty is None:
                    empty = gdf.iloc[:0]
                n += len(gdf)
                writer.write(gdf)
        assert empty is not None
        writer.commit(empty)
    return objects, len(files)


def _name(crs: CRS | None) -> str:
    if crs is None:
        return "no CRS"
    code = crs.to_authority()
    return ":".join(code) if code else crs.name
