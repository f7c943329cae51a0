"""A local HTTP server with byte ranges, to test remote (/vsicurl/) reading.

Serves one folder on 127.0.0.1, answers `Range: bytes=a-b` with 206 Partial
Content as object stores do, and records every request, so a test can check
that a raster was read in ranges and not downloaded whole::

    with RangeServer(folder) as server:
        geoseg.segment(server.url("scene.tif"), ...)
        assert server.bytes_sent < os.path.getsize(folder / "scene.tif")

The threaded server runs in a child Python process: some GDAL calls make
their HTTP requests while holding the GIL (opening a file probes sidecars such
as `.aux.xml`), so a server thread in the test's own process could not answer
them and the read would hang until curl times out. Standard library only, and
this file imports nothing from geoseg, so the child starts fast.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")
_UNSATISFIABLE = (-1, -1)


@dataclass(frozen=True)
class Request:
    """One request the server answered."""

    method: str
    path: str
    range: tuple[int, int] | None  # the inclusive byte range served; None for a whole body or none
    status: int
    bytes_sent: int  # body bytes
    active: int = 1  # requests being answered when this one came, itself included
    headers: tuple[tuple[str, str], ...] = ()  # the User-Agent and Authorization headers it came with


class RangeServer:
    """Serve `folder` over HTTP on 127.0.0.1, on a free port, until the `with` ends.

    `requests` lists every request answered (oldest first), `bytes_sent` is
    the total of body bytes, `clear()` forgets what came before.
    """

    def __init__(self, folder: str | os.PathLike[str], *, wms: str | os.PathLike[str] | None = None) -> None:
        self.folder = Path(folder).resolve()
        self.wms = None if wms is None else str(Path(wms).resolve())  #: a raster `/wms` renders GetMap requests of
        if not self.folder.is_dir():
            raise NotADirectoryError(f"{self.folder}: not a folder to serve")
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._skip = 0
        self._records: list[Request] = []  # what `requests` gives after the `with`

    def url(self, name: str = "") -> str:
        """The http:// URL of `name`, a path relative to the folder."""
        if not self.port:
            raise RuntimeError("the server is not running: use it inside `with RangeServer(folder) as server:`")
        return f"http://127.0.0.1:{self.port}/{urllib.parse.quote(name)}"

    @property
    def requests(self) -> list[Request]:
        """Every request answered since the start (or the last `clear()`), oldest first."""
        # the child records a request before it answers, so a request whose
        # answer the client has is always listed (one whose client hung up early, too)
        if self._tmp is None:
            return self._records[self._skip:]
        text = (Path(self._tmp.name) / "requests.jsonl").read_bytes()
        out = []
        for line in text.split(b"\n")[:-1][self._skip:]:  # [:-1]: a line being written is not complete yet
            r = json.loads(line)
            span = (int(r["range"][0]), int(r["range"][1])) if r["range"] else None
            out.append(Request(r["method"], r["path"], span, int(r["status"]), int(r["bytes_sent"]),
                               int(r.get("active", 1)), tuple(tuple(h) for h in r.get("headers", ()))))
        return out

    @property
    def bytes_sent(self) -> int:
        """Body bytes sent since the start (or the last `clear()`)."""
        return sum(r.bytes_sent for r in self.requests)

    def clear(self) -> None:
        """Forget the requests recorded so far."""
        self._skip += len(self.requests)

    def faults(self, *rules: dict[str, Any]) -> None:
        """Answer requests whose path matches a rule's `path` (a regular expression) with its
        `statuses` in turn, per path, the last one repeated (200: the file); `delay`: seconds
        to wait first; `retry_after`: the header sent with a 429 or 503. No rule: serve as usual."""
        if self._tmp is None:
            raise RuntimeError("the server is not running")
        tmp = Path(self._tmp.name) / "faults.json.tmp"
        tmp.write_text(json.dumps(list(rules)))
        os.replace(tmp, Path(self._tmp.name) / "faults.json")

    def __enter__(self) -> RangeServer:
        self._tmp = tempfile.TemporaryDirectory(prefix="geoseg-range-server-")
        log = Path(self._tmp.name) / "requests.jsonl"
        log.touch()
        errors = Path(self._tmp.name) / "stderr.txt"
        with open(errors, "wb") as err:
            # -I: isolated, so the script's folder (which holds this http.py) does not shadow the stdlib's http
            self._proc = subprocess.Popen(
                [sys.executable, "-I", __file__, str(self.folder), str(log), *([self.wms] if self.wms else [])],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
            )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()  # the child prints its port once it listens
        if not line.strip().isdigit():
            why = errors.read_text().strip()
            self.__exit__()
            raise RuntimeError(f"the test HTTP server did not start: {why}")
        self.port = int(line)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            assert self._proc.stdin is not None and self._proc.stdout is not None
            self._proc.stdin.close()  # end of input: the child shuts its server down and exits
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc.stdout.close()
            self._proc = None
        if self._tmp is not None:
            self._records, self._skip = self.requests, 0  # still readable after the `with`
            self._tmp.cleanup()
            self._tmp = None
        self.port = 0


def _handler(folder: Path, log: BinaryIO, lock: threading.Lock,
             wms: str | None = None) -> type[http.server.BaseHTTPRequestHandler]:
    state = {"active": 0, "seen": {}}  # requests in flight; per (rule, path) the requests answered so far
    faults = Path(log.name).with_name("faults.json")

    def record(method: str, path: str, span: tuple[int, int] | None, status: int, sent: int,
               active: int = 1, headers: Any = ()) -> None:
        line = json.dumps({"method": method, "path": path, "range": span, "status": status, "bytes_sent": sent,
                           "active": active, "headers": list(headers)})
        with lock:
            log.write(line.encode() + b"\n")
            log.flush()

    def fault(path: str) -> tuple[int, float, Any]:
        """(status, delay, retry_after) for `path` by the rules of `RangeServer.faults`; status 200: none."""
        try:
            rules = json.loads(faults.read_text())
        except (OSError, ValueError):
            return 200, 0.0, None
        for k, rule in enumerate(rules):
            if re.search(rule["path"], path):
                with lock:
                    n = state["seen"][k, path] = state["seen"].get((k, path), -1) + 1  # type: ignore[index]
                statuses = rule.get("statuses") or [200]
                return int(statuses[min(n, len(statuses) - 1)]), float(rule.get("delay", 0)), rule.get("retry_after")
        return 200, 0.0, None

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as curl (GDAL) expects

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        def _serve(self, body: bool) -> None:
            with lock:
                state["active"] += 1  # type: ignore[operator]
                self.active = state["active"]
            try:
                self._serve_file(body)
            finally:
                with lock:
                    state["active"] -= 1  # type: ignore[operator]

        def _serve_file(self, body: bool) -> None:
            path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
            status, delay, retry_after = fault(path)
            if delay:
                time.sleep(delay)
            if status != 200:
                self._answer(status, path, None, f"status {status}\n".encode(), body,
                             retry_after=retry_after)
                return
            if wms is not None and path == "/wms":
                self._answer(200, path, None, _get_map(wms, urllib.parse.urlsplit(self.path).query), body)
                return
            file = (folder / path.lstrip("/")).resolve()
            if folder not in file.parents or not file.is_file():
                self._answer(404, path, None, b"not found\n", body)
                return
            size = file.stat().st_size
            span = _parse_range(self.headers.get("Range", ""), size)
            if span is None:  # no Range, or one not served (several ranges): the whole file, as RFC 9110 allows
                self._answer(200, path, None, file.read_bytes() if body else b"", body, size)
            elif span == _UNSATISFIABLE:
                record(self.command, path, None, 416, 0, getattr(self, "active", 1))
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
            else:
                start, end = span
                data = b""
                if body:
                    with open(file, "rb") as f:
                        f.seek(start)
                        data = f.read(end - start + 1)
                self._answer(206, path, span, data, body, end - start + 1, f"bytes {start}-{end}/{size}")

        def _answer(self, status: int, path: str, span: tuple[int, int] | None, data: bytes, body: bool,
                    length: int | None = None, content_range: str | None = None, retry_after: Any = None) -> None:
            shown = [(k, v) for k, v in self.headers.items() if k.lower() in ("user-agent", "authorization")]
            record(self.command, path, span, status, len(data) if body else 0,
                   getattr(self, "active", 1), shown)  # before any byte goes out
            self.send_response(status)
            if retry_after is not None:
                self.send_header("Retry-After", str(retry_after))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data) if length is None else length))
            if content_range is not None:
                self.send_header("Content-Range", content_range)
            self.end_headers()
            if body:
                self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read `requests` instead
            pass

    return Handler


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hangs up early (curl after a 404) is not an error here


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """'bytes=a-b', 'bytes=a-' or 'bytes=-n' -> inclusive (start, end) clipped to
    the file; None for no range or one not served; `_UNSATISFIABLE` past the end."""
    m = _RANGE.match(header.strip())
    if m is None or m.group(1) == m.group(2) == "":
        return None
    if m.group(1) == "":  # suffix: the last n bytes
        n = int(m.group(2))
        return (max(0, size - n), size - 1) if n > 0 and size > 0 else _UNSATISFIABLE
    start = int(m.group(1))
    if m.group(2) and int(m.group(2)) < start:
        return None  # invalid: ignored
    end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
    return (start, end) if start <= end else _UNSATISFIABLE


def _get_map(raster: str, query: str) -> bytes:
    """A WMS GetMap answer (PNG, RGBA) cut from `raster` (its CRS) for BBOX, WIDTH and HEIGHT;
    outside the raster, transparent. rasterio and Pillow are imported here: only a WMS needs them."""
    import io

    import numpy as np
    import rasterio
    from PIL import Image
    from rasterio.enums import Resampling
    from rasterio.windows import from_bounds

    params = {k.upper(): v for k, v in urllib.parse.parse_qsl(query)}
    minx, miny, maxx, maxy = (float(v) for v in params["BBOX"].split(","))
    width, height = int(params["WIDTH"]), int(params["HEIGHT"])
    with rasterio.open(raster) as src:
        window = from_bounds(minx, miny, maxx, maxy, transform=src.transform)
        rgb = src.read([1, 2, 3], window=window, out_shape=(3, height, width), boundless=True, fill_value=0,
                       resampling=Resampling.nearest)
        inside = src.read_masks(1, window=window, out_shape=(height, width), boundless=True,
                                resampling=Resampling.nearest)
    image = np.dstack([*rgb, inside]).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(image, "RGBA").save(out, format="PNG")
    return out.getvalue()


def _main(folder: str, log_path: str, wms: str | None = None) -> None:
    """The child: serve until stdin ends (the parent exits the `with` or dies)."""
    with open(log_path, "ab") as log:
        httpd = _Server(("127.0.0.1", 0), _handler(Path(folder), log, threading.Lock(), wms))
        thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        print(httpd.server_address[1], flush=True)
        sys.stdin.buffer.read()
        httpd.shutdown()
        httpd.server_close()
        thread.join()


if __name__ == "__main__":
    _main(*sys.argv[1:4])
