"""A real JupyterLab in headless Chromium, for the explorer's browser tests and benchmark.

`lab(folder)` starts a JupyterLab server on a free port (this Python's kernel);
`chromium()` launches Debian's Chromium through Playwright with software WebGL 2;
`Notebook` opens a notebook there and runs its cells as a person does
(click, Shift+Enter). Needs the `test` extra (jupyterlab, playwright) and
/usr/bin/chromium (tests/run-all.sh installs it).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def lab(folder: str | os.PathLike[str], log: str | os.PathLike[str] | None = None) -> Iterator[str]:
    """A JupyterLab server over `folder`; yields its base URL with the token (…/?token=…)."""
    port, token = _free_port(), secrets.token_hex(8)
    out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    env = dict(os.environ, JUPYTER_PLATFORM_DIRS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={folder}", "--allow-root",
         "--LabApp.news_url=", "--ServerApp.open_browser=False"],
        stdout=out, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"JupyterLab exited with {proc.returncode} (see {log})") from None
                time.sleep(0.2)
        yield f"{base}/?token={token}"
    finally:
        proc.terminate()  # the server shuts its kernels down
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        if log:
            out.close()  # type: ignore[union-attr]


@contextlib.contextmanager
def chromium(width: int = 1300, height: int = 950) -> Iterator[Any]:
    """A page of headless Chromium (software WebGL 2); its console and errors are in `page.logs`."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.logs = []  # type: ignore[attr-defined]
            page.on("console", lambda m: page.logs.append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: page.logs.append(f"pageerror: {e}"))
            yield page
        finally:
            browser.close()


class Notebook:
    """A notebook open in JupyterLab in `page`."""

    def __init__(self, page: Any, url: str, name: str) -> None:
        self.page = page
        base, token = url.split("/?token=")
        page.goto(f"{base}/lab/tree/{name}?token={token}")
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
        page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000)

    def cell(self, k: int) -> Any:
        return self.page.locator(".jp-Notebook .jp-Cell").nth(k)

    def run(self, k: int, timeout: float = 120.0) -> str:
        """Run cell `k` (click into it, Shift+Enter) and wait until it is done; its text output."""
        self.dismiss_dialogs()
        cell, prompt = self.cell(k), self.cell(k).locator(".jp-InputPrompt")
        before = prompt.inner_text()
        for _ in range(20):  # the first keystrokes can come before the kernel is connected
            cell.locator(".jp-InputArea-editor").click()
            self.page.keyboard.press("Shift+Enter")
            try:
                self.page.wait_for_function(
                    "([el, before]) => el.textContent !== before && /\\[(\\*|\\d+)\\]/.test(el.textContent)",
                    arg=[prompt.element_handle(), before], timeout=3000)
                break
            except Exception:  # noqa: BLE001 - Playwright's timeout: press again
                continue
        self.page.wait_for_function("el => /\\[\\d+\\]/.test(el.textContent)", arg=prompt.element_handle(),
                                    timeout=timeout * 1000)
        return str(cell.locator(".jp-OutputArea").inner_text())

    def dismiss_dialogs(self) -> None:
        """Accept a dialog JupyterLab opened by itself (a kernel choice on a slow start), noting its text."""
        dialogs = self.page.locator(".jp-Dialog")
        while dialogs.count():
            self.page.logs.append(f"dialog: {dialogs.first.inner_text()!r}")
            dialogs.first.locator("button.jp-mod-accept").click()
            self.page.wait_for_timeout(500)

    def restart_kernel(self) -> None:
        """Kernel → Restart Kernel…, confirmed, as a person does."""
        self.page.click("text=Kernel")
        self.page.click("li[data-command='kernelmenu:restart']")
        self.page.click(".jp-Dialog button.jp-mod-accept")
        self.page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000)


def screenshot(page: Any, folder: str | os.PathLike[str], name: str, selector: str | None = None) -> Path:
    """Save a PNG of the page (or of `selector`) in `folder`."""
    path = Path(folder) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    (page.locator(selector) if selector else page).screenshot(path=str(path))
    return path
