"""Helpers for driving the web app in Debian's headless Chromium with Playwright.

No browser download: Playwright's Python package only drives the system
``/usr/bin/chromium`` (``apt-get install chromium``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = os.environ.get("IK_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1400, "height": 900}


def missing_browser_reason() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright (pip install playwright) is not installed"
    try:
        import trame_slicer.views  # noqa: F401
    except ImportError as error:
        return f"trame-slicer with its standalone libraries is not installed ({error})"
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    return None


def session_closed(server_log: Path, session_id: str) -> bool:
    """Whether the launcher has logged that the session host let go of ``session_id``."""
    return f"session {session_id} closed" in Path(server_log).read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(
    args: list[str], log_path: Path, ready_url: str, timeout: float = 180.0, env=None, ready_statuses=(200,)
):
    """Start ``python -m interactive_keypoints.web <args>``; wait until ``ready_url`` answers with one of
    ``ready_statuses``."""
    import urllib.error
    import urllib.request

    log_file = open(log_path, "w")
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    process = subprocess.Popen(
        [sys.executable, "-m", "interactive_keypoints.web", *args],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env=environment,
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}; see {log_path}")
            try:
                with urllib.request.urlopen(ready_url, timeout=5) as response:
                    if response.status in ready_statuses:
                        break
            except urllib.error.HTTPError as error:
                if error.code in ready_statuses:
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server did not answer {ready_url}; see {log_path}") from None
                time.sleep(0.5)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log_file.close()


@contextmanager
def chromium_context():
    """A fresh Chromium profile per use: no state leaks between tests."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright, tempfile.TemporaryDirectory(prefix="ik-chromium-") as profile:
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport=VIEWPORT,
            accept_downloads=True,
        )
        try:
            yield context
        finally:
            context.close()


@contextmanager
def chromium_browser():
    """One Chromium; each ``browser.new_context(**CONTEXT_OPTIONS)`` is a browser of its own
    (its own cookies), as two people's browsers are."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


CONTEXT_OPTIONS = {"viewport": VIEWPORT, "accept_downloads": True}


def read_debug(page) -> dict:
    return json.loads(page.locator("#ik-debug").text_content() or "{}")


def view_to_page(page, view_xy, view_size) -> tuple[float, float]:
    """View pixels (origin bottom-left) -> page pixels, through the streamed image's box."""
    box = page.locator("#ik-view img, img").first.bounding_box()
    width, height = view_size
    x = box["x"] + view_xy[0] * box["width"] / width
    y = box["y"] + (height - view_xy[1]) * box["height"] / height
    return x, y


def page_to_view(page, page_xy, view_size) -> tuple[float, float]:
    box = page.locator("#ik-view img, img").first.bounding_box()
    width, height = view_size
    return ((page_xy[0] - box["x"]) * width / box["width"], height - (page_xy[1] - box["y"]) * height / box["height"])


def drag(page, start, end, steps: int = 20, pause: float = 0.03):
    """A user drag: hover, press, move in steps, release (what the view widget needs)."""
    page.mouse.move(start[0] - 2, start[1] - 2)
    page.wait_for_timeout(150)
    page.mouse.move(*start)  # hovering highlights the point so the press grabs it
    page.wait_for_timeout(250)
    page.mouse.down()
    page.wait_for_timeout(100)
    for i in range(1, steps + 1):
        f = i / steps
        page.mouse.move(start[0] + (end[0] - start[0]) * f, start[1] + (end[1] - start[1]) * f)
        page.wait_for_timeout(int(pause * 1000))
    page.wait_for_timeout(200)
    page.mouse.up()


def wait_until_rendered(page):
    """The streamed view shows a real frame (not the loading spinner) and positions are known."""
    page.wait_for_selector("#ik-detect", timeout=120_000)
    page.wait_for_function(
        "() => Array.from(document.querySelectorAll('img')).some(i => i.complete && i.naturalWidth > 100)",
        timeout=120_000,
    )
    wait_for_debug(page, lambda d: d.get("view_size", [0, 0])[0] > 0)


def detect(page) -> dict:
    """Press Detect and wait for the points."""
    page.click("#ik-detect")
    return wait_for_debug(page, lambda d: len(d.get("points", [])) > 0 and not d["busy"])


def wait_for_debug(page, predicate, timeout_ms: int = 120_000, poll_ms: int = 250) -> dict:
    """Poll the debug JSON until ``predicate(debug)`` holds (a condition, not a timing)."""
    waited = 0
    while True:
        debug = read_debug(page)
        if predicate(debug):
            return debug
        if waited >= timeout_ms:
            raise AssertionError(f"condition not met within {timeout_ms} ms; last debug: {debug}")
        page.wait_for_timeout(poll_ms)
        waited += poll_ms
