"""Several browser sessions in one process (web/host.py): each keeps its own points, state,
scene and views; they share only the model and its inference thread.

Real trame servers on loopback ports, real MRML scenes and markups events, a tiny untrained
model; no browser. Drags are emulated as Slicer's markups widget performs them.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("trame_slicer.views", reason="trame-slicer with its standalone libraries is not installed")
torch = pytest.importorskip("torch")
slicer = pytest.importorskip("slicer")
pytestmark = pytest.mark.slow  # real trame servers and MRML scenes

from interactive_keypoints.mrml_logic import control_point_positions, point_states  # noqa: E402
from interactive_keypoints.web.host import SessionHost  # noqa: E402
from interactive_keypoints.web.protocol import HOST_MARK  # noqa: E402
from interactive_keypoints.web.shared_model import SharedModel  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent / "web"))
from web_model import save_web_test_model  # noqa: E402

MARKUPS = slicer.vtkMRMLMarkupsNode


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    return save_web_test_model(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture
def headless(monkeypatch):
    monkeypatch.setenv("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")


def drag(node, k, ras):
    """A mouse drag of point k to ``ras``, as vtkSlicerMarkupsWidget performs it."""
    node.GetDisplayNode().SetActiveControlPoint(k)
    node.InvokeEvent(MARKUPS.PointStartInteractionEvent)
    node.SetNthControlPointPosition(k, *ras)
    node.InvokeEvent(MARKUPS.PointEndInteractionEvent)


async def until_idle(app, timeout_s: float = 120):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while app.logic.runner.in_flight or (app.points is not None and app.logic.is_busy(app.points)):
        assert loop.time() < deadline, "the model run did not finish"
        await asyncio.sleep(0.02)


def debug_states(app) -> list[str]:
    return [p["state"] for p in json.loads(app.state.ik_debug)["points"]]


def test_two_sessions_in_one_process_keep_their_own_points(tiny_model_dir, tmp_path, capsys, headless):
    async def scenario():
        host = SessionHost(SharedModel(tiny_model_dir), {})
        await host.open("a", str(tmp_path / "a"))
        await host.open("b", str(tmp_path / "b"))
        a, b = host.apps["a"], host.apps["b"]
        assert a.server.port != b.server.port
        assert a.state is not b.state and a.slicer_app.scene is not b.slicer_app.scene
        # the model is loaded once and runs on one thread; the logic is each session's own
        assert a.logic is not b.logic and a.logic.model() is b.logic.model()
        assert a.logic.predictor() is b.logic.predictor()
        assert a.logic.runner is not b.logic.runner and a.logic.runner._executor is b.logic.runner._executor
        # each view took its own session's application logic from the process-wide factory
        for app in (a, b):
            manager = app.view.get_displayable_manager_by_class("vtkMRMLMarkupsDisplayableManager")
            assert manager.GetMRMLApplicationLogic() is app.slicer_app.app_logic
            # no multisampling: in software OpenGL it made every frame of a drag ~4x dearer
            assert app.view.render_window().GetMultiSamples() == 0

        for app in (a, b):
            await app.detect()
            await until_idle(app)
            assert app.points.GetNumberOfControlPoints() == 68
        positions_b = control_point_positions(b.points).copy()

        k = 10
        drag(a.points, k, control_point_positions(a.points)[k] + [6.0, 4.0, 0.0])
        await until_idle(a)
        assert point_states(a.points)[0][k] == "user-fixed" and point_states(a.points)[0].count("user-fixed") == 1
        assert debug_states(a)[k] == "user-fixed"
        # b: nothing moved, nothing fixed, in its scene and in what its page is sent
        assert "user-fixed" not in point_states(b.points)[0] and "user-fixed" not in debug_states(b)
        np.testing.assert_array_equal(control_point_positions(b.points), positions_b)
        assert all(row["state"] != "user-fixed" for row in b.state.ik_rows)
        assert a.autosave_dir != b.autosave_dir and (tmp_path / "a").is_dir()

        # closing one session leaves the other working, and lets go of the closed one
        await host.close("a")
        assert "a" not in host.apps
        closed_app = weakref.ref(a)
        del a
        gc.collect()
        assert closed_app() is None, "the closed session's app (its scene, views and state) is still alive"
        drag(b.points, 20, control_point_positions(b.points)[20] + [-5.0, 3.0, 0.0])
        await until_idle(b)
        assert point_states(b.points)[0][20] == "user-fixed" and debug_states(b)[20] == "user-fixed"
        await host.close_all()

    asyncio.run(scenario())
    answers = [
        json.loads(line[len(HOST_MARK) + 1 :])
        for line in capsys.readouterr().out.splitlines()
        if line.startswith(HOST_MARK + " ")
    ]
    assert [(x["event"], x["id"]) for x in answers] == [
        ("ready", "a"),
        ("ready", "b"),
        ("closed", "a"),
        ("closed", "b"),
    ]


def test_a_second_session_with_the_same_id_is_refused(tiny_model_dir, tmp_path, capsys, headless):
    async def scenario():
        host = SessionHost(SharedModel(tiny_model_dir), {})
        await host.open("a", str(tmp_path / "a"))
        await host.open("a", str(tmp_path / "other"))
        assert host.apps["a"].autosave_dir == tmp_path / "a"
        await host.close_all()

    asyncio.run(scenario())
    events = [line for line in capsys.readouterr().out.splitlines() if line.startswith(HOST_MARK)]
    assert '"failed"' in events[1] and "open already" in events[1]
