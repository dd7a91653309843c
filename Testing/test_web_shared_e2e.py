"""The browser app served for a team (#29), in headless Chromium against a real ``serve``.

``python -m interactive_keypoints.web --token --data-root ...`` on a free loopback port with a
tiny untrained model: without the token nothing, with it a session; the page lists the data
root's images and refuses every other path with one message; no server folder reaches the
page; one browser cannot reach another's session, upload or autosave; a PNG whose header
claims 100000 x 100000 pixels is refused before it is decoded; one visitor cannot take every
session. Screenshots go to Testing/artifacts/web/.
"""

from __future__ import annotations

import http.client
import json
import re
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent / "web"))
from browser import (  # noqa: E402
    CONTEXT_OPTIONS,
    chromium_browser,
    detect,
    free_port,
    missing_browser_reason,
    read_debug,
    running_server,
    wait_until_rendered,
)
from web_model import save_web_test_model  # noqa: E402

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(missing_browser_reason() is not None, reason=str(missing_browser_reason())),
]

ARTIFACTS = Path(__file__).parent / "artifacts" / "web"
SERVER_LOG = ARTIFACTS / "shared-server.log"
MAX_FILE_MB = 1.0
MAX_MEGAPIXELS = 2.0
MAX_SESSIONS = 7
PER_CLIENT = 4
REFUSED = "is not one of this server's images: pick one from the list"


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header that claims ``width`` x ``height`` grey pixels, with almost no data:
    decoded, it would need width * height bytes (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
        + chunk(b"IEND", b"")
    )


def write_png(path: Path, seed: int = 0) -> Path:
    import SimpleITK as sitk

    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (256, 128), dtype=np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(pixels), str(path))
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    work = tmp_path_factory.mktemp("shared")
    model = save_web_test_model(work / "model")
    images, autosaves, private = work / "images", work / "autosaves", work / "private"
    write_png(images / "spine-a.png", 1)
    write_png(images / "sub" / "spine-b.png", 2)
    (images / "bomb.png").write_bytes(png_claiming(100_000, 100_000))
    write_png(private / "secret.png", 3)
    (images / "escape.png").symlink_to(private / "secret.png")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = ["--host", "127.0.0.1", "--port", str(port), "--token", "--model", str(model)]
    args += ["--data-root", str(images), "--autosave-dir", str(autosaves)]
    args += ["--max-sessions", str(MAX_SESSIONS), "--max-sessions-per-client", str(PER_CLIENT)]
    args += ["--idle-timeout", "120", "--reconnect-grace", "3", "--start-timeout", "600"]
    args += ["--max-file-mb", str(MAX_FILE_MB), "--max-megapixels", str(MAX_MEGAPIXELS)]
    environment = {"INTERACTIVE_KEYPOINTS_TOKEN": ""}  # a random token, read from the start-up line
    # before signing in, every path answers 401 (no session is started for it)
    with running_server(args, SERVER_LOG, ready_url=f"{url}/s/none/", ready_statuses=(401,), env=environment):
        printed = re.search(r"open (http://\S+/\?token=(\S+)) ", SERVER_LOG.read_text())
        assert printed, "the start-up line carries the address with its token"
        yield SimpleNamespace(
            url=url,
            token_url=printed.group(1),
            token=printed.group(2),
            work=work,
            images=images,
            autosaves=autosaves,
            private=private,
        )


@pytest.fixture(scope="module")
def chromium(server):
    with chromium_browser() as browser:
        yield browser


@pytest.fixture
def console_errors():
    """Errors of the session pages (the refusal pages' 401s are expected, so not collected)."""
    errors: list[str] = []
    yield errors
    assert not errors, "console errors:\n" + "\n".join(errors)


def signed_in(chromium, server):
    """A browser of its own that has opened the token's address once (no session taken)."""
    context = chromium.new_context(**CONTEXT_OPTIONS)
    page = context.new_page()
    page.goto(f"{server.url}/s/none/?token={server.token}")  # the cookie is set; the page says 'ended'
    page.close()
    return context


def open_session(context, server, console_errors):
    page = context.new_page()
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: console_errors.append(f"page error: {e}"))
    page.goto(server.url + "/", timeout=240_000)
    assert "/s/" in page.url, f"no session: {page.url}"
    wait_until_rendered(page)
    return page


def sessions_given() -> int:
    return SERVER_LOG.read_text().count("given to a tab")


def message(page) -> str:
    page.wait_for_selector("#ik-message", state="visible")
    text = page.locator("#ik-message").inner_text()
    page.locator("#ik-message button").first.click()
    page.wait_for_selector("#ik-message", state="hidden")
    return text.strip()


def open_by_name(page, name) -> str:
    """Send ``name`` as the chosen server image, as a page altered by its user could, and press Open."""
    # state.set leaves the key dirty while the client is busy (e.g. closing the last message);
    # Open must not reach the server before the new choice does
    page.evaluate(
        """async ([key, value]) => {
            const state = window.trame.state;
            await state.set(key, value);
            while (state.dirtyKeys.size) {
                await new Promise((resolve) => setTimeout(resolve, 20));
                await state.flush();
            }
        }""",
        ["ik_server_choice", name],
    )
    page.click("#ik-open-server-image")
    return message(page)


def image_name(page) -> str:
    return page.locator("#ik-image-name").inner_text()


# -------------------------------------------------------------------------------- tests


def test_without_the_token_no_page_and_no_session_with_it_a_session(chromium, server, console_errors):
    context = chromium.new_context(**CONTEXT_OPTIONS)
    page = context.new_page()
    given = sessions_given()
    for address in (server.url + "/", server.url + "/?token=not-the-token", server.url + "/s/none/"):
        response = page.goto(address)
        assert response.status == 401, address
        assert (
            "#ik-detect" not in page.content() and "Sign-in needed" in page.content() or "Wrong token" in page.content()
        )
    time.sleep(1.0)
    assert sessions_given() == given, "a visit without the token was given a session"
    page.close()

    page = context.new_page()
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    page.goto(server.token_url, timeout=240_000)
    assert "/s/" in page.url and "token" not in page.url  # the token left the address bar
    wait_until_rendered(page)  # the page's connection and websocket passed with the cookie alone
    cookie = next(c for c in context.cookies() if c["name"] == "ik_auth")
    assert cookie["httpOnly"] and server.token not in cookie["value"]
    detect(page)
    page.screenshot(path=str(ARTIFACTS / "20-signed-in-with-the-token.png"))
    context.close()


def test_the_data_roots_images_are_a_list_and_every_other_path_is_refused(chromium, server, console_errors):
    context = signed_in(chromium, server)
    page = open_session(context, server, console_errors)
    assert page.locator("#ik-server-path").count() == 0  # no free-text path box
    listed = page.evaluate("() => window.trame.state.get('ik_server_images')")
    assert listed == ["bomb.png", "spine-a.png", "sub/spine-b.png"]  # escape.png leads out: not listed

    # a user picks from the list
    page.locator("#ik-server-image").click()
    page.get_by_role("option", name="sub/spine-b.png").click()
    page.click("#ik-open-server-image")
    assert message(page) == "opened sub/spine-b.png"
    assert "spine-b" in image_name(page)
    page.screenshot(path=str(ARTIFACTS / "21-server-image-chosen.png"))

    own_autosave = server.autosaves / page.url.split("/s/")[1].split("/")[0]
    for name in [
        "../private/secret.png",  # exists
        "../private/missing.png",  # does not: the same words
        str(server.private / "secret.png"),
        str(server.images / "spine-a.png"),  # absolute, even inside the root
        "escape.png",  # a symlink out of the root
        "sub/../../private/secret.png",
        "%2e%2e/private/secret.png",
        "..%2fprivate%2fsecret.png",
        "..\\private\\secret.png",
        "/etc/passwd",
        str(own_autosave),
        "../autosaves",
    ]:
        assert open_by_name(page, name) == f"{name!r} {REFUSED}", name
        assert "spine-b" in image_name(page), f"{name} changed the image"

    # an image of the root that claims too many pixels is refused from its header
    page.locator("#ik-server-image").click()
    page.get_by_role("option", name="bomb.png").click()
    page.click("#ik-open-server-image")
    assert message(page) == (
        "could not open bomb.png: bomb.png has 100000 x 100000 = 10000000000 pixels, "
        f"more than the limit of {int(MAX_MEGAPIXELS * 1e6)} pixels"
    )
    assert "spine-b" in image_name(page)
    context.close()


def test_no_server_folder_reaches_the_page(chromium, server, console_errors, tmp_path):
    context = signed_in(chromium, server)
    frames: list[bytes] = []

    def record(websocket):
        websocket.on("framereceived", lambda data: frames.append(data if isinstance(data, bytes) else data.encode()))

    page = context.new_page()
    page.on("websocket", record)
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    page.goto(server.url + "/", timeout=240_000)
    wait_until_rendered(page)
    page.locator("input[type=file]").set_input_files(str(write_png(tmp_path / "patient scan.png", 4)))
    assert message(page) == "opened patient scan.png"
    detect(page)
    link = page.locator("#ik-autosave-link")
    link.wait_for(state="visible")
    assert link.inner_text() == "patient_scan.mrk.json"
    with page.expect_download() as download:
        link.click()
    saved = json.loads(Path(download.value.path()).read_text())
    assert len(saved["markups"][0]["controlPoints"]) == 68
    open_by_name(page, "../private/secret.png")
    page.screenshot(path=str(ARTIFACTS / "22-autosave-as-a-download.png"))

    assert frames, "no websocket frames were recorded"
    seen = page.content().encode() + b"".join(frames)
    for folder in (server.work, server.images, server.autosaves, server.private, Path(tempfile.gettempdir())):
        assert str(folder).encode() not in seen, f"{folder} reached the page"
    assert b"ik-upload-" not in seen
    context.close()


def test_one_browser_cannot_reach_another_browsers_session_upload_or_autosave(chromium, server, console_errors):
    mine, theirs = signed_in(chromium, server), signed_in(chromium, server)
    their_page = open_session(theirs, server, console_errors)
    their_page.locator("input[type=file]").set_input_files(str(write_png(server.work / "upload" / "patient-b.png", 5)))
    assert message(their_page) == "opened patient-b.png"
    detect(their_page)
    their_page.locator("#ik-autosave-link").wait_for(state="visible")
    their_url = their_page.url
    their_id = their_url.split("/s/")[1].split("/")[0]
    their_autosave = f"{server.url}/s/{their_id}/autosaved/patient-b.mrk.json"
    assert theirs.request.get(their_autosave).status == 200
    assert not list(Path(tempfile.gettempdir()).glob("ik-upload-*")), "an upload outlived its reading"

    # another browser, signed in too: not their page, not their autosave
    page = mine.new_page()
    response = page.goto(their_url)
    assert response.status == 403 and "another browser" in page.content()
    page.close()
    assert mine.request.get(their_autosave).status == 404
    assert mine.request.get(f"{server.url}/s/{their_id}/autosaved/..%2F..%2Fimages%2Fspine-a.png").status == 404

    # nor through its own session: their upload and autosave are no names of the server's images
    my_page = open_session(mine, server, console_errors)
    assert "patient-b.png" not in my_page.evaluate("() => window.trame.state.get('ik_server_images')")
    their_file = server.autosaves / their_id / "patient-b.mrk.json"
    assert their_file.is_file()
    for name in ("patient-b.png", str(their_file), f"../autosaves/{their_id}/patient-b.mrk.json"):
        assert open_by_name(my_page, name) == f"{name!r} {REFUSED}"
    assert read_debug(their_page)["points"], "their session lost its points"
    mine.close()
    theirs.close()


def test_a_decompression_bomb_and_a_header_naming_another_file_are_refused(chromium, server, console_errors):
    context = signed_in(chromium, server)
    page = open_session(context, server, console_errors)
    before = detect(page)
    bomb = server.work / "upload" / "bomb.png"
    bomb.write_bytes(png_claiming(100_000, 100_000))
    assert bomb.stat().st_size < 200  # 10^10 pixels claimed in under 200 bytes
    began = time.monotonic()
    page.locator("input[type=file]").set_input_files(str(bomb))
    text = message(page)
    print(f"a PNG claiming 100000 x 100000 pixels refused in {time.monotonic() - began:.2f} s (upload to message)")
    assert text == (
        "could not open bomb.png: bomb.png has 100000 x 100000 = 10000000000 pixels, "
        f"more than the limit of {int(MAX_MEGAPIXELS * 1e6)} pixels"
    )
    # a MetaImage header whose pixels are a file elsewhere on the server
    header = server.work / "upload" / "elsewhere.mha"
    raw = server.private / "secret.raw"
    np.zeros((256, 128), np.uint8).tofile(raw)
    header.write_text(
        f"ObjectType = Image\nNDims = 2\nDimSize = 128 256\nElementType = MET_UCHAR\nElementDataFile = {raw}\n"
    )
    page.locator("input[type=file]").set_input_files(str(header))
    assert "elsewhere.mha keeps its pixels in another file" in message(page)
    after = read_debug(page)
    assert after["points"] == before["points"], "a refused file changed the points"
    context.close()


def test_one_visitor_cannot_take_every_session(chromium, server, console_errors):
    """Another machine (the loopback address 127.0.0.2) asks for sessions until refused; this
    browser (127.0.0.1) still gets one."""
    port = int(server.url.rsplit(":", 1)[1])

    def get(path: str, cookie: str = "") -> http.client.HTTPResponse:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300, source_address=("127.0.0.2", 0))
        connection.request("GET", path, headers={"Cookie": cookie} if cookie else {})
        response = connection.getresponse()
        response.read()
        connection.close()
        return response

    signed = get(f"/s/none/?token={server.token}")
    assert signed.status == 303
    cookie = signed.getheader("Set-Cookie").split(";")[0]
    assert get("/").status == 401  # without the cookie
    statuses = [get("/", cookie).status for _ in range(PER_CLIENT + 1)]
    assert statuses == [302] * PER_CLIENT + [429]
    assert "127.0.0.2: it holds 4 sessions" in SERVER_LOG.read_text()
    context = signed_in(chromium, server)
    open_session(context, server, console_errors).close()
    context.close()
