"""Outputs in a bucket: written to local stand-ins, uploaded whole once complete.

An output `s3://bucket/out.gpkg` (or `--output-dir s3://bucket/out/`) is
written to a local file first and uploaded once complete, with a conditional
PUT, so a reader never sees a partial object and an object that appeared
meanwhile is never replaced. The work folder stays local. See docs/cloud.md.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from geoseg.errors import OutputError, RunError, UsageError, option
from geoseg.io.buckets import (
    bucket_store,
    fetch,
    first_line,
    gdal_path,
    head_object,
    is_url,
    list_objects,
    split_url,
    store_of,
)
from geoseg.io.export import check_output, record
from geoseg.io.sources import output_names

log = logging.getLogger("geoseg")

@dataclass
class Target:
    """A run's outputs in a bucket, and their local stand-ins.

    The run writes to `output` / `output_dir` (local, beside its work folder);
    `upload()` puts each file into the bucket once it is complete.
    """

    url: str  #: -o URL, or the --output-dir URL
    folder: bool  #: --output-dir
    local: Path  #: the local folder the run writes in
    work_dir: Path
    overwrite: bool
    existing: dict[str, dict[str, Any]] = field(default_factory=dict)  #: objects there before, by key
    done: dict[str, str] = field(default_factory=dict)  #: input name -> its output URL, already in the bucket
    layer: str = "detections"
    records: dict[str, dict[str, Any]] = field(default_factory=dict)  #: URL -> `export.record` of what went up

    @property
    def output(self) -> Path | None:
        return None if self.folder else self.local / PurePosixPath(split_url(self.url)[2]).name

    @property
    def output_dir(self) -> Path | None:
        return self.local if self.folder else None

    def _key(self, rel: str) -> str:
        _, _, key = split_url(self.url)
        return (key.rstrip("/") + "/" + rel).lstrip("/") if self.folder else key

    def url_of(self, local: str | os.PathLike[str]) -> str:
        """The object URL of a file the run wrote locally."""
        if not self.folder:
            return self.url
        return self.url.rstrip("/") + "/" + Path(local).relative_to(self.local).as_posix()

    def upload(self, files: list[str]) -> dict[str, str]:
        """Upload the local outputs `files`; return local path -> URL. A file
        whose object appeared since the check (or changed, for a GeoPackage
        this run added a layer to) is not uploaded: RunError."""
        import obstore
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        scheme, bucket, _ = split_url(self.url)
        store = bucket_store(scheme, bucket)
        urls = {}
        for f in files:
            path = Path(f)
            url = self.url_of(path)
            key = split_url(url)[2]
            side = path.with_name(path.name + ".geoseg.json")
            self.records[url] = record(path, self.layer)  # for a shard's manifest, before the file goes
            before = self.existing.get(key)
            mode: Any = "create"
            if before is not None:
                mode = {k: before[k] for k in ("e_tag", "version") if before.get(k)} or "overwrite"
            try:
                if side.exists():  # provenance first: the output object appears last
                    obstore.put(store, key + ".geoseg.json", side, mode="overwrite")
                obstore.put(store, key, path, mode=mode)
            except (AlreadyExistsError, PreconditionError):
                raise RunError(f"{url} was written by another program during the run: not replaced; the result "
                               f"is kept in {path}: rerun (with {option('overwrite', True)} to replace it)") from None
            except Exception as e:
                raise RunError(f"{url}: upload failed ({first_line(e)}); the result is kept in {path}: "
                               f"rerun to upload it") from None
            log.info("%s: uploaded", url)
            urls[str(path)] = url
        return urls

    def upload_one(self, path: Path) -> str:
        """Upload one output as soon as it is written; its URL."""
        url = self.upload([str(path)])[str(path)]
        remove_local(path)
        return url

    def record_of(self, url: str) -> dict[str, Any]:
        """`export.record` of an output object: from this run's upload, else downloaded (one an
        earlier, interrupted run uploaded)."""
        if url not in self.records:
            scheme, bucket, key = split_url(url)
            local = self.work_dir / ".record" / PurePosixPath(key).name
            fetch(bucket_store(scheme, bucket), key, local)
            try:
                self.records[url] = record(local, self.layer)
            finally:
                remove_local(local)
        return self.records[url]

    def put(self, path: Path, name: str) -> str:
        """Upload a small file of the run's (a shard's manifest) as `name` under the --output-dir URL."""
        import obstore

        url = self.url.rstrip("/") + "/" + name
        scheme, bucket, key = split_url(url)
        try:
            obstore.put(bucket_store(scheme, bucket), key, path, mode="overwrite")
        except Exception as e:
            raise RunError(f"{url}: upload failed ({first_line(e)}); rerun to upload it") from None
        return url

    def finish(self) -> None:
        """Remove the local stand-ins once every output is uploaded."""
        shutil.rmtree(self.local, ignore_errors=True)


def target(output: Any, output_dir: Any, *, work_dir: str | os.PathLike[str], fmt: str, names: list[str] | None,
           overwrite: bool, suffixes: dict[str, str], layer: str = "detections",
           written: Collection[str] = ()) -> Target | None:
    """The bucket outputs of a run, checked before the model loads (None for
    local outputs): the bucket is listed; an existing -o object is refused
    without `overwrite` (a GeoPackage is fetched, to take the layer beside its
    others); with --output-dir, inputs whose output object exists count as done.
    `suffixes`: format -> extension (`geoseg.io.export.FORMATS`); `written`: the
    local outputs the run in `work_dir` wrote before (its own to replace)."""
    url = output if is_url(output) else output_dir if is_url(output_dir) else None
    if url is None:
        return None
    folder = url == output_dir
    if folder and output is not None:
        raise UsageError("give either -o OUT.gpkg (one file for all inputs) or --output-dir DIR (one per input)")
    suffix = suffixes[fmt] if folder else PurePosixPath(url).suffix.lower()
    if suffix not in UPLOADABLE:
        name = option("fmt", fmt, flag="--format") if folder else url
        raise OutputError(f"{name}: a bucket output must be one file: use .gpkg, .fgb, .parquet or .geojson")
    if is_url(str(work_dir)):
        raise UsageError(f"{option('work_dir', work_dir)}: the work folder must be on local disk: give a local folder")
    work = Path(work_dir)
    t = Target(url, folder, work.with_name(work.name + ".out"), work, overwrite, layer=layer)
    scheme, bucket, key = split_url(url)
    if not folder and (not key or key.endswith("/")):
        raise OutputError(f"{url}: give an object name such as {scheme}://{bucket}/out.gpkg")
    if folder:
        t.existing = list_objects(scheme, bucket, key.rstrip("/") + "/" if key.strip("/") else "", url)
    else:
        t.existing = head_object(scheme, bucket, key, url)
    if folder:
        for name, rel in zip(names or [], output_names(names or [], suffix)):
            k = t._key(rel)
            if k in t.existing and not overwrite:
                t.done[name] = f"{scheme}://{bucket}/{k}"
            elif k in t.existing and suffix == ".gpkg":  # only --layer is replaced: the others are kept
                fetch(store_of(url), k, t.local / rel)
            else:
                remove_local(t.local / rel)
        return t
    local = t.output
    assert local is not None
    t.local.mkdir(parents=True, exist_ok=True)
    if key in t.existing:
        if suffix == ".gpkg":
            fetch(store_of(url), key, local)
            _check_layer(t, local, layer, overwrite or f"{local}#{layer}" in written)
        elif not overwrite and str(local) not in written:  # not this run's own, interrupted
            raise OutputError(f"{url} exists: pass {option('overwrite', True)} to replace it, or choose another name")
        else:
            remove_local(local)
    else:
        remove_local(local)
    return t


def publish(target: Target, summary: Any, before: list[Any], *, finish: bool = True) -> None:
    """Upload what a run (`geoseg.run.pipeline.Summary`) wrote locally and has not
    uploaded yet, name the objects in its results, and add the inputs done
    before (`before`). Without `finish`, the local stand-ins stay (for a manifest to write)."""
    if target.folder:  # uploaded as each was written (`upload_one`), but for those an earlier run wrote
        urls = target.upload([o for o in summary.outputs if Path(o).exists()])
        urls.update({o: target.url_of(o) for o in summary.outputs if o not in urls})
    else:
        urls = target.upload([o for o in summary.outputs if o == str(target.output)])
    for f in summary.files:
        f.output = urls.get(f.output, f.output)
    summary.outputs = [urls.get(o, o) for o in summary.outputs]
    summary.files = before + summary.files
    for f in urls:  # uploaded: the bucket is the truth now
        remove_local(Path(f))
    if finish and not summary.failed:
        target.finish()


def count(url: str, layer: str) -> int:
    """The objects in an output object (read through GDAL); 0 where it cannot be read."""
    import pyogrio

    try:
        gpkg = url.lower().endswith(".gpkg")
        return int(pyogrio.read_info(gdal_path(url), layer=layer if gpkg else None)["features"])
    except Exception as e:
        log.warning("%s: cannot count its objects (%s)", url, first_line(e))
        return 0


def _check_layer(t: Target, local: Path, layer: str, overwrite: bool) -> None:
    """A layer the fetched GeoPackage has already is refused now, leaving nothing behind."""
    try:
        check_output(local, overwrite, layer)
    except OutputError as e:
        t.finish()
        raise OutputError(str(e).replace(str(local), t.url)) from None


def remove_local(path: Path) -> None:
    """A stand-in left by an earlier run: its bucket object is the truth."""
    path.unlink(missing_ok=True)
    path.with_name(path.name + ".geoseg.json").unlink(missing_ok=True)


UPLOADABLE = (".gpkg", ".geojson", ".json", ".fgb", ".parquet")
