"""`geoseg combine`: the outputs of an array job's shards made one, locally or in a bucket."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from geoseg.errors import UsageError
from geoseg.io.buckets import download_prefix, is_url
from geoseg.io.upload import target
from geoseg.run import rowshards, shards


def combine(folder: str, output: str, **options: Any) -> tuple[int, int]:
    """Combine the shards' outputs under `folder` into `output`: the row parts
    of one mosaic (`geoseg.run.rowshards`), else the per-input files
    (`geoseg.run.shards`). Where the folder and/or the output is in a bucket,
    the outputs under the prefix are downloaded to a local temporary folder
    (in the current folder), combined there, and the result uploaded as
    `Target.upload` does. Returns the numbers of objects and of files."""
    if not is_url(folder) and not is_url(output):
        return _combine(folder, output, **options)
    with tempfile.TemporaryDirectory(prefix=".geoseg-combine-", dir=Path.cwd()) as tmp:
        out: Any = output
        t = None
        if is_url(output):
            t = target(output, None, work_dir=Path(tmp) / "work", fmt="gpkg", names=[],
                       overwrite=bool(options.get("overwrite")), suffixes={})
            out = t.output
        local = folder
        if is_url(folder):
            local = str(Path(tmp) / "outputs")
            download_prefix(folder, Path(local), skip=output, suffixes=shards.SUFFIXES, hidden=shards.MANIFEST)
        result = _combine(local, out, **options)
        if t is not None:
            t.upload([str(out)])
    return result


def _combine(folder: str | Path, output: Any, **options: Any) -> tuple[int, int]:
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"{folder}: no such folder: give the --output-dir of the shards")
    if rowshards.find_parts(folder):  # the shards of one mosaic's rows (`--mosaic --shard`)
        return rowshards.combine(folder, output, **options)
    return shards.combine(folder, output, **options)
