"""End-to-end test of the browser app in headless Chromium (Debian's, driven by Playwright).

Starts ``python -m interactive_keypoints.web`` (the launcher, one session per tab) on a
free loopback port with a tiny untrained model, and works the page with the mouse as a
user would. Screenshots go to Testing/artifacts/web/.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent / "web"))
from browser import (  # noqa: E402
    chromium_context,
    detect,
    drag,
    free_port,
    missing_browser_reason,
    page_to_view,
    read_debug,
    running_server,
    session_closed,
    view_to_page,
    wait_for_debug,
    wait_until_rendered,
)
from web_model import save_web_test_model  # noqa: E402

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(missing_browser_reason() is not None, reason=str(missing_browser_reason())),
]

ARTIFACTS = Path(__file__).parent / "artifacts" / "web"
SERVER_LOG = ARTIFACTS / "server.log"
MAX_FILE_MB = 1.0  # small stated limits so the bad-input checks need only small files
MAX_MEGAPIXELS = 2.0
DROP_TOLERANCE_VIEW_PX = 2.0
SLOW_INFERENCE_S = 1.5  # every model run takes this much longer, so a quick second drag lands during one
RECONNECT_GRACE_S = 3.0
SESSION_GONE_WITHIN_S = 15.0  # after its tab closed (#19)
HOLD_FILE: Path | None = None  # while this file exists, the server's model runs wait (set by base_url)
AUTOSAVE: Path | None = None  # the server's autosave folder (set by base_url)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return save_web_test_model(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def base_url(tiny_model, tmp_path_factory):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    global HOLD_FILE, AUTOSAVE
    AUTOSAVE = tmp_path_factory.mktemp("autosave")
    HOLD_FILE = tmp_path_factory.mktemp("hold") / "hold-inference"
    args = [
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--model",
        str(tiny_model),
        "--autosave-dir",
        str(AUTOSAVE),
        "--max-sessions",
        "6",
        "--idle-timeout",
        "120",
        "--reconnect-grace",
        str(RECONNECT_GRACE_S),
        "--start-timeout",
        "600",
        "--max-file-mb",
        str(MAX_FILE_MB),
        "--max-megapixels",
        str(MAX_MEGAPIXELS),
        "--slow-inference",
        str(SLOW_INFERENCE_S),
        "--hold-inference-while",
        str(HOLD_FILE),
    ]
    # the launcher answers 404 on an unknown path as soon as it listens (no session started)
    with running_server(args, SERVER_LOG, ready_url=f"{url}/s/none/", ready_statuses=(410,)):
        yield url


CONSOLE_ERRORS: list[str] = []


@pytest.fixture(scope="module")
def browser(base_url):
    with chromium_context() as context:
        context.on(
            "console",
            lambda m: (
                CONSOLE_ERRORS.append(f"{m.page.url if m.page else '?'}: {m.text}") if m.type == "error" else None
            ),
        )
        context.on("weberror", lambda e: CONSOLE_ERRORS.append(f"page error: {e.error}"))
        yield context


@pytest.fixture(autouse=True)
def no_console_errors():
    """Every page of every test must run without a console error (a 405 was one, #19)."""
    CONSOLE_ERRORS.clear()
    yield
    assert not CONSOLE_ERRORS, "console errors:\n" + "\n".join(CONSOLE_ERRORS)


def open_session(browser, base_url, name: str):
    page = browser.new_page()
    page.goto(base_url + "/", timeout=240_000)
    assert "/s/" in page.url, f"the launcher did not give a session: {page.url}"
    wait_until_rendered(page)
    return page


def pixels(debug) -> np.ndarray:
    return np.array([p["pixel"] for p in debug["points"]])


def view_xy(debug) -> np.ndarray:
    return np.array([p["view_xy"] for p in debug["points"]])


def isolated_points(debug, count: int, margin_px: float = 60.0) -> list[int]:
    """Points far from any other point (a press must grab exactly one) and from the image edge."""
    xy = view_xy(debug)
    distance = np.linalg.norm(xy[:, None] - xy[None], axis=2)
    np.fill_diagonal(distance, np.inf)
    order = np.argsort(-distance.min(axis=1))
    return [int(k) for k in order[:count]]


def drop_target(page, debug, k, offset=(45, 70)):
    """A drop point inside the image, moved towards the image centre."""
    start = view_to_page(page, debug["points"][k]["view_xy"], debug["view_size"])
    centre = view_to_page(page, np.mean(view_xy(debug), axis=0), debug["view_size"])
    sign = np.sign(np.subtract(centre, start)) + (np.subtract(centre, start) == 0)
    return start, (start[0] + sign[0] * offset[0], start[1] + sign[1] * offset[1])


def drag_point(page, debug, k, offset=(45, 70)):
    start, end = drop_target(page, debug, k, offset)
    drag(page, start, end)
    return page_to_view(page, end, debug["view_size"])


def screenshot(page, name):
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


# -------------------------------------------------------------------------------- tests


def test_drag_refines_and_the_dropped_point_stays(browser, base_url, tmp_path):
    page = open_session(browser, base_url, "main")
    screenshot(page, "01-sample-loaded")
    before = detect(page)
    assert len(before["points"]) == 68
    assert all(p["state"] == "predicted" for p in before["points"])
    screenshot(page, "02-detected")

    (k,) = isolated_points(before, 1)
    dropped_view = drag_point(page, before, k)
    after = wait_for_debug(page, lambda d: d["points"][k]["state"] == "user-fixed" and not d["busy"])
    page.mouse.move(*view_to_page(page, (3, 3), after["view_size"]))  # un-hover: the fixed colour shows
    after = wait_for_debug(page, lambda d: not d["busy"])
    screenshot(page, "03-dragged-and-refined")

    # the dragged point stayed where it was dropped ...
    assert np.linalg.norm(view_xy(after)[k] - dropped_view) <= DROP_TOLERANCE_VIEW_PX
    # ... and the model moved other (not user-fixed) points
    moved = np.linalg.norm(pixels(after) - pixels(before), axis=1) > 0.5
    moved[k] = False
    assert moved.any(), "no other landmark moved after the refinement"
    assert [p["state"] for i, p in enumerate(after["points"]) if i != k] == ["predicted"] * 67
    row = page.locator("#ik-table tbody tr").nth(k).inner_text()
    assert before["points"][k]["name"] in row and "user-fixed" in row

    # undo puts every point back, redo restores the correction
    page.click("#ik-undo")
    undone = wait_for_debug(page, lambda d: d["points"][k]["state"] == "predicted" and not d["busy"])
    np.testing.assert_allclose(pixels(undone), pixels(before), atol=0.05)
    page.click("#ik-redo")
    redone = wait_for_debug(page, lambda d: d["points"][k]["state"] == "user-fixed" and not d["busy"])
    np.testing.assert_allclose(pixels(redone), pixels(after), atol=0.05)

    # downloads: Slicer markups JSON and CSV with the user-fixed state
    with page.expect_download() as info:
        page.click("#ik-download-json")
    markups = json.loads(Path(info.value.path()).read_text())
    points = markups["markups"][0]["controlPoints"]
    assert len(points) == 68 and points[k]["description"].startswith("user-fixed")
    with page.expect_download() as info:
        page.click("#ik-download-csv")
    csv_lines = Path(info.value.path()).read_text().strip().splitlines()
    assert len(csv_lines) == 69 and "user-fixed" in csv_lines[k + 1]

    # Detect again with a user-fixed point asks first; declining keeps the correction
    asked = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))
    page.click("#ik-detect")  # returns once the dialog has been answered
    assert asked and "corrections" in asked[0]
    assert read_debug(page)["points"][k]["state"] == "user-fixed"

    page.click("#ik-reset")
    reset = wait_for_debug(page, lambda d: d["points"][k]["state"] == "predicted" and not d["busy"])
    np.testing.assert_allclose(pixels(reset), pixels(before), atol=0.05)
    page.close()


def test_next_then_confirm_fixes_the_suggested_point_and_undo_reverts_it(browser, base_url):
    page = open_session(browser, base_url, "review")
    before = detect(page)
    assert before["next"] == -1 and page.locator("#ik-confirm").is_disabled()  # nothing suggested yet

    page.click("#ik-next")
    suggested = wait_for_debug(page, lambda d: d["next"] >= 0)
    k = suggested["next"]
    # the view is centred on it
    wait_for_debug(
        page,
        lambda d: (
            np.linalg.norm(np.subtract(d["points"][k]["view_xy"], np.divide(d["view_size"], 2)))
            <= DROP_TOLERANCE_VIEW_PX
        ),
    )
    assert before["points"][k]["name"] in page.locator("#ik-next-name").inner_text()
    assert "ik-next-row" in (page.locator("#ik-table tbody tr").nth(k).get_attribute("class") or "")
    screenshot(page, "05-next-point")

    page.click("#ik-confirm")
    confirmed = wait_for_debug(page, lambda d: d["points"][k]["state"] == "user-fixed" and not d["busy"])
    np.testing.assert_allclose(pixels(confirmed)[k], pixels(before)[k], atol=0.05)  # fixed where it was
    assert confirmed["next"] == -1  # checked: no suggestion until Next again
    row = page.locator("#ik-table tbody tr").nth(k).inner_text()
    assert "user-fixed" in row

    page.click("#ik-undo")
    undone = wait_for_debug(page, lambda d: d["points"][k]["state"] == "predicted" and not d["busy"])
    np.testing.assert_allclose(pixels(undone), pixels(before), atol=0.05)
    page.close()


def test_user_points_are_never_lost(browser, base_url, tmp_path):
    page = open_session(browser, base_url, "robust")
    first = detect(page)
    (a,) = isolated_points(first, 1)
    drag_point(page, first, a)
    settled = wait_for_debug(page, lambda d: d["points"][a]["state"] == "user-fixed" and not d["busy"])

    # drag b, and drag the (user-fixed, so unmoving) point a again while b's refinement
    # runs: the logic queues the second drop; both drops must be kept
    (b,) = [k for k in isolated_points(settled, 2) if k != a][:1]
    HOLD_FILE.touch()  # b's run waits until the second drag is done, however loaded the machine is
    try:
        drop_b = drag_point(page, settled, b)
        # the model has started on b's drop (b shows as fixed a moment before the run starts)
        runs_before = settled["runs_started"]
        wait_for_debug(page, lambda d: d["busy"] and d["runs_started"] > runs_before)
        drop_a = drag_point(page, settled, a, offset=(-30, 40))
        # the server has taken the second drop while b's run still waits
        held = wait_for_debug(
            page, lambda d: np.linalg.norm(np.subtract(d["points"][a]["view_xy"], drop_a)) <= DROP_TOLERANCE_VIEW_PX
        )
        assert held["busy"] and held["runs_started"] == runs_before + 1
    finally:
        HOLD_FILE.unlink(missing_ok=True)
    done = wait_for_debug(
        page,
        lambda d: (
            d["points"][b]["state"] == "user-fixed"
            and not d["busy"]
            and np.linalg.norm(np.subtract(d["points"][a]["view_xy"], drop_a)) <= DROP_TOLERANCE_VIEW_PX
        ),
    )
    assert np.linalg.norm(view_xy(done)[b] - drop_b) <= DROP_TOLERANCE_VIEW_PX
    assert done["points"][a]["state"] == "user-fixed"
    kept = pixels(done)

    def assert_points_kept(what):
        now = read_debug(page)
        np.testing.assert_allclose(pixels(now), kept, atol=0.05, err_msg=f"points changed after {what}")
        assert now["points"][a]["state"] == "user-fixed", what

    def message():
        page.wait_for_selector("#ik-message", state="visible")
        return page.locator("#ik-message").inner_text()

    def dismiss():
        page.locator("#ik-message button").first.click()
        page.wait_for_selector("#ik-message", state="hidden")

    upload = page.locator("input[type=file]")

    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("this is not an image\n")
    upload.set_input_files(str(not_an_image))
    assert "notes.png" in message()
    screenshot(page, "04-non-image-refused")
    assert_points_kept("a non-image upload")
    dismiss()

    too_big = tmp_path / "huge.png"
    too_big.write_bytes(b"\0" * int((MAX_FILE_MB + 0.5) * 2**20))
    upload.set_input_files(str(too_big))
    assert "larger than the limit" in message()
    assert_points_kept("an oversized file")
    dismiss()

    import SimpleITK as sitk

    too_many_pixels = tmp_path / "wide.png"
    stripes = (np.arange(1100)[:, None] % 2 * 255 + np.zeros((1, 2000))).astype(np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(stripes), str(too_many_pixels))  # 2.2 MP, a few kB
    upload.set_input_files(str(too_many_pixels))
    text = message()
    assert "2200000 pixels" in text and "limit" in text
    screenshot(page, "05-too-many-pixels-refused")
    assert_points_kept("an image over the pixel limit")
    dismiss()

    # served without --data-root: the page offers no images of the server's and names no folder of it
    assert page.locator("#ik-server-image, #ik-open-server-image").count() == 0
    assert str(AUTOSAVE) not in page.content()

    # reload, and close then reopen the tab: the session and its points are still there
    session_url = page.url
    page.reload()
    wait_until_rendered(page)
    wait_for_debug(page, lambda d: len(d["points"]) == 68)
    assert_points_kept("a page reload")
    page.close()
    page = browser.new_page()
    page.goto(session_url)
    wait_until_rendered(page)
    wait_for_debug(page, lambda d: len(d["points"]) == 68)
    assert_points_kept("closing and reopening the tab")
    screenshot(page, "06-reopened")
    page.close()


def test_tabs_have_separate_sessions(browser, base_url):
    tab_a = open_session(browser, base_url, "tab-a")
    tab_b = open_session(browser, base_url, "tab-b")
    assert tab_a.url != tab_b.url

    a_points = detect(tab_a)
    page_b = read_debug(tab_b)
    assert page_b["points"] == [], "tab B sees tab A's detection"

    b_points = detect(tab_b)
    (k,) = isolated_points(b_points, 1)
    drag_point(tab_b, b_points, k)
    wait_for_debug(tab_b, lambda d: d["points"][k]["state"] == "user-fixed" and not d["busy"])

    a_now = read_debug(tab_a)
    np.testing.assert_allclose(pixels(a_now), pixels(a_points), atol=0.05)
    assert all(p["state"] == "predicted" for p in a_now["points"])
    screenshot(tab_a, "07-tab-a-untouched")
    screenshot(tab_b, "08-tab-b-dragged")
    tab_a.close()
    tab_b.close()


# true once the view's streamed image has at least ``arg`` magenta pixels
MAGENTA_PIXELS_JS = """min => {
  const img = Array.from(document.querySelectorAll('img')).find(i => i.complete && i.naturalWidth > 100);
  if (!img) return false;
  const canvas = document.createElement('canvas');
  canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
  const ctx = canvas.getContext('2d');
  ctx.drawImage(img, 0, 0);
  const data = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
  let count = 0;
  for (let i = 0; i < data.length; i += 4) {
    if (data[i] > 200 && data[i + 1] < 130 && data[i + 2] > 160) count++;
  }
  return count >= min;
}"""


def measurement_table_text(page) -> list[str]:
    return [row.inner_text() for row in page.locator("#ik-measurements tbody tr").all()]


def test_measurements_table_changes_after_a_drag(browser, base_url):
    page = open_session(browser, base_url, "measurements")
    before = detect(page)
    wait_for_debug(page, lambda d: len(d.get("measurements", [])) == 3)
    rows_before = measurement_table_text(page)
    assert [row.split()[:2] for row in rows_before] == [["Cobb", "MT"], ["Cobb", "PT"], ["Cobb", "TL"]]

    # drag the most isolated corner of the major curve's end vertebrae: its tilt changes
    names = [p["name"] for p in before["points"]]
    major = read_debug(page)["measurements"][0]
    corners = [names.index(name) for name in major["landmarks"].split(", ")]
    (k,) = [i for i in isolated_points(before, 68) if i in corners][:1]
    drag_point(page, before, k)
    wait_for_debug(page, lambda d: d["points"][k]["state"] == "user-fixed" and not d["busy"])
    page.wait_for_function(
        "before => Array.from(document.querySelectorAll('#ik-measurements tbody tr')).map(r => r.innerText).join('|')"
        " !== before",
        arg="|".join(rows_before),
        timeout=60_000,
    )
    rows_after = measurement_table_text(page)
    assert rows_after != rows_before and [r.split()[:2] for r in rows_after] == [
        ["Cobb", "MT"],
        ["Cobb", "PT"],
        ["Cobb", "TL"],
    ]

    # choosing a measurement draws its two lines in the view
    page.locator("#ik-measurement-select").click(force=True)  # the field overlay takes the click: open the menu
    page.get_by_role("option", name="Cobb MT").click()
    wait_for_debug(page, lambda d: d.get("measurement_lines") == 2)
    # ... and the streamed view shows them (the logic draws them magenta)
    page.wait_for_function(MAGENTA_PIXELS_JS, arg=50, timeout=60_000)
    screenshot(page, "09-cobb-lines")
    page.close()


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_a_closed_tab_ends_its_session(browser, base_url):
    page = open_session(browser, base_url, "closed")
    session_url = page.url
    session_id = session_url.split("/s/")[1].split("/")[0]
    assert f"session {session_id} listening" in SERVER_LOG.read_text(), "precondition: the launcher logs sessions"
    page.reload()  # a reload is not a closed tab: same session
    wait_until_rendered(page)
    assert page.url == session_url and not session_closed(SERVER_LOG, session_id)

    page.close()
    closed = time.monotonic()
    while not session_closed(SERVER_LOG, session_id):  # the host has let go of its scene and views
        assert time.monotonic() - closed < SESSION_GONE_WITHIN_S, "the session outlived its closed tab"
        time.sleep(0.25)
    print(f"session closed {time.monotonic() - closed:.1f} s after its tab closed (grace {RECONNECT_GRACE_S:g} s)")
    assert status_of(session_url) == 410


def test_a_call_that_fails_as_the_page_leaves_is_a_warning_and_other_rejections_stay_errors(browser, base_url):
    """trame-rca's resize call fails unhandled when a page reloads or closes (CI saw it as a page error)."""
    page = open_session(browser, base_url, "leaving")
    warnings: list[str] = []
    page.on("console", lambda m: warnings.append(m.text) if m.type == "warning" else None)
    # the rejection wslink gives a call while its connection is closed, exactly as trame-rca leaves it
    page.evaluate(
        "() => { Promise.reject({code: -32099, message: 'RPC call trame.rca.size unsuccessful: connection not open'}); }"
    )
    page.wait_for_timeout(300)
    assert not CONSOLE_ERRORS, f"a call on a closed connection was reported as an error: {CONSOLE_ERRORS}"
    assert any("connection not open" in w for w in warnings), "the quietened rejection must still show as a warning"

    page.evaluate("() => { Promise.reject({code: -32000, message: 'a server error'}); }")
    page.wait_for_timeout(300)
    assert CONSOLE_ERRORS == ["page error: Object"], "any other unhandled rejection must stay a page error"
    CONSOLE_ERRORS.clear()  # seen and expected
    page.close()
