"""Remake the browser app screenshots for the extension page.

    python Testing/web/screenshots.py --model models/phantom-spine-68 --out Resources/Screenshots

Serves the app on a free loopback port, opens the sample image (a generated spine phantom:
nothing from a dataset) in Debian's headless Chromium, presses Detect and draws the lines of
the largest Cobb angle (``browser-detect.png``), drags one landmark 25 view pixels and waits for
the refinement (``browser-refined.png``). Drives the page with the e2e test's helpers; the
point and line colours it waits for are the project's (conventions, mrml_logic).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
from browser import chromium_context, drag, free_port, running_server, view_to_page, wait_for_debug  # noqa: E402
from test_web_e2e import detect, wait_until_rendered  # noqa: E402

from interactive_keypoints.conventions import FIXED_COLOR, PREDICTED_COLOR  # noqa: E402
from interactive_keypoints.mrml_logic import MEASUREMENT_LINE_COLOR  # noqa: E402

DRAG_VIEW_PX = (-25, 0)  # visible in the screenshot: out to the left, off the vertebra
MAX_PNG_BYTES = 400_000


def rgb255(colour) -> tuple[int, int, int]:
    """(r, g, b) in 0..1 -> 0..255, as the view draws it."""
    return tuple(int(255 * float(c) + 0.5) for c in colour)


PREDICTED_RGB = rgb255(PREDICTED_COLOR)  # the one palette of Slicer, the browser and the files
USER_FIXED_RGB = rgb255(FIXED_COLOR)
LINE_RGB = rgb255(MEASUREMENT_LINE_COLOR)


def wait_for_colour(page, page_xy, rgb, tolerance: int = 40, radius: int = 4):
    """Poll until the streamed frame shows ``rgb`` at ``page_xy``: the debug JSON is updated
    before the next frame arrives, so a screenshot right after it may show the old frame."""
    import io

    import numpy as np
    from PIL import Image

    clip = {"x": page_xy[0] - radius, "y": page_xy[1] - radius, "width": 2 * radius + 1, "height": 2 * radius + 1}
    for _ in range(240):
        patch = np.asarray(Image.open(io.BytesIO(page.screenshot(clip=clip))).convert("RGB"), dtype=int)
        if (np.abs(patch - rgb).max(axis=2) <= tolerance).any():
            return
        page.wait_for_timeout(250)
    raise AssertionError(f"the view never showed colour {rgb} at {page_xy}")


def wait_for_still_frame(page, quiet_ms: int = 1000):
    """Wait until the view has had no new frame for ``quiet_ms``: trame-rca streams a quick
    low-quality JPEG first and re-sends the frame at still quality when nothing moves."""
    page.wait_for_function(
        """quiet => {
            const img = document.querySelector('#ik-view img') || document.querySelector('img');
            const now = performance.now();
            if (img.src !== window.ikLastSrc) { window.ikLastSrc = img.src; window.ikSince = now; }
            return now - window.ikSince >= quiet;
        }""",
        arg=quiet_ms,
        polling=100,
        timeout=60_000,
    )


def save_png(page, path: Path) -> None:
    """Screenshot as a lossless PNG, downscaled until it is under the size limit."""
    from PIL import Image

    page.screenshot(path=str(path))
    image = Image.open(path).convert("RGB")
    image.save(path, optimize=True)
    while path.stat().st_size > MAX_PNG_BYTES:
        image = image.resize((image.width * 9 // 10, image.height * 9 // 10), Image.LANCZOS)
        image.save(path, optimize=True)
    print(f"{path} {image.width}x{image.height} {path.stat().st_size // 1024} kB")


def show_cobb_lines(page) -> None:
    """Draw the lines of the first measurement (the major Cobb angle) and wait until the view shows them."""
    debug = wait_for_debug(page, lambda d: len(d.get("measurements", [])) > 0)
    name = debug["measurements"][0]["measurement"]
    page.locator("#ik-measurement-select").click(force=True)  # the field overlay takes the click
    page.get_by_role("option", name=name).click()
    wait_for_debug(page, lambda d: d.get("measurement_lines") == 2)
    page.wait_for_function(
        """([rgb, tolerance]) => {
            const img = document.querySelector('#ik-view img') || document.querySelector('img');
            const canvas = document.createElement('canvas');
            canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
            const context = canvas.getContext('2d');
            context.drawImage(img, 0, 0);
            const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
            let count = 0;
            for (let i = 0; i < data.length; i += 4) {
                if (Math.abs(data[i] - rgb[0]) <= tolerance && Math.abs(data[i + 1] - rgb[1]) <= tolerance
                    && Math.abs(data[i + 2] - rgb[2]) <= tolerance) count++;
            }
            return count > 50;
        }""",
        arg=[list(LINE_RGB), 60],
        timeout=60_000,
    )


def take(base_url: str, out: Path, landmark: str) -> None:
    with chromium_context() as context:
        page = context.new_page()
        page.goto(base_url + "/", timeout=240_000)
        wait_until_rendered(page)
        before = detect(page)
        k = [p["name"] for p in before["points"]].index(landmark)
        x, y = before["points"][k]["view_xy"]
        start = view_to_page(page, (x, y), before["view_size"])
        page.wait_for_selector("#ik-download-json:not([disabled])")
        wait_for_colour(page, start, PREDICTED_RGB)
        show_cobb_lines(page)
        wait_for_still_frame(page)
        save_png(page, out / "browser-detect.png")

        end = view_to_page(page, (x + DRAG_VIEW_PX[0], y + DRAG_VIEW_PX[1]), before["view_size"])
        drag(page, start, end)
        wait_for_debug(page, lambda d: d["points"][k]["state"] == "user-fixed" and not d["busy"])
        page.mouse.move(*view_to_page(page, (3, 3), before["view_size"]))  # un-hover: the fixed colour shows
        wait_for_debug(page, lambda d: not d["busy"])
        page.wait_for_selector("#ik-detect:not([disabled])")
        wait_for_colour(page, end, USER_FIXED_RGB)
        page.locator("#ik-table tbody tr").nth(k).evaluate("row => row.scrollIntoView({block: 'center'})")
        wait_for_still_frame(page)
        save_png(page, out / "browser-refined.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model folder")
    parser.add_argument("--out", required=True, help="folder for the PNG files")
    parser.add_argument("--landmark", default="L1-top-left", help="the landmark to drag (mid-spine, a left corner)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="ik-screenshots-") as work:
        server = [
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--model",
            str(Path(args.model).resolve()),
            "--autosave-dir",
            work,
            "--max-sessions",
            "1",
        ]
        # the launcher answers an unknown session path with 410 as soon as it listens
        log = HERE.parent / "artifacts" / "web" / "screenshots-server.log"  # kept for a failed run
        log.parent.mkdir(parents=True, exist_ok=True)
        with running_server(server, log, ready_url=f"http://127.0.0.1:{port}/s/none/", ready_statuses=(410,)):
            take(f"http://127.0.0.1:{port}", out, args.landmark)


if __name__ == "__main__":
    main()
