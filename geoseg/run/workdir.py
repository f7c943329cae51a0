"""The work folder of a run: staged detections and results per input, resumable.

`run.json` records every setting that changes what the model finds (prompts,
backend, model, thresholds, tiling, reading); a run that finds a work folder
made with other settings stops with an error naming the option, so old partial
results never mix with new ones. Each input has a SQLite staging store (see
`geoseg.core.staging`) and, once merged, a GeoPackage of its objects.

A damaged folder (a JSON file empty, garbled or gone) is refused naming the
file; `restart` discards it, but never a folder holding anything geoseg does
not write there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from geoseg import errors
from geoseg.core.staging import TileStore
from geoseg.errors import RasterError, UsageError, option
from geoseg.io import files
from geoseg.io.buckets import is_url
from geoseg.io.sources import is_mosaic, is_raster_object, is_web_area, mosaic_identity, source_name, web_meta

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
FAILED_FILE = "failed.json"
WRITTEN_FILE = "written.json"
DEFAULT_LAYER = "detections"  # its runs keep the work folder's plain name
LOCK_FILE = "lock"  # held by the live run (`geoseg.io.files.Lock`)


# what each file holds, checked as it is read
_SHAPES = {
    RUN_FILE: ("a JSON object with the run's settings",
               lambda v: isinstance(v, dict) and isinstance(v.get("settings"), dict)),
    FAILED_FILE: ("a JSON object of error messages",
                  lambda v: isinstance(v, dict) and all(isinstance(m, str) for m in v.values())),
    WRITTEN_FILE: ("a JSON list of outputs", lambda v: isinstance(v, list) and all(isinstance(o, str) for o in v)),
}
# every name geoseg gives a file in a work folder (a folder holding anything else is never removed)
_OURS = re.compile(
    r"(run|failed|written)\.json(\.tmp)?|lock"  # these files and their temporary files (`_atomic_json`)
    r"|[A-Za-z0-9_.-]*-[0-9a-f]{10}\.(sqlite|objects\.gpkg)(-wal|-shm|-journal)?"  # `WorkDir.name`, journals
    r"|\.[A-Za-z0-9_.-]*-[0-9a-f]{10}\.objects\.\d+(-[0-9a-f]{6})?\.[0-9a-f]{6}\.tmp\.([0-9a-f]{4}\.)?gpkg"
    r"(-wal|-shm|-journal)?"  # `export.Writer`
)


def _atomic_json(path: Path, value: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(value, indent=1, default=str))
        files.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if errors.disk_full(e):
            raise errors.DiskFullError(path) from e
        raise


def _damaged(path: Path, why: str) -> UsageError:
    return UsageError(f"{path} {why}: the work folder {path.parent} is damaged and cannot be resumed: "
                      f"pass {option('restart', True)} to discard it and start over")


def _read_json(path: Path, default: Any) -> Any:
    """The value in the work folder's file `path`, `default` if there is none; a damaged one is refused."""
    if not path.is_file():
        return default
    text = path.read_bytes()
    try:
        value = json.loads(text)
    except ValueError:  # UnicodeDecodeError too
        raise _damaged(path, "is empty" if not text.strip() else "is not JSON") from None
    shape, fits = _SHAPES[path.name]
    if not fits(value):
        raise _damaged(path, f"is not {shape}")
    return value


def _busy(path: Path, holder: dict[str, Any]) -> UsageError:
    who = files.holder_text(holder) or "pid unknown"
    return UsageError(f"another geoseg run ({who}) is using the work folder {path}: wait for it to end, or "
                      f"give this run another output, {option('layer')} or {option('work_dir')}")


def check_free(path: str | os.PathLike[str]) -> None:
    """Refuse now, before any model loads, a work folder a live run is using."""
    holder = files.holder(Path(path) / LOCK_FILE)
    if holder is not None:
        raise _busy(Path(path), holder)


def _check(path: Path) -> None:
    """Refuse the work folder at `path` if one of its files is damaged."""
    for name, default in ((FAILED_FILE, {}), (WRITTEN_FILE, [])):
        _read_json(path / name, default)


def _only_ours(path: Path) -> bool:
    """Whether folder `path` holds only files geoseg writes in a work folder."""
    return all(_OURS.fullmatch(p.name) for p in path.iterdir())


def _key(source: Any) -> str:
    if is_mosaic(source):  # its XML names the members and the grid, never their sizes or times
        return f"mosaic:{source_name(source)}:{hashlib.sha1(source.encode()).hexdigest()[:16]}"
    if is_web_area(source):  # the service, its level and window; not where its tiles are cached
        m = web_meta(source)
        what = json.dumps([m["service"], m["zoom"], m["pixel"], m["crs"], m["window"]])
        return f"web:{m['name']}:{hashlib.sha1(what.encode()).hexdigest()[:16]}"
    # an in-memory input (DataArray, open dataset) is only ever staged by one run
    return f"{source_name(source)}@{id(source)}" if is_raster_object(source) else str(source)


def identity(source: Any) -> dict[str, Any]:
    """What tells an input file apart from a changed one: path, size, mtime
    (of each member file, for a mosaic)."""
    path = _key(source)
    info: dict[str, Any] = {"path": errors.redact(path)}  # a signed URL's signature stays out of the folder
    if is_mosaic(source):
        info["members"] = [[errors.redact(m[0]), *m[1:]] for m in mosaic_identity(source)]
    if os.path.isfile(path):
        st = os.stat(path)
        info.update(size=st.st_size, mtime_ns=st.st_mtime_ns)
    return info


def show(value: Any) -> str:
    """A setting as the CLI takes it."""
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "(none)"
    return "(default)" if value is None else str(value)


_PYTHON_NAMES = {"--prompt": "prompts", "--backend": "segmenter"}  # where geoseg.segment() names it otherwise


def _setting(key: str, value: Any = None, *, bare: bool = False) -> str:
    """A recorded setting (keyed by CLI option) in the caller's terms: `--tile-size 256` or `tile_size=256`."""
    if errors.cli_terms:
        return key if bare else f"{key} {show(value)}"
    name = _PYTHON_NAMES.get(key, key.lstrip("-").replace("-", "_"))
    return option(name) if bare else option(name, value)


def _changed(path: Path, key: str, old: Any, new: Any) -> str:
    """Why the interrupted run in `path` cannot be resumed with `key` changed, and the fix."""
    if key == "--revision":  # the backend's weights (`Sam3Segmenter.revision`): no option names them
        return (f"{path} holds an interrupted run made with other weights in the model folder ({old}, now "
                f"{new}): put the same weights back to resume, or pass {option('restart', True)} to discard it")
    return (f"{path} holds an interrupted run made with {_setting(key, old)}, this run has {_setting(key, new)}: "
            f"rerun with the same {_setting(key, bare=True)} to resume, or pass {option('restart', True)} to "
            f"discard it")


def check_resumable(path: str | os.PathLike[str], settings: dict[str, Any]) -> None:
    """Refuse now, before any model loads, to resume the run in work folder `path`
    (if there is one) with other `settings` (part of what `WorkDir` checks)."""
    check_free(path)
    old = read_settings(path)
    if old is None:
        return
    settings = json.loads(json.dumps(settings, default=str))
    for key in sorted(settings):
        if old.get(key) != settings[key]:
            raise UsageError(_changed(Path(path), key, old.get(key), settings[key]))


class WorkDir:
    """A run's work folder; `settings` maps CLI option names to values.

    An existing folder is resumed when its settings are the same; `restart`
    discards it first, never while another run uses it. The run holds its
    lock until `close` or `remove`.
    """

    def __init__(self, path: str | os.PathLike[str], settings: dict[str, Any], *, restart: bool = False) -> None:
        self.path = Path(path)
        self.settings = json.loads(json.dumps(settings, default=str))
        run_file = self.path / RUN_FILE
        if self.path.exists() and not self.path.is_dir():
            raise UsageError(f"work folder {self.path} is a file: remove it or pass another {option('work_dir')}")
        if self.path.is_dir():
            check_free(self.path)
        try:
            ours = read_settings(self.path) is not None
            if ours and not restart:  # refused now, before any work, not midway
                _check(self.path)
        except UsageError:  # damaged, and only geoseg's files: restart may discard it
            if not restart:
                raise
            ours = True
        if not ours and self.path.is_dir() and any(self.path.iterdir()):
            raise UsageError(f"{self.path} is not a geoseg work folder: pass another {option('work_dir')}")
        self._lock = files.Lock(self.path / LOCK_FILE)
        try:
            if ours:
                self._take()
            if restart and ours:
                self._lock.release()
                shutil.rmtree(self.path)
            self.resumed = run_file.exists()
            if self.resumed:
                old = read_settings(self.path) or {}
                for key in sorted(set(old) | set(self.settings)):
                    if old.get(key) != self.settings.get(key):
                        raise UsageError(_changed(self.path, key, old.get(key), self.settings.get(key)))
            else:
                try:
                    self.path.mkdir(exist_ok=True)
                except FileNotFoundError:
                    raise UsageError(f"work folder {self.path}: {self.path.parent} does not exist: "
                                     f"create it") from None
                self._take()
                _atomic_json(run_file, {"settings": self.settings})
        except BaseException:  # not left held by a refused run (a notebook keeps the traceback)
            self._lock.release()
            raise

    def _take(self) -> None:
        """Hold the folder's lock, or refuse: another run is using it."""
        if self._lock.held:
            return
        holder = self._lock.acquire()
        if holder is not None:
            raise _busy(self.path, holder)
        if self._lock.stale:
            log.info("work folder %s: taking over from the geoseg run %s, which is no longer running", self.path,
                     files.holder_text(self._lock.stale))

    def close(self) -> None:
        """Let other runs use the folder."""
        self._lock.release()

    def name(self, source: Any) -> str:
        """A file name for an input: readable, unique per path."""
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(source_name(source)).stem)[:60]
        digest = hashlib.sha1(_key(source).encode()).hexdigest()[:10]
        return f"{stem}-{digest}"

    def store(self, source: Any, n_tiles: int, grid: tuple[int, int]) -> TileStore:
        """The staging store of `source`, checked against the input it was made from."""
        store = TileStore(self.path / f"{self.name(source)}.sqlite")
        ident = identity(source)
        plan = {"tiles": n_tiles, "grid": list(grid)}
        old = store.load("input")
        if old is None:
            store.save("input", ident)
            store.save("plan", plan)
        elif old != ident or store.load("plan") != plan:
            store.close()
            raise RasterError(
                f"{source_name(source)} changed since the interrupted run in {self.path} (size or time differs): "
                f"pass {option('restart', True)} to start over"
            )
        return store

    def result_path(self, source: Any) -> Path:
        """Where the merged objects of `source` are kept until the output is written."""
        return self.path / f"{self.name(source)}.objects.gpkg"

    def mark_written(self, output: Any) -> None:
        """Record an output this run wrote (so a rerun may replace it)."""
        _atomic_json(self.path / WRITTEN_FILE, sorted({*written(self.path), str(output)}))

    def fail(self, source: Any, message: str | None) -> None:
        """Record (or clear, with None) the error that stopped `source`."""
        failures = _read_json(self.path / FAILED_FILE, {})
        key = errors.redact(_key(source) if is_mosaic(source) else str(source))
        if failures.get(key) == message:
            return
        if message is None:
            del failures[key]
        else:
            failures[key] = errors.redact(message)
        _atomic_json(self.path / FAILED_FILE, failures)

    @staticmethod
    def status_of(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
        """Per input of the work folder at `path`: tiles done of total, detections,
        merged or not, and the error of a failed one."""
        path = Path(path)
        _check(path)  # damaged: said so, as a resume would
        failures = _read_json(path / FAILED_FILE, {})
        out = []
        for db in sorted(path.glob("*.sqlite")):
            with TileStore(db) as store:
                ident, plan = store.load("input") or {}, store.load("plan") or {}
                out.append({
                    "source": ident.get("path", db.stem), "tiles": plan.get("tiles"), "done": len(store.done()),
                    "detections": store.n_pieces(), "merged": db.with_suffix(".objects.gpkg").exists(),
                    "error": failures.pop(ident.get("path", ""), None),
                })
        out += [{"source": src, "tiles": None, "done": 0, "detections": 0, "merged": False, "error": err}
                for src, err in failures.items()]
        return out

    def remove(self) -> None:
        self.close()
        shutil.rmtree(self.path, ignore_errors=True)


def written(path: str | os.PathLike[str]) -> list[str]:
    """The outputs the run in work folder `path` has written (its own to replace)."""
    return _read_json(Path(path) / WRITTEN_FILE, [])  # type: ignore[no-any-return]


def read_settings(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The settings of the work folder at `path`, or None if it is not one. A
    damaged one (its run.json unreadable or gone, every file in it geoseg's) is refused."""
    path = Path(path)
    try:
        run = _read_json(path / RUN_FILE, None)
    except UsageError:
        if _only_ours(path):
            raise
        return None  # someone else's run.json
    if run is None and path.is_dir() and any(path.iterdir()) and _only_ours(path):
        raise _damaged(path / RUN_FILE, "is missing")
    return None if run is None else run["settings"]  # type: ignore[no-any-return]


def default_work_dir(output: Any = None, output_dir: Any = None, shard: tuple[int, int] | None = None,
                     layer: str | None = None) -> Path:
    """Where a run stages its work: OUTPUT.geoseg-work, or OUTPUT_DIR/.geoseg-work
    (OUTPUT_DIR/.geoseg-work-K-of-N for shard K of N: shards running at once never share one).
    A bucket output's is local, in the folder the command runs in: ./.geoseg-work-HASH (-K-of-N).
    A GeoPackage `layer` other than the default has its own (OUTPUT.LAYER.geoseg-work, ...):
    runs writing two layers of one file never share one."""
    suffix = "" if shard is None else f"-{shard[0]}-of-{shard[1]}"
    url = output if is_url(output) else output_dir if is_url(output_dir) else None
    own = "" if layer in (None, DEFAULT_LAYER) else "." + _layer_name(str(layer))
    if url is not None:
        digest = hashlib.sha1((url.rstrip("/") + own).encode()).hexdigest()[:10]
        return Path.cwd() / f".geoseg-work-{digest}{suffix}"
    if output_dir is not None:
        return Path(output_dir) / f".geoseg-work{own}{suffix}"
    return Path(f"{output}{own}.geoseg-work")


def _layer_name(layer: str) -> str:
    """`layer` as a part of a file name: itself where it is plain, else made so and told apart by a hash."""
    plain = re.sub(r"[^A-Za-z0-9_-]+", "_", layer)[:40]
    return plain if plain == layer else f"{plain}-{hashlib.sha1(layer.encode()).hexdigest()[:6]}"
