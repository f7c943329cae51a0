"""Run `python -m geoseg.qgis_worker` in geoseg's own Python and follow its JSON lines.

Standard library only: this module runs inside QGIS's Python, which need not
have geoseg's dependencies (and whose GDAL and GEOS would shadow them).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

SETTING = "GEOSEG_PYTHON"
SETTING_PLACE = "Settings › Options › Processing › Providers › geoseg › geoseg Python"
# `geoseg qgis install` writes the Python it ran from into this file of the installed plugin.
RECORD = "geoseg_python.txt"
# geoseg is not on PyPI: it installs from a clone of its repository
INSTALL_HINT = ('in a clone of geoseg: python3 -m venv ~/geoseg-env && '
                '~/geoseg-env/bin/python -m pip install ".[sam3]" && ~/geoseg-env/bin/geoseg qgis install')
# Variables QGIS sets for its own Python, GDAL and PROJ: they would break the wheels' in geoseg's environment.
FOREIGN_ENV = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "GDAL_DATA", "GDAL_DRIVER_PATH", "PROJ_LIB", "PROJ_DATA")


class WorkerError(Exception):
    """The worker could not do the job; `kind` is environment, usage, model or run."""

    def __init__(self, kind: str, text: str) -> None:
        super().__init__(text)
        self.kind = kind


class Cancelled(Exception):
    """The user cancelled: the worker was stopped and wrote nothing."""


def recorded_python(folder: Path | None = None) -> str:
    """The Python `geoseg qgis install` recorded in the plugin folder ("" when none)."""
    try:
        return (Path(folder or Path(__file__).parent) / RECORD).read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def find_python(configured: str = "", folder: Path | None = None) -> tuple[str, str] | None:
    """geoseg's Python and where it came from, first found of: the provider setting, $GEOSEG_PYTHON,
    the Python recorded by `geoseg qgis install`, the one behind the `geoseg` command on PATH.

    Explicit choices come before the recorded one, so a setting or variable still overrides an install.
    """
    choices = ((configured, "the provider setting"), (os.environ.get(SETTING, ""), f"${SETTING}"),
               (recorded_python(folder), "recorded by `geoseg qgis install`"))
    for choice, origin in choices:
        if choice and choice.strip():
            return choice.strip(), origin
    exe = shutil.which("geoseg")
    if exe is None:
        return None
    folder = Path(exe).resolve().parent
    for name in ("python.exe", "python3", "python"):
        if (folder / name).is_file():
            return str(folder / name), "the `geoseg` command on PATH"
    try:  # a pip console script names its interpreter on the first line
        first = Path(exe).resolve().read_bytes().split(b"\n", 1)[0].decode("utf-8", "replace")
    except OSError:
        return None
    if first.startswith("#!") and os.path.isfile(first[2:].strip()):
        return first[2:].strip(), "the `geoseg` command on PATH"
    return None


def not_found_message() -> str:
    return (
        "geoseg's Python environment was not found: run `geoseg qgis install` from geoseg's environment (it "
        f"records its Python for the plugin), or set the Python that has geoseg in {SETTING_PLACE} or in the "
        f"environment variable {SETTING}. To create one: {INSTALL_HINT}"
    )


def no_geoseg_message(python: str) -> str:
    return (f'{python} has no geoseg installed: install it there, in a clone of geoseg: {python} -m pip install '
            f'".[sam3]"; or point the provider to the Python that has it: {SETTING_PLACE}, or ${SETTING}')


def check_python(python: str, origin: str) -> str | None:
    """Why `python` cannot run the worker (one line with the fix), or None when it can; takes a fraction
    of a second: it looks geoseg up without importing it."""
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('geoseg') is None)"
    try:
        proc = subprocess.run([python, "-c", probe], capture_output=True, env=_clean_env(), timeout=60,
                              creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
    except (OSError, subprocess.SubprocessError) as e:
        reason = getattr(e, "strerror", None) or e
        return f"cannot start geoseg's Python {python!r} ({origin}: {reason}). " + not_found_message()
    if proc.returncode == 1:
        return no_geoseg_message(python)
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        return (f"geoseg's Python {python!r} ({origin}) fails to start ({err[-1] if err else proc.returncode}). "
                + not_found_message())
    return None


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def _pump(stream: Any, name: str, lines: queue.Queue[tuple[str, str | None]]) -> None:
    try:
        for line in stream:
            lines.put((name, line.rstrip("\r\n")))
    except (OSError, ValueError):  # the pipe was closed under us: the worker was stopped
        pass
    lines.put((name, None))


def _stop(proc: subprocess.Popen[str]) -> None:
    """Stop the worker and anything it started, at once."""
    if proc.poll() is not None:
        return
    try:
        if os.name == "posix":
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
    except OSError:
        pass
    proc.wait()


def run_worker(python: str, job: dict[str, Any], on_event: Callable[[dict[str, Any]], None],
               is_canceled: Callable[[], bool], poll: float = 0.1) -> dict[str, Any]:
    """Run one job; call `on_event` with each line; return the "done" line.

    Raises:
        Cancelled: `is_canceled()` turned true; the worker is gone when this is raised.
        WorkerError: the environment is unusable or the job failed (the message says the fix).
    """
    cmd = [python, "-m", "geoseg.qgis_worker"]
    try:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
            errors="replace", env=_clean_env(), start_new_session=os.name == "posix",
            creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0),
        )
    except OSError as e:
        raise WorkerError("environment", f"cannot start geoseg's Python {python!r} ({e.strerror or e}). "
                                         + not_found_message()) from None
    pumps: list[threading.Thread] = []
    try:
        on_event({"type": "command", "text": " ".join(cmd), "pid": proc.pid})
        lines: queue.Queue[tuple[str, str | None]] = queue.Queue()
        for stream, name in ((proc.stdout, "stdout"), (proc.stderr, "stderr")):
            pumps.append(threading.Thread(target=_pump, args=(stream, name, lines), daemon=True))
            pumps[-1].start()
        try:
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(job))
            proc.stdin.close()
        except OSError:  # the worker died at once: its stderr says why
            pass
        done: dict[str, Any] | None = None
        error: dict[str, Any] | None = None
        stderr_tail: deque[str] = deque(maxlen=40)
        open_streams = 2
        while open_streams:
            if is_canceled():  # `finally` stops the worker before this reaches the caller
                raise Cancelled("cancelled: the geoseg worker was stopped and nothing was written")
            try:
                name, line = lines.get(timeout=poll)
            except queue.Empty:
                continue
            if line is None:
                open_streams -= 1
                continue
            if name == "stderr":
                stderr_tail.append(line)
                on_event({"type": "stderr", "text": line})
                continue
            try:
                event = json.loads(line)
            except ValueError:
                event = {"type": "info", "text": line}
            if event.get("type") == "done":
                done = event
            elif event.get("type") == "error":
                error = event
            on_event(event)
    finally:
        _stop(proc)  # nothing to do when it has finished
        for pump in pumps:
            pump.join(timeout=2)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    code = proc.wait()
    if error is not None:
        raise WorkerError(str(error.get("kind", "run")), str(error.get("text", "")))
    if done is not None and code == 0:
        return done
    raise WorkerError("environment" if done is None else "run", _explain(python, code, list(stderr_tail)))


def _explain(python: str, code: int, stderr: list[str]) -> str:
    text = "\n".join(stderr)
    if "No module named geoseg" in text or "No module named 'geoseg'" in text:
        return no_geoseg_message(python)
    tail = "\n".join(stderr[-10:]) or "(nothing on stderr)"
    return f"the geoseg worker ({python} -m geoseg.qgis_worker) stopped with exit code {code}:\n{tail}"

