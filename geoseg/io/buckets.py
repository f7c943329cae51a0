"""Object storage: bucket URLs, prefixes listed as folders, objects fetched.

Inputs `s3://bucket/prefix/` (`gs://`, `az://`) are listed with obstore and
given to GDAL as `/vsis3/...` paths (`/vsigs/`, `/vsiaz/`), read window by
window as any remote raster; an `https://` folder is listed from its index
page. Outputs in a bucket are `geoseg.io.upload`'s.

Credentials and endpoint come only from the environment (`AWS_*`, GDAL's
`AWS_S3_ENDPOINT`, `AWS_HTTPS`, `AWS_VIRTUAL_HOSTING`, `AWS_NO_SIGN_REQUEST`)
or, where boto3 is installed, the usual AWS config files; they are never
written anywhere. See docs/cloud.md.
"""

from __future__ import annotations

import functools
import html.parser
import logging
import os
import re
import urllib.parse
import urllib.request
from datetime import timedelta
from pathlib import Path, PurePosixPath
from typing import Any

from geoseg.errors import OutputError, RasterError, RunError, UsageError
from geoseg.io import files

log = logging.getLogger("geoseg")

GDAL_PREFIX = {"s3": "/vsis3/", "gs": "/vsigs/", "az": "/vsiaz/"}


def is_url(path: Any) -> bool:
    """Whether `path` names object storage: s3://, gs:// or az://."""
    return isinstance(path, str) and path.split("://", 1)[0] in GDAL_PREFIX and "://" in path


def gdal_path(url: str) -> str:
    """s3://bucket/key -> /vsis3/bucket/key (gs: /vsigs/, az: /vsiaz/)."""
    scheme, rest = url.split("://", 1)
    return GDAL_PREFIX[scheme] + rest


def split_url(url: str) -> tuple[str, str, str]:
    """(scheme, bucket, key) of s3://bucket/key."""
    scheme, rest = url.split("://", 1)
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise UsageError(f"{url}: no bucket: give {scheme}://BUCKET/PATH")
    return scheme, bucket, key


def first_line(error: BaseException) -> str:
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


def bucket_store(scheme: str, bucket: str) -> Any:
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
    return OutputError(f"{url}: cannot reach the bucket ({first_line(error)}): check the bucket name, the "
                       f"endpoint (AWS_S3_ENDPOINT or AWS_ENDPOINT_URL) and the credentials in the environment")


def list_objects(scheme: str, bucket: str, prefix: str, url: str) -> dict[str, dict[str, Any]]:
    """Every object under `prefix`, by key."""
    import obstore

    store = bucket_store(scheme, bucket)
    try:
        return {o["path"]: o for batch in obstore.list(store, prefix or None) for o in batch}
    except FileNotFoundError:
        return {}
    except Exception as e:  # no such bucket, refused, no connection
        raise _unreachable(url, e) from None


def head_object(scheme: str, bucket: str, key: str, url: str) -> dict[str, dict[str, Any]]:
    """{key: its metadata} where the object exists, else {}, once the bucket is reached."""
    import obstore

    store = bucket_store(scheme, bucket)
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
    scheme, bucket, key = split_url(url)
    prefix = key if not key or key.endswith("/") else key + "/"
    try:
        objects = list_objects(scheme, bucket, prefix, url)
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
            raise RasterError(f"{folder}: cannot list the folder ({first_line(e)}): give the rasters' URLs "
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


def fetch(store: Any, key: str, path: Path) -> None:
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
        raise RunError(f"{key}: download failed ({first_line(e)}): rerun") from None
    files.replace(tmp, path)


def download_prefix(url: str, folder: Path, *, skip: str, suffixes: tuple[str, ...],
                    hidden: re.Pattern[str] | None = None) -> None:
    """Download the outputs (and their provenance sidecars) under a prefix,
    keeping their relative paths; hidden ones (but those whose name matches
    `hidden`: a shard's manifest) and `skip` left out."""
    from concurrent.futures import ThreadPoolExecutor

    scheme, bucket, key = split_url(url)
    prefix = key.rstrip("/") + "/" if key.strip("/") else ""
    store = bucket_store(scheme, bucket)
    keys = list_objects(scheme, bucket, prefix, url)
    wanted = [k for k in keys if not _hidden(k[len(prefix):]) and f"{scheme}://{bucket}/{k}" != skip
              and k.lower().endswith((*suffixes, ".geoseg.json"))]
    wanted += [k for k in keys if hidden is not None and hidden.fullmatch(k[len(prefix):])]
    folder.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=16) as pool:  # obstore releases the GIL: downloads overlap
        list(pool.map(lambda k: fetch(store, k, folder / k[len(prefix):]), wanted))


def store_of(url: str) -> Any:
    scheme, bucket, _ = split_url(url)
    return bucket_store(scheme, bucket)
