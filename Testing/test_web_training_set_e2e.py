"""The browser's "Add to training set" (your own landmarks), in headless Chromium.

The server is started with ``--training-set`` (the server's folder; the page never names one).
Detect, move one point, confirm another, add: the set gets the image as the model saw it and
its point list, where only the two reviewed points are labels. Adding again is refused until
the user asks to replace the points.
"""

from __future__ import annotations

import json
import sys
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
    running_server,
    view_to_page,
    wait_for_debug,
    wait_until_rendered,
)
from web_model import save_web_test_model  # noqa: E402

from interactive_keypoints.conventions import SPINE  # noqa: E402
from interactive_keypoints.data import get_dataset  # noqa: E402

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(missing_browser_reason() is not None, reason=str(missing_browser_reason())),
]

ARTIFACTS = Path(__file__).parent / "artifacts" / "web"


def message(page) -> str:
    return page.locator("#ik-message").inner_text()


def test_add_to_training_set_keeps_only_the_reviewed_points_as_labels(tmp_path):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    model = save_web_test_model(tmp_path / "model")
    training_set = tmp_path / "team-set"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = ["--host", "127.0.0.1", "--port", str(port), "--model", str(model), "--training-set", str(training_set)]
    args += ["--autosave-dir", str(tmp_path / "autosave"), "--start-timeout", "600", "--max-sessions", "2"]
    errors = []
    with (
        running_server(args, ARTIFACTS / "training-set-server.log", ready_url=f"{url}/s/none/", ready_statuses=(410,)),
        chromium_context() as browser,
    ):
        browser.on("weberror", lambda e: errors.append(str(e.error)))
        page = browser.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(url + "/", timeout=240_000)
        wait_until_rendered(page)
        before = detect(page)

        # move one point (far from the others, so the press grabs it alone), then confirm the suggestion
        xy = np.array([p["view_xy"] for p in before["points"]])
        distance = np.linalg.norm(xy[:, None] - xy[None], axis=2) + np.eye(len(xy)) * 1e9
        k = int(np.argmax(distance.min(axis=1)))
        start = view_to_page(page, xy[k], before["view_size"])
        drag(page, start, (start[0] + 30, start[1] + 40))
        wait_for_debug(page, lambda d: d["points"][k]["state"] == "user-fixed" and not d["busy"])
        page.click("#ik-next")
        suggested = wait_for_debug(page, lambda d: d["next"] >= 0)["next"]
        page.click("#ik-confirm")
        after = wait_for_debug(page, lambda d: d["points"][suggested]["state"] == "user-fixed" and not d["busy"])

        page.click("#ik-add-to-set")
        page.wait_for_function("() => document.querySelector('#ik-message')?.innerText.includes('added')")
        assert "2 reviewed points are labels" in message(page)
        page.screenshot(path=str(ARTIFACTS / "training-set-added.png"))
        template = json.loads((training_set / "landmarks.json").read_text())
        assert template["names"] == list(SPINE.names)
        (sample,) = get_dataset("folder", training_set, "all").samples
        assert sorted(np.flatnonzero(sample.labelled)) == sorted({k, suggested})
        np.testing.assert_allclose(sample.points[k], after["points"][k]["pixel"], atol=0.01)

        # the same image again: refused, nothing lost; the user may then replace its points
        assert not page.locator("#ik-replace-in-set").is_visible()
        page.click("#ik-add-to-set")
        page.wait_for_function("() => document.querySelector('#ik-message')?.innerText.includes('already')")
        files = sorted(p.name for p in training_set.iterdir())
        page.click("#ik-replace-in-set")
        page.wait_for_function("() => document.querySelector('#ik-message')?.innerText.includes('added')")
        assert sorted(p.name for p in training_set.iterdir()) == files  # the points replaced, no second image
        assert len(list(training_set.glob("*.nrrd"))) == 1
        # no server folder reaches the page
        assert str(training_set) not in page.content()
        page.close()
    assert not errors, errors
