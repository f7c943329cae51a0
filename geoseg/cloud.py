"""Object storage: bucket prefixes listed as folders, outputs uploaded whole.

Inputs `s3://bucket/prefix/` (`gs://`, `az://`) are listed with obstore and
given to GDAL as `/vsis3/...` paths (`/vsigs/`, `/vsiaz/`), read window by
window as any remote raster; an `https://` folder is listed from its index
page. An output `s3://bucket/out.gpkg` (or `--output-dir s3://bucket/out/`) is
written to a local file first and uploaded once complete, with a conditional
PUT, so a reader never sees a partial object and an object that appeared
meanwhile is never replaced. The work folder stays local.

Credentials and endpoint come only from the environment (`AWS_*`, GDAL's
`AWS_S3_ENDPOINT`, `AWS_HTTPS`, `AWS_VIRTUAL_HOSTING`, `AWS_NO_SIGN_REQUEST`)
or, where boto3 is installed, the usual AWS config files; they are never
written anywhere. See docs/cloud.md.
"""

from __future__ import annotations

import functools
import hashlib
import html.parser
import logging
import os
import shutil
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path, PurePosixPath
from typing import Any

from geoseg.errors import OutputError, RasterError, RunError, UsageError, option

log = logging.getLogger("geoseg")

GDAL_PREFIX = {"s3": "/vsis3/", "gs": "/vsigs/", "az": "/vsiaz/"}
UPLOADABLE = (".gpkg", ".geojson", ".json", ".fgb", ".parquet")


def is_url(path: Any) -> bool:
    """Whether `path` names object storage: s3://, gs:// or az://."""
    return isinstance(path, str) and path.split("://", 1)[0] in GDAL_PREFIX and "://" in path


def gdal_path(url: str) -> str:
    """s3://bucket/key -> /vsis3/bucket/key (gs: /vsigs/, az: /vsiaz/)."""
    scheme, rest = url.split("://", 1)
    return GDAL_PREFIX[scheme] + rest


def _split(url: str) -> tuple[str, str, str]:
    """(scheme, bucket, key) of s3://bucket/key."""
    scheme, rest = url.split("://", 1)
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise UsageError(f"{url}: no bucket: give {scheme}://BUCKET/PATH")
    return scheme, bucket, key


def _first_line(error: BaseException) -> str:
    return str(error).strip().split("\n")[0][:300]


def _endpoint() -> str | None:
    """The S3 endpoint: the AWS SDKs' variable, else GDAL's (host:port, with AWS_HTTPS)."""
    url = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if url:
        return url
    host = os.environ.get("AWS_S3_ENDPOINT")
    if not host:
        return None
    if "://" in host:
        return host
    return ("http://" if os.environ.get("AWS_HTTPS", "YES").upper() in ("NO", "FALSE", "OFF") else "https://") + host


def _store(scheme: str, bucket: str) -> Any:
    """An obstore store for one bucket, configured from the environment only;
    one per bucket and environment, so that uploads share its connections."""
    env = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(("AWS_", "GOOGLE_", "AZURE_"))))
    return _new_store(scheme, bucket, env)


@functools.lru_cache(maxsize=16)
def _new_store(scheme: str, bucket: str, env: tuple[tuple[str, str], ...]) -> Any:
    try:
        import obstore.store as stores
    except ImportError:
        raise UsageError(f"{scheme}:// inputs and outputs need obstore: "
                         "pip install obstore (the cloud extra)") from None
    retry = {"max_retries": 3, "retry_timeout": timedelta(seconds=60)}
    client = {"connect_timeout": timedelta(seconds=10)}
    if scheme == "gs":
        return stores.GCSStore(bucket, client_options=client, retry_config=retry)
    if scheme == "az":
        return stores.AzureStore(bucket, client_options=client, retry_config=retry)
    config: dict[str, Any] = {}
    endpoint = _endpoint()
    if endpoint:
        config["endpoint"] = endpoint
        client["allow_http"] = endpoint.startswith("http://")
    if os.environ.get("AWS_VIRTUAL_HOSTING", "").upper() in ("TRUE", "YES", "ON"):
        config["virtual_hosted_style_request"] = True
    if os.environ.get("AWS_NO_SIGN_REQUEST", "").upper() in ("YES", "TRUE", "ON"):
        config["skip_signature"] = True
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        config["region"] = region
    provider = None if "AWS_ACCESS_KEY_ID" in os.environ or config.get("skip_signature") else _config_files()
    return stores.S3Store(bucket, config=config, client_options=client, retry_config=retry,
                          credential_provider=provider)


def _config_files() -> Any:
    """Credentials from ~/.aws (profiles, SSO) through boto3, where installed and set up."""
    if not (os.environ.get("AWS_PROFILE") or Path("~/.aws").expanduser().is_dir()):
        return None  # obstore itself asks the instance, container or web identity
    try:
        import boto3
        from obstore.auth.boto3 import Boto3CredentialProvider
    except ImportError:
        return None
    session = boto3.Session()
    return Boto3CredentialProvider(session) if session.get_credentials() is not None else None


def _unreachable(url: str, error: BaseException) -> OutputError:
    return OutputError(f"{url}: cannot reach the bucket ({_first_line(error)}): check the bucket name, the "
                       f"endpoint (AWS_S3_ENDPOINT or AWS_ENDPOINT_URL) and the credentials in the environment")


def _list(scheme: str, bucket: str, prefix: str, url: str) -> dict[str, dict[str, Any]]:
    """Every object under `prefix`, by key."""
    import obstore

    store = _store(scheme, bucket)
    try:
        return {o["path"]: o for batch in obstore.list(store, prefix or None) for o in batch}
    except FileNotFoundError:
        return {}
    except Exception as e:  # no such bucket, refused, no connection
        raise _unreachable(url, e) from None


def _head(scheme: str, bucket: str, key: str, url: str) -> dict[str, dict[str, Any]]:
    """{key: its metadata} where the object exists, else {}, once the bucket is reached."""
    import obstore

    store = _store(scheme, bucket)
    try:
        return {key: obstore.head(store, key)}
    except FileNotFoundError:
        pass
    except Exception as e:
        raise _unreachable(url, e) from None
    try:  # a missing object, or a missing bucket: one page of a listing tells
        next(iter(obstore.list(store, str(PurePosixPath(key).parent).lstrip(".") or None, chunk_size=1)), None)
    except FileNotFoundError:
        pass
    except Exception as e:
        raise _unreachable(url, e) from None
    return {}


def _hidden(rel: str) -> bool:
    return any(part.startswith(".") for part in PurePosixPath(rel).parts)


def list_rasters(url: str, suffixes: tuple[str, ...], sidecars: tuple[str, ...]) -> list[str]:
    """The rasters under a bucket prefix, recursively, as sorted GDAL paths;
    hidden files and folders are left out, other files logged as skipped.

    Raises:
        RasterError: the prefix holds no raster, or the bucket cannot be listed.
    """
    scheme, bucket, key = _split(url)
    prefix = key if not key or key.endswith("/") else key + "/"
    try:
        objects = _list(scheme, bucket, prefix, url)
    except OutputError as e:
        raise RasterError(str(e)) from None
    return _pick(url, sorted(objects), prefix, f"{GDAL_PREFIX[scheme]}{bucket}/", suffixes, sidecars)


def _pick(url: str, keys: list[str], prefix: str, base: str, suffixes: tuple[str, ...],
          sidecars: tuple[str, ...]) -> list[str]:
    found, skipped = [], []
    for k in keys:
        rel = k[len(prefix):]
        if not rel or _hidden(rel):
            continue
        if k.lower().endswith(suffixes):
            found.append(base + k)
        elif not k.lower().endswith(sidecars) and not k.endswith("/"):
            skipped.append(rel)
    if skipped:
        log.info("%s: skipped %d object%s that %s not a raster (%s): %s", url, len(skipped), "s" * (len(skipped) > 1),
                 "are" if len(skipped) > 1 else "is", ", ".join(suffixes), ", ".join(skipped[:5]))
    if not found:
        raise RasterError(f"{url}: holds no raster ({', '.join(suffixes)}), also under its subfolders: "
                          f"check the prefix")
    return found


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.links += [v for k, v in attrs if k == "href" and v]


def list_http(url: str, suffixes: tuple[str, ...], sidecars: tuple[str, ...], depth: int = 8) -> list[str]:
    """The rasters of an https:// folder with an index page (a web server's
    folder listing), following its subfolders, as /vsicurl/ URLs."""
    found: list[str] = []
    folders = [url]
    seen = set(folders)
    while folders:
        folder = folders.pop()
        try:
            with urllib.request.urlopen(folder, timeout=30) as answer:
                page = answer.read().decode("utf-8", "replace")
        except Exception as e:
            raise RasterError(f"{folder}: cannot list the folder ({_first_line(e)}): give the rasters' URLs "
                              f"one by one, or a folder whose server lists it") from None
        parser = _Links()
        parser.feed(page)
        for link in parser.links:
            target = urllib.parse.urljoin(folder, link).split("#")[0].split("?")[0]
            if not target.startswith(url) or target in seen:
                continue  # parent folders, other sites, sort links
            seen.add(target)
            if target.endswith("/"):
                if target.count("/") - url.count("/") < depth:
                    folders.append(target)
            else:
                found.append(target)
    return ["/vsicurl/" + u for u in _pick(url, sorted(found), url, "", suffixes, sidecars)]


def expand(path: str, suffixes: tuple[str, ...], sidecars: tuple[str, ...]) -> list[str] | None:
    """The GDAL paths an input names: the rasters under a bucket prefix or an
    https:// folder (a URL ending in "/"), or one object; None for other inputs."""
    if is_url(path):
        if path.lower().endswith(suffixes):
            return [gdal_path(path)]
        return list_rasters(path, suffixes, sidecars)
    if path.startswith(("http://", "https://")) and urllib.parse.urlsplit(path).path.endswith("/"):
        return list_http(path, suffixes, sidecars)
    return None


def default_work_dir(url: str, shard: tuple[int, int] | None = None) -> Path:
    """The local work folder of a run writing to `url`: ./.geoseg-work-HASH
    (-K-of-N for a shard), in the folder the command runs in."""
    digest = hashlib.sha1(url.rstrip("/").encode()).hexdigest()[:10]
    return Path.cwd() / (f".geoseg-work-{digest}" + ("" if shard is None else f"-{shard[0]}-of-{shard[1]}"))


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

    @property
    def output(self) -> Path | None:
        return None if self.folder else self.local / PurePosixPath(_split(self.url)[2]).name

    @property
    def output_dir(self) -> Path | None:
        return self.local if self.folder else None

    def _key(self, rel: str) -> str:
        _, _, key = _split(self.url)
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

        scheme, bucket, _ = _split(self.url)
        store = _store(scheme, bucket)
        urls = {}
        for f in files:
            path = Path(f)
            url = self.url_of(path)
            key = _split(url)[2]
            side = path.with_name(path.name + ".geoseg.json")
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
                raise RunError(f"{url}: upload failed ({_first_line(e)}); the result is kept in {path}: "
                               f"rerun to upload it") from None
            log.info("%s: uploaded", url)
            urls[str(path)] = url
        return urls

    def upload_one(self, path: Path) -> str:
        """Upload one output as soon as it is written; its URL."""
        url = self.upload([str(path)])[str(path)]
        _remove_local(path)
        return url

    def finish(self) -> None:
        """Remove the local stand-ins once every output is uploaded."""
        shutil.rmtree(self.local, ignore_errors=True)


def target(output: Any, output_dir: Any, *, work_dir: Any, shard: tuple[int, int] | None, fmt: str,
           names: list[str] | None, overwrite: bool, suffixes: dict[str, str],
           layer: str = "detections") -> Target | None:
    """The bucket outputs of a run, checked before the model loads (None for
    local outputs): the bucket is listed; an existing -o object is refused
    without `overwrite` (a GeoPackage is fetched, to take the layer beside its
    others); with --output-dir, inputs whose output object exists count as done.
    `suffixes`: format -> extension (`geoseg.export.FORMATS`)."""
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
    work = Path(work_dir) if work_dir is not None else default_work_dir(url, shard)
    t = Target(url, folder, work.with_name(work.name + ".out"), work, overwrite)
    scheme, bucket, key = _split(url)
    if not folder and (not key or key.endswith("/")):
        raise OutputError(f"{url}: give an object name such as {scheme}://{bucket}/out.gpkg")
    if folder:
        t.existing = _list(scheme, bucket, key.rstrip("/") + "/" if key.strip("/") else "", url)
    else:
        t.existing = _head(scheme, bucket, key, url)
    if folder:
        from geoseg.inputs import output_names

        for name, rel in zip(names or [], output_names(names or [], suffix)):
            k = t._key(rel)
            if k in t.existing and not overwrite:
                t.done[name] = f"{scheme}://{bucket}/{k}"
            elif k in t.existing and suffix == ".gpkg":  # only --layer is replaced: the others are kept
                _fetch(store_of(url), k, t.local / rel)
            else:
                _remove_local(t.local / rel)
        return t
    local = t.output
    assert local is not None
    t.local.mkdir(parents=True, exist_ok=True)
    if key in t.existing:
        if suffix == ".gpkg":
            _fetch(store_of(url), key, local)
            _check_layer(t, local, layer, overwrite or f"{local}#{layer}" in _written(work))
        elif not overwrite and str(local) not in _written(work):  # not this run's own, interrupted
            raise OutputError(f"{url} exists: pass {option('overwrite', True)} to replace it, or choose another name")
        else:
            _remove_local(local)
    else:
        _remove_local(local)
    return t


def publish(target: Target, summary: Any, before: list[Any]) -> None:
    """Upload what a run (`geoseg.pipeline.Summary`) wrote locally and has not
    uploaded yet, name the objects in its results, and add the inputs done
    before (`before`)."""
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
        _remove_local(Path(f))
    if not summary.failed:
        target.finish()


def count(url: str, layer: str) -> int:
    """The objects in an output object (read through GDAL); 0 where it cannot be read."""
    import pyogrio

    try:
        gpkg = url.lower().endswith(".gpkg")
        return int(pyogrio.read_info(gdal_path(url), layer=layer if gpkg else None)["features"])
    except Exception as e:
        log.warning("%s: cannot count its objects (%s)", url, _first_line(e))
        return 0


def _check_layer(t: Target, local: Path, layer: str, overwrite: bool) -> None:
    """A layer the fetched GeoPackage has already is refused now, leaving nothing behind."""
    from geoseg.export import check_output

    try:
        check_output(local, overwrite, layer)
    except OutputError as e:
        t.finish()
        raise OutputError(str(e).replace(str(local), t.url)) from None


def _written(work: Path) -> list[str]:
    from geoseg.workdir import written  # here: workdir sits above this module

    return written(work)


def store_of(url: str) -> Any:
    scheme, bucket, _ = _split(url)
    return _store(scheme, bucket)


def _remove_local(path: Path) -> None:
    """A stand-in left by an earlier run: its bucket object is the truth."""
    path.unlink(missing_ok=True)
    path.with_name(path.name + ".geoseg.json").unlink(missing_ok=True)


def _fetch(store: Any, key: str, path: Path) -> None:
    """Download an object to `path` (atomically)."""
    import obstore

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.download")
    try:
        with open(tmp, "wb") as f:
            for chunk in obstore.get(store, key).stream():
                f.write(chunk)
    except Exception as e:
        tmp.unlink(missing_ok=True)
        raise RunError(f"{key}: download failed ({_first_line(e)}): rerun") from None
    os.replace(tmp, path)


def combine(folder: str, output: str, **options: Any) -> tuple[int, int]:
    """`geoseg.shards.combine` where the folder and/or the output is in a
    bucket: the outputs under the prefix are downloaded to a local temporary
    folder (in the current folder), combined there, and the result uploaded
    as `Target.upload` does. Returns the numbers of objects and of files."""
    import tempfile

    from geoseg import shards

    if not is_url(folder) and not is_url(output):
        return shards.combine(folder, output, **options)
    with tempfile.TemporaryDirectory(prefix=".geoseg-combine-", dir=Path.cwd()) as tmp:
        out: Any = output
        t = None
        if is_url(output):
            t = target(output, None, work_dir=Path(tmp) / "work", shard=None, fmt="gpkg", names=[],
                       overwrite=bool(options.get("overwrite")), suffixes={})
            out = t.output
        local = folder
        if is_url(folder):
            local = str(Path(tmp) / "outputs")
            _download_prefix(folder, Path(local), skip=output, suffixes=shards.SUFFIXES)
        result = shards.combine(local, out, **options)
        if t is not None:
            t.upload([str(out)])
    return result


def _download_prefix(url: str, folder: Path, *, skip: str, suffixes: tuple[str, ...]) -> None:
    """Download the outputs (and their provenance sidecars) under a prefix,
    keeping their relative paths; hidden ones and `skip` left out."""
    from concurrent.futures import ThreadPoolExecutor

    scheme, bucket, key = _split(url)
    prefix = key.rstrip("/") + "/" if key.strip("/") else ""
    store = _store(scheme, bucket)
    wanted = [k for k in _list(scheme, bucket, prefix, url)
              if not _hidden(k[len(prefix):]) and f"{scheme}://{bucket}/{k}" != skip
              and k.lower().endswith((*suffixes, ".geoseg.json"))]
    folder.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=16) as pool:  # obstore releases the GIL: downloads overlap
        list(pool.map(lambda k: _fetch(store, k, folder / k[len(prefix):]), wanted))
