"""KeypointsMRMLLogic on real MRML (slicer-core): detect, drag, undo, export, batch.

Drags are emulated exactly as Slicer's markups view widget does them: set the active
control point, invoke PointStartInteractionEvent, move the point, invoke
PointEndInteractionEvent. The model is a tiny untrained network whose click pathway is
amplified so that a drag visibly moves the other points; the logic's behaviour (fixed
points stay, the others follow the model, undo) does not depend on training.
"""

import csv
import json
import threading
import time

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core (pip install slicer-core) is needed for MRML tests")
torch = pytest.importorskip("torch")
sitk = pytest.importorskip("SimpleITK")

from mrml_scene import make_scene  # noqa: E402

from interactive_keypoints import model_io  # noqa: E402
from interactive_keypoints.config import ModelFormatError  # noqa: E402
from interactive_keypoints.conventions import SPINE  # noqa: E402
from interactive_keypoints.correction_field import landmark_extent  # noqa: E402
from interactive_keypoints.imaging import ImageError, load_radiograph  # noqa: E402
from interactive_keypoints.inference import Predictor  # noqa: E402
from interactive_keypoints.model_io import save_model  # noqa: E402
from interactive_keypoints.mrml_logic import (  # noqa: E402
    PHANTOM_VOLUME_NAME,
    KeypointsMRMLLogic,
    LogicBusyError,
    ThreadedRunner,
    add_phantom_volume,
    add_volume_from_radiograph,
    control_point_positions,
    ijk_to_ras_matrix,
    pixels_to_ras,
    point_states,
    ras_to_pixels,
)
from interactive_keypoints.phantom import make_spine_phantom  # noqa: E402
from interactive_keypoints.tiny_model import tiny_model  # noqa: E402

# each test builds a scene and runs the model through the logic: out of the fast tier
pytestmark = pytest.mark.slow

SPINE_LANDMARK_NAMES = list(SPINE.names)
K = len(SPINE_LANDMARK_NAMES)
MARKUPS = slicer.vtkMRMLMarkupsNode


# ------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def model():
    return tiny_model()  # the in-Slicer test's model too


@pytest.fixture(scope="module")
def phantom():
    return make_spine_phantom(seed=3, height=256, width=128)


@pytest.fixture
def scene():
    scene = make_scene()
    yield scene
    scene.Clear(1)


@pytest.fixture
def volume(scene, phantom):
    image = load_radiograph(phantom.image, spacing=phantom.spacing)
    return add_volume_from_radiograph(scene, image, "phantom")


@pytest.fixture
def errors():
    return []


@pytest.fixture
def logic(scene, model, errors):
    logic = KeypointsMRMLLogic(scene=scene, model=model, device="cpu")
    logic.on_error = errors.append
    return logic


class HeldRunner:
    """Runs nothing until told: a computation 'in progress' for as long as the test wants."""

    def __init__(self):
        self.jobs = []

    def __call__(self, compute, finish):
        self.jobs.append((compute, finish))

    def run_next(self):
        compute, finish = self.jobs.pop(0)
        try:
            outcome = compute()
        except Exception as error:  # noqa: BLE001
            outcome = error
        finish(outcome)


def gate_off_main_thread(monkeypatch, owner, method):
    """Make ``owner.method`` wait for the returned Event when called off the main thread,
    and record the threads that called it: "the model is still running" for as long as
    the test wants, on a real worker thread. On the main thread it does not wait (an
    inline call then shows up in the recorded threads instead of hanging the test)."""
    release, threads = threading.Event(), []
    original = getattr(owner, method)

    def gated(*args, **kwargs):
        threads.append(threading.current_thread())
        if threading.current_thread() is not threading.main_thread():
            release.wait()
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, method, gated)
    return release, threads


def poll_until_idle(runner, logic, node):
    """What the GUI's QTimer does: run the finished callbacks on the main thread."""
    while logic.is_busy(node):
        runner.poll()
        time.sleep(0.005)


def drag(node, k, ras):
    """A mouse drag of point k to ``ras``, as vtkSlicerMarkupsWidget performs it."""
    node.GetDisplayNode().SetActiveControlPoint(k)
    node.InvokeEvent(MARKUPS.PointStartInteractionEvent)
    node.SetNthControlPointPosition(k, *ras)
    node.InvokeEvent(MARKUPS.PointEndInteractionEvent)


def moved(a, b, tol=1e-6):
    return np.linalg.norm(np.asarray(a) - np.asarray(b), axis=-1) > tol


def pixel_target(node, volume, k, offset, inside=True):
    """RAS of point k shifted by ``offset`` pixels (kept on the image when ``inside``)."""
    m = ijk_to_ras_matrix(volume)
    xy = ras_to_pixels(control_point_positions(node)[k], m)[0] + np.asarray(offset, float)
    if inside:
        width, height = volume.GetImageData().GetDimensions()[:2]
        xy = np.clip(xy, 0.0, [width - 1.0, height - 1.0])
    return pixels_to_ras(xy, m)[0]


# -------------------------------------------------------------------------- detect


def test_detect_places_one_labelled_point_per_landmark(logic, volume):
    node = logic.detect(volume)
    assert node.GetName() == "phantom keypoints"
    assert node.GetNumberOfControlPoints() == K
    assert [node.GetNthControlPointLabel(k) for k in range(K)] == SPINE_LANDMARK_NAMES
    prediction = logic.prediction(node)
    # sub-pixel IJK (x, y, 0) through the volume's IJK-to-RAS
    expected = pixels_to_ras(prediction.points, ijk_to_ras_matrix(volume))
    np.testing.assert_allclose(control_point_positions(node), expected, atol=1e-9)
    states, confidence = point_states(node)
    assert states == ["predicted"] * K
    np.testing.assert_allclose(confidence, prediction.confidence, atol=1e-3)
    assert not any(node.GetNthControlPointSelected(k) for k in range(K))


def test_detect_reuses_the_point_list_of_the_volume(logic, volume, scene):
    first = logic.detect(volume)
    second = logic.detect(volume)
    assert first is second
    assert scene.GetNumberOfNodesByClass("vtkMRMLMarkupsFiducialNode") == 1


def test_rgb_volume_is_converted_to_grey(logic, scene, phantom):
    rgb = np.repeat((phantom.image * 255).astype(np.uint8)[..., None], 3, axis=-1)
    volume = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "colour")
    volume.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(np.diag([-1.0, -1.0, 1.0, 1.0])))
    slicer.util.updateVolumeFromArray(volume, rgb[np.newaxis])
    node = logic.detect(volume)
    assert node.GetNumberOfControlPoints() == K


def test_the_sample_data_phantom_is_a_one_slice_radiograph_the_model_runs_on(logic, scene):
    volume = add_phantom_volume(scene, seed=4)
    assert volume.GetName() == PHANTOM_VOLUME_NAME
    assert volume.GetImageData().GetDimensions() == (512, 1024, 1)
    assert volume.GetSpacing()[0] == pytest.approx(volume.GetSpacing()[1])
    np.testing.assert_allclose(slicer.util.arrayFromVolume(volume)[0], make_spine_phantom(4).image, atol=1e-6)
    assert logic.detect(volume).GetNumberOfControlPoints() == K


def test_multi_slice_volume_is_refused(logic, scene):
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "ct")
    slicer.util.updateVolumeFromArray(volume, np.random.default_rng(0).random((3, 64, 32)).astype(np.float32))
    with pytest.raises(ImageError, match="3 slices"):
        logic.detect(volume)
    assert scene.GetNumberOfNodesByClass("vtkMRMLMarkupsFiducialNode") == 0


# ---------------------------------------------------------------------------- drag


def test_drag_fixes_the_point_and_moves_only_unfixed_points(logic, volume):
    node = logic.detect(volume)
    before = control_point_positions(node)

    target = pixel_target(node, volume, 10, (6.0, -5.0))
    drag(node, 10, target)
    after_first = control_point_positions(node)
    np.testing.assert_allclose(after_first[10], target, atol=1e-9)
    others = np.delete(np.arange(K), 10)
    assert moved(after_first[others], before[others], tol=0.5).sum() >= K // 4
    assert point_states(node)[0][10] == "user-fixed"
    assert node.GetNthControlPointSelected(10) and not node.GetNthControlPointSelected(11)
    assert node.GetNthControlPointDescription(10) == "user-fixed"

    target2 = pixel_target(node, volume, 40, (-4.0, 7.5))
    drag(node, 40, target2)
    after_second = control_point_positions(node)
    np.testing.assert_allclose(after_second[40], target2, atol=1e-9)
    np.testing.assert_allclose(after_second[10], after_first[10], atol=1e-9)  # still fixed
    unfixed = np.delete(np.arange(K), [10, 40])
    assert moved(after_second[unfixed], after_first[unfixed], tol=0.5).any()
    # what MRML shows is what the model said, for every point
    np.testing.assert_allclose(
        after_second, pixels_to_ras(logic.prediction(node).points, ijk_to_ras_matrix(volume)), atol=1e-9
    )


def click(node, k):
    """Press and release on point k without moving: the widget still sends Start/End."""
    node.GetDisplayNode().SetActiveControlPoint(k)
    node.InvokeEvent(MARKUPS.PointStartInteractionEvent)
    node.InvokeEvent(MARKUPS.PointEndInteractionEvent)


def test_a_plain_click_neither_fixes_the_point_nor_runs_the_model(logic, volume):
    node = logic.detect(volume)
    before = control_point_positions(node)
    descriptions = [node.GetNthControlPointDescription(k) for k in range(K)]
    runner = HeldRunner()
    logic.runner = runner
    click(node, 12)
    assert runner.jobs == []  # nothing submitted
    assert point_states(node)[0] == ["predicted"] * K
    assert [node.GetNthControlPointDescription(k) for k in range(K)] == descriptions
    assert not logic.can_undo(node)
    np.testing.assert_allclose(control_point_positions(node), before, atol=1e-9)
    # a real move right after is still a correction
    drag(node, 12, pixel_target(node, volume, 12, (5.0, 0.0)))
    assert len(runner.jobs) == 1 and point_states(node)[0][12] == "user-fixed"


def test_the_number_of_points_is_locked_and_unlocked_only_for_a_rewrite(logic, volume, scene):
    # a list of the user's with another count, already locked: detect rewrites it
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "phantom keypoints")
    for k in range(3):
        node.AddControlPoint(float(k), 0.0, 0.0, f"P{k}")
    node.SetFixedNumberOfControlPoints(True)
    assert logic.detect(volume, node) is node
    assert node.GetNumberOfControlPoints() == K
    assert node.GetFixedNumberOfControlPoints()
    # the place toolbar and the context menu go through these calls: refused by MRML
    assert node.AddControlPoint(0.0, 0.0, 0.0, "extra") < 0
    node.RemoveNthControlPoint(3)
    assert node.GetNumberOfControlPoints() == K
    assert [node.GetNthControlPointLabel(k) for k in range(K)] == SPINE_LANDMARK_NAMES
    drag(node, 20, pixel_target(node, volume, 20, (4.0, 4.0)))  # moving is still allowed
    assert point_states(node)[0][20] == "user-fixed"


def test_undo_restores_every_point_and_redo_reapplies(logic, volume):
    node = logic.detect(volume)
    initial = control_point_positions(node)
    drag(node, 5, pixel_target(node, volume, 5, (5.0, 5.0)))
    after_one = control_point_positions(node)
    drag(node, 30, pixel_target(node, volume, 30, (-5.0, 3.0)))
    after_two = control_point_positions(node)

    logic.undo(node)
    np.testing.assert_allclose(control_point_positions(node), after_one, atol=1e-9)
    assert point_states(node)[0][30] == "predicted" and point_states(node)[0][5] == "user-fixed"
    logic.undo(node)
    np.testing.assert_allclose(control_point_positions(node), initial, atol=1e-9)
    assert point_states(node)[0] == ["predicted"] * K
    assert not logic.can_undo(node)
    logic.redo(node)
    logic.redo(node)
    np.testing.assert_allclose(control_point_positions(node), after_two, atol=1e-9)


def test_unfix_and_reset(logic, volume):
    node = logic.detect(volume)
    initial = control_point_positions(node)
    drag(node, 7, pixel_target(node, volume, 7, (8.0, 0.0)))
    drag(node, 8, pixel_target(node, volume, 8, (0.0, 8.0)))
    logic.unfix(node, [7])
    states = point_states(node)[0]
    assert states[7] == "predicted" and states[8] == "user-fixed"
    logic.reset(node)
    np.testing.assert_allclose(control_point_positions(node), initial, atol=1e-9)
    assert point_states(node)[0] == ["predicted"] * K
    logic.undo(node)  # reset is undoable
    assert point_states(node)[0][8] == "user-fixed"


def test_drag_outside_the_image_is_refused_without_damage(logic, volume, errors):
    node = logic.detect(volume)
    drag(node, 3, pixel_target(node, volume, 3, (4.0, 4.0)))
    before = control_point_positions(node)
    descriptions = [node.GetNthControlPointDescription(k) for k in range(K)]

    drag(node, 12, pixel_target(node, volume, 12, (500.0, 0.0), inside=False))  # far right of the 128 px image

    np.testing.assert_allclose(control_point_positions(node), before, atol=1e-9)
    assert [node.GetNthControlPointDescription(k) for k in range(K)] == descriptions
    assert len(errors) == 1 and "outside" in errors[0] and "T4-top-left" in errors[0]
    logic.undo(node)  # the history holds only the good drag
    assert point_states(node)[0] == ["predicted"] * K


def test_a_drag_beyond_the_propagation_limit_is_kept_moves_no_other_point_and_is_reported(scene, volume, errors):
    limited = tiny_model(correction_length=0.1, propagation_limit=0.3)
    logic = KeypointsMRMLLogic(scene=scene, model=limited, device="cpu")
    logic.on_error = errors.append
    node = logic.detect(volume)
    initial = control_point_positions(node)
    session = logic.lists.get(node).attached_session
    first = session.network_points
    corners = np.array([[2.0, 2.0], [125.0, 2.0], [2.0, 253.0], [125.0, 253.0]])
    far = corners[np.argmax(np.linalg.norm(corners - first[12], axis=1))]
    assert np.linalg.norm(far - first[12]) > 0.3 * landmark_extent(first)

    drag(node, 12, pixel_target(node, volume, 12, far - first[12]))

    positions = control_point_positions(node)
    others = np.arange(K) != 12
    np.testing.assert_allclose(positions[others], initial[others], atol=1e-9)  # nothing followed
    assert point_states(node)[0][12] == "user-fixed"
    assert len(errors) == 1 and "T4-top-left" in errors[0] and "moved no other point" in errors[0]
    drag(node, 20, pixel_target(node, volume, 20, (0.0, 4.0)))  # a small drag propagates, unreported
    free = others & (np.arange(K) != 20)
    assert np.abs(control_point_positions(node)[free] - positions[free]).max() > 0
    assert len(errors) == 1


def test_console_refine_outside_raises_and_changes_nothing(logic, volume):
    node = logic.detect(volume)
    before = control_point_positions(node)
    with pytest.raises(ValueError, match="outside"):
        logic.refine(node, {0: pixel_target(node, volume, 0, (0.0, -400.0), inside=False)})
    np.testing.assert_allclose(control_point_positions(node), before, atol=1e-9)
    target = pixel_target(node, volume, 0, (2.0, 2.0))
    logic.refine(node, {0: target})
    np.testing.assert_allclose(control_point_positions(node)[0], target, atol=1e-9)
    assert point_states(node)[0][0] == "user-fixed"


# --------------------------------------------------------------- drag during inference


def test_drag_during_inference_is_queued_and_the_latest_drop_wins(logic, volume):
    node = logic.detect(volume)
    runner = HeldRunner()
    logic.runner = runner

    first = pixel_target(node, volume, 20, (5.0, 0.0))
    drag(node, 20, first)
    assert logic.is_busy(node) and len(runner.jobs) == 1

    # two drops of point 50 while the model runs: neither starts a run, the last one counts
    drag(node, 50, pixel_target(node, volume, 50, (0.0, 9.0)))
    second = pixel_target(node, volume, 50, (-6.0, 4.0))
    drag(node, 50, second)
    assert len(runner.jobs) == 1
    assert point_states(node)[0][50] == "user-fixed"

    runner.run_next()  # first run ends; the queued drop must not be overwritten by its result
    np.testing.assert_allclose(control_point_positions(node)[50], second, atol=1e-9)
    assert len(runner.jobs) == 1 and logic.is_busy(node)  # the queued drop runs next

    runner.run_next()
    assert not logic.is_busy(node) and not runner.jobs
    positions = control_point_positions(node)
    np.testing.assert_allclose(positions[20], first, atol=1e-9)
    np.testing.assert_allclose(positions[50], second, atol=1e-9)
    prediction = logic.prediction(node)
    assert prediction.fixed[20] and prediction.fixed[50]


def test_refine_while_dragging_previews_and_counts_as_one_undo_step(logic, volume):
    node = logic.detect(volume)
    logic.refine_while_dragging = True
    initial = control_point_positions(node)
    path = [pixel_target(node, volume, 44, (dx, dx / 2)) for dx in (2.0, 4.0, 6.0)]

    node.GetDisplayNode().SetActiveControlPoint(44)
    node.InvokeEvent(MARKUPS.PointStartInteractionEvent)
    node.SetNthControlPointPosition(44, *path[0])  # mouse moves: PointModifiedEvent(44)
    during = control_point_positions(node)
    np.testing.assert_allclose(during[44], path[0], atol=1e-9)  # the dragged point follows the mouse
    assert moved(np.delete(during, 44, 0), np.delete(initial, 44, 0), tol=0.5).any()  # preview
    for ras in path[1:]:
        node.SetNthControlPointPosition(44, *ras)
    node.InvokeEvent(MARKUPS.PointEndInteractionEvent)

    np.testing.assert_allclose(control_point_positions(node)[44], path[-1], atol=1e-9)
    assert logic.prediction(node).fixed.sum() == 1
    logic.undo(node)  # previews are not separate steps
    np.testing.assert_allclose(control_point_positions(node), initial, atol=1e-9)
    assert not logic.can_undo(node)


def test_console_calls_while_busy_are_refused(logic, volume):
    node = logic.detect(volume)
    logic.runner = HeldRunner()
    drag(node, 1, pixel_target(node, volume, 1, (3.0, 3.0)))
    with pytest.raises(LogicBusyError):
        logic.undo(node)


def test_auto_refine_off_queues_drops_until_update(logic, volume):
    node = logic.detect(volume)
    logic.auto_refine = False
    before = control_point_positions(node)
    target = pixel_target(node, volume, 15, (4.0, -4.0))
    drag(node, 15, target)
    positions = control_point_positions(node)
    np.testing.assert_allclose(positions[15], target, atol=1e-9)
    np.testing.assert_allclose(np.delete(positions, 15, 0), np.delete(before, 15, 0), atol=1e-9)
    assert point_states(node)[0][15] == "user-fixed"

    logic.undo(node)  # an un-run drop is undone by putting the point back
    np.testing.assert_allclose(control_point_positions(node), before, atol=1e-9)
    assert point_states(node)[0][15] == "predicted"

    drag(node, 15, target)
    logic.update(node, blocking=True)
    after = control_point_positions(node)
    np.testing.assert_allclose(after[15], target, atol=1e-9)
    assert moved(np.delete(after, 15, 0), np.delete(before, 15, 0), tol=0.5).any()


def test_threaded_runner_applies_results_on_poll(logic, volume):
    node = logic.detect(volume)
    runner = ThreadedRunner()
    logic.runner = runner
    try:
        target = pixel_target(node, volume, 25, (3.0, 6.0))
        drag(node, 25, target)
        while logic.is_busy(node):  # the GUI polls from a QTimer
            runner.poll()
        np.testing.assert_allclose(control_point_positions(node)[25], target, atol=1e-9)
        assert logic.prediction(node).fixed[25]
        assert logic.latency(node) is not None
    finally:
        runner.shutdown()


def test_poll_with_wait_hands_the_gil_to_the_worker_until_a_result_arrives():
    """Slicer's idle main loop holds the GIL: the poll timer must wait in Python (GIL
    released) for the worker, and return as soon as the result is there."""
    runner = ThreadedRunner()
    finished, worker_threads = [], []

    def compute():
        worker_threads.append(threading.current_thread())
        time.sleep(0.05)  # a model run that needs the GIL back now and then
        return "result"

    try:
        assert runner.poll(wait=0.5) == 0  # nothing in flight: returns at once
        runner(compute, finished.append)
        assert runner.poll(wait=60.0) == 1  # one call: waited for the worker, then finished
        assert finished == ["result"] and not runner.busy
        assert worker_threads[0] is not threading.main_thread()
    finally:
        runner.shutdown()


def test_each_correction_logs_the_time_the_user_waited(logic, volume, caplog):
    node = logic.detect(volume)
    runner = ThreadedRunner()
    logic.runner = runner
    try:
        with caplog.at_level("INFO", logger="interactive_keypoints.mrml_logic"):
            drag(node, 30, pixel_target(node, volume, 30, (4.0, -3.0)))
            while logic.is_busy(node):
                runner.poll(wait=0.02)
        timings = [r.getMessage() for r in caplog.records if "from request to display" in r.getMessage()]
        assert len(timings) == 1 and timings[0].startswith("phantom keypoints: correction: model ")
        assert logic.latency(node) > 0
    finally:
        runner.shutdown()


def test_non_blocking_detect_loads_the_model_and_encodes_off_the_main_thread(scene, model, volume, monkeypatch):
    loaded_on = []

    def load_model(folder, device=None):
        loaded_on.append(threading.current_thread())
        return model

    monkeypatch.setattr(model_io, "load_model", load_model)
    release, encoded_on = gate_off_main_thread(monkeypatch, Predictor, "encode_image")
    logic = KeypointsMRMLLogic(scene=scene, model_folder="a model folder", device="cpu")  # not loaded yet
    runner = ThreadedRunner()
    logic.runner = runner
    try:
        node = logic.detect(volume, blocking=False)
        # returned while the image encoder is still held: nothing written yet
        assert logic.is_busy(node) and node.GetNumberOfControlPoints() == 0
        release.set()
        poll_until_idle(runner, logic, node)
        assert node.GetNumberOfControlPoints() == K
        np.testing.assert_allclose(
            control_point_positions(node),
            pixels_to_ras(logic.prediction(node).points, ijk_to_ras_matrix(volume)),
            atol=1e-9,
        )
        main = threading.main_thread()
        assert len(loaded_on) == 1 and loaded_on[0] is not main
        assert len(encoded_on) == 1 and encoded_on[0] is not main
    finally:
        runner.shutdown()


def test_non_blocking_unfix_runs_on_the_runner(logic, volume, monkeypatch):
    node = logic.detect(volume)
    drag(node, 7, pixel_target(node, volume, 7, (8.0, 0.0)))
    drag(node, 8, pixel_target(node, volume, 8, (0.0, 8.0)))
    before = control_point_positions(node)
    release, ran_on = gate_off_main_thread(monkeypatch, Predictor, "logits")
    runner = ThreadedRunner()
    logic.runner = runner
    try:
        logic.unfix(node, [7], blocking=False)
        # returned while the model is held: point 7 is still shown as the user left it
        assert logic.is_busy(node)
        assert point_states(node)[0][7] == "user-fixed"
        np.testing.assert_allclose(control_point_positions(node), before, atol=1e-9)
        with pytest.raises(LogicBusyError):
            logic.reset(node)
        release.set()
        poll_until_idle(runner, logic, node)
        states = point_states(node)[0]
        assert states[7] == "predicted" and states[8] == "user-fixed"
        prediction = logic.prediction(node)
        assert not prediction.fixed[7] and prediction.fixed[8]
        np.testing.assert_allclose(
            control_point_positions(node), pixels_to_ras(prediction.points, ijk_to_ras_matrix(volume)), atol=1e-9
        )
        assert len(ran_on) == 1 and ran_on[0] is not threading.main_thread()
    finally:
        runner.shutdown()


def test_model_that_cannot_load_is_reported_without_blocking(scene, volume, errors, monkeypatch):
    def load_model(folder, device=None):
        raise ModelFormatError(f"model folder {folder} does not exist")

    monkeypatch.setattr(model_io, "load_model", load_model)
    logic = KeypointsMRMLLogic(scene=scene, model_folder="/nowhere", device="cpu")
    logic.on_error = errors.append
    with pytest.raises(ModelFormatError, match="/nowhere"):  # console: raised
        logic.detect(volume)
    runner = HeldRunner()
    logic.runner = runner
    node = logic.detect(volume, blocking=False)  # GUI: returns, the error comes via on_error
    assert not errors
    runner.run_next()
    assert len(errors) == 1 and "/nowhere" in errors[0]
    assert not logic.is_busy(node) and node.GetNumberOfControlPoints() == 0


def test_failed_background_runs_are_told_apart_from_refused_drops(scene, logic, volume, errors, monkeypatch):
    """on_run_failed (the GUI's error dialog) gets a failed model run, not a refused drop."""
    run_failures = []
    logic.on_run_failed = run_failures.append
    node = logic.detect(volume)
    drag(node, 5, (1000.0, 1000.0, 0.0))  # outside: refused, reported through on_error only
    assert len(errors) == 1 and run_failures == []

    flat = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "flat")
    slicer.util.updateVolumeFromArray(flat, np.zeros((1, 64, 32), np.float32))
    runner = HeldRunner()
    logic.runner = runner
    logic.detect(flat, blocking=False)  # the image is checked on the runner
    runner.run_next()
    assert len(run_failures) == 1 and "same value" in run_failures[0] and run_failures[0] == errors[-1]


# -------------------------------------------------------------------------- export


def read_markups(path):
    scene = make_scene()
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    storage = scene.AddNewNodeByClass("vtkMRMLMarkupsJsonStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    return node


def test_mrk_json_round_trip_keeps_labels_states_and_positions(logic, volume, tmp_path):
    node = logic.detect(volume)
    drag(node, 9, pixel_target(node, volume, 9, (3.5, -2.25)))
    path = logic.export(node, tmp_path / "case.mrk.json")

    document = json.loads(path.read_text())
    markup = document["markups"][0]
    assert markup["coordinateSystem"] == "LPS"
    ras = control_point_positions(node)
    np.testing.assert_allclose(markup["controlPoints"][9]["position"], ras[9] * [-1, -1, 1], atol=1e-6)

    loaded = read_markups(path)
    assert [loaded.GetNthControlPointLabel(k) for k in range(K)] == SPINE_LANDMARK_NAMES
    assert point_states(loaded)[0] == point_states(node)[0]
    assert point_states(loaded)[0][9] == "user-fixed"
    assert loaded.GetNthControlPointSelected(9) and not loaded.GetNthControlPointSelected(10)
    np.testing.assert_allclose(control_point_positions(loaded), ras, atol=1e-6)


def test_csv_export_has_pixels_mm_state_and_confidence(logic, volume, phantom, tmp_path):
    node = logic.detect(volume)
    drag(node, 2, pixel_target(node, volume, 2, (1.0, 1.0)))
    path = logic.export(node, tmp_path / "case.csv")
    rows = list(csv.DictReader(path.open()))
    assert list(rows[0]) == ["name", "x_px", "y_px", "x_mm", "y_mm", "state", "confidence", "spacing"]
    assert rows[0]["spacing"] == f"{phantom.spacing[0]:g} x {phantom.spacing[1]:g} mm per pixel from the user"
    assert [r["name"] for r in rows] == SPINE_LANDMARK_NAMES
    points = logic.prediction(node).points
    np.testing.assert_allclose([[float(r["x_px"]), float(r["y_px"])] for r in rows], points, atol=1e-3)
    np.testing.assert_allclose(float(rows[0]["x_mm"]), points[0, 0] * phantom.spacing[0], atol=1e-3)
    assert rows[2]["state"] == "user-fixed" and rows[3]["state"] == "predicted"
    assert 0.0 <= float(rows[3]["confidence"]) <= 1.0


def test_low_confidence_points_are_flagged(logic, volume):
    node = logic.detect(volume)
    confidence = logic.prediction(node).confidence
    threshold = float(np.median(confidence))
    logic.set_low_confidence(threshold)
    flagged = ["low confidence" in node.GetNthControlPointDescription(k) for k in range(K)]
    assert flagged == list(confidence < threshold)
    assert 0 < sum(flagged) < K


def test_export_refuses_unknown_extensions(logic, volume, tmp_path):
    node = logic.detect(volume)
    with pytest.raises(ValueError, match=".mrk.json or .csv"):
        logic.export(node, tmp_path / "case.txt")


def test_attach_to_a_reloaded_list_keeps_its_fixed_points(logic, volume, scene, tmp_path):
    node = logic.detect(volume)
    target = pixel_target(node, volume, 33, (5.0, 5.0))
    drag(node, 33, target)
    path = logic.export(node, tmp_path / "case.mrk.json")

    reloaded = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "reloaded")
    reloaded.CreateDefaultDisplayNodes()
    storage = scene.AddNewNodeByClass("vtkMRMLMarkupsJsonStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(reloaded)
    logic.attach(reloaded, volume)
    np.testing.assert_allclose(control_point_positions(reloaded)[33], target, atol=1e-6)
    assert point_states(reloaded)[0][33] == "user-fixed"
    drag(reloaded, 34, pixel_target(reloaded, volume, 34, (2.0, 2.0)))  # it listens to drags
    assert point_states(reloaded)[0][34] == "user-fixed"
    np.testing.assert_allclose(control_point_positions(reloaded)[33], target, atol=1e-6)


def test_non_blocking_attach_leaves_the_weights_to_the_worker(logic, model, volume, scene, tmp_path, monkeypatch):
    # re-opening a saved case in the GUI: the count check reads model.json only
    node = logic.detect(volume)
    drag(node, 12, pixel_target(node, volume, 12, (4.0, -3.0)))
    path = logic.export(node, tmp_path / "case.mrk.json")
    folder = tmp_path / "model"
    save_model(folder, model)
    loaded_on = []

    def load_model(folder, device=None):
        loaded_on.append(threading.current_thread())
        return model

    monkeypatch.setattr(model_io, "load_model", load_model)

    reopened = KeypointsMRMLLogic(scene=scene, model_folder=folder, device="cpu")
    reopened.runner = runner = HeldRunner()
    reloaded = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "reloaded")
    storage = scene.AddNewNodeByClass("vtkMRMLMarkupsJsonStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(reloaded)
    reopened.attach(reloaded, volume, blocking=False)
    assert loaded_on == [] and reopened.is_busy(reloaded)
    runner.run_next()
    assert len(loaded_on) == 1 and point_states(reloaded)[0][12] == "user-fixed"

    assert reloaded.GetFixedNumberOfControlPoints()  # the lock is saved in .mrk.json
    reloaded.SetFixedNumberOfControlPoints(False)  # a list edited elsewhere: one point short
    reloaded.RemoveNthControlPoint(0)
    reopened.detach(reloaded)
    with pytest.raises(ValueError, match=f"has {K - 1} points but the model places {K}"):
        reopened.attach(reloaded, volume, blocking=False)


# --------------------------------------------------------------------------- batch


def test_process_folder_writes_results_and_reports_bad_files(logic, scene, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for seed in (1, 2):
        image = (make_spine_phantom(seed, height=256, width=128).image * 255).astype(np.uint8)
        sitk.WriteImage(sitk.GetImageFromArray(image), str(inputs / f"case{seed}.png"))
    (inputs / "broken.png").write_bytes(b"not a png")
    (inputs / "notes.txt").write_text("not an image")

    users_list = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "case1 keypoints")
    results = logic.process_folder(inputs, tmp_path / "out")

    by_name = {r["input"].split("/")[-1]: r for r in results}
    assert set(by_name) == {"broken.png", "case1.png", "case2.png"}
    assert "error" in by_name["broken.png"] and "broken.png" in by_name["broken.png"]["error"]
    for name in ("case1", "case2"):
        assert (tmp_path / "out" / f"{name}.mrk.json").is_file()
        rows = list(csv.DictReader((tmp_path / "out" / f"{name}.csv").open()))
        assert len(rows) == K
    # nothing left behind in the scene, and nothing of the user's removed
    assert scene.GetNumberOfNodesByClass("vtkMRMLMarkupsFiducialNode") == 1
    assert scene.GetNodeByID(users_list.GetID()) is users_list
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 0


# -------------------------------------------------------------------- node removal


def test_a_point_list_deleted_by_the_user_releases_its_session(logic, volume, scene, errors):
    node = logic.detect(volume)
    other = logic.detect(volume, logic.new_point_list("second"))
    scene.RemoveNode(node)
    assert not logic.is_tracked(node) and logic.is_tracked(other)
    assert not node.HasObserver(MARKUPS.PointEndInteractionEvent)
    assert not node.HasObserver(MARKUPS.PointModifiedEvent)

    # removed while the model runs on it: the late result is dropped, nothing reported
    runner = HeldRunner()
    logic.runner = runner
    drag(other, 5, pixel_target(other, volume, 5, (3.0, 3.0)))
    assert logic.is_busy(other)
    scene.RemoveNode(other)
    assert not logic.is_tracked(other)
    runner.run_next()
    assert errors == []


# ------------------------------------------------------------- GUI thread, no torch

GUI_THREAD_SCRIPT = """
import json, sys
import numpy as np
import slicer, slicer.util
from interactive_keypoints.mrml_logic import KeypointsMRMLLogic, control_point_positions

scene = slicer.vtkMRMLScene()
app_logic = slicer.vtkSlicerApplicationLogic()
app_logic.SetMRMLScene(scene)
markups_logic = slicer.vtkSlicerMarkupsLogic()
markups_logic.SetMRMLApplicationLogic(app_logic)
markups_logic.SetMRMLScene(scene)
volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "radiograph")
pixels = np.random.default_rng(0).random((1, 256, 128)).astype(np.float32)
slicer.util.updateVolumeFromArray(volume, pixels)

jobs = []
logic = KeypointsMRMLLogic(scene=scene, model_folder=sys.argv[1], device="cpu")
logic.runner = lambda compute, finish: jobs.append((compute, finish))  # the worker, held
node = logic.detect(volume, blocking=False)
torch_on_gui_thread = "torch" in sys.modules
compute, finish = jobs.pop()
finish(compute())  # what the worker and the poll timer do
print(json.dumps({"torch_on_gui_thread": torch_on_gui_thread, "points": node.GetNumberOfControlPoints()}))
"""


def test_first_non_blocking_detect_does_not_import_torch_on_the_calling_thread(model, tmp_path):
    """A fresh interpreter (the GUI thread of a new Slicer session): detect(blocking=False)
    returns before anything imports torch; the model load and image conversion run in the job."""
    import os
    import subprocess
    import sys

    save_model(tmp_path / "model", model)
    out = subprocess.run(
        [sys.executable, "-c", GUI_THREAD_SCRIPT, str(tmp_path / "model")],
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"torch_on_gui_thread": False, "points": K}


def write_phantom_images(folder, seeds):
    folder.mkdir()
    for seed in seeds:
        image = (make_spine_phantom(seed, height=256, width=128).image * 255).astype(np.uint8)
        sitk.WriteImage(sitk.GetImageFromArray(image), str(folder / f"case{seed}.png"))


def test_process_folder_reports_progress_while_the_model_runs_off_the_calling_thread(
    logic, scene, tmp_path, monkeypatch
):
    """The GUI's progress callback runs on the calling thread while an image's model runs
    on the worker: here the worker is held until the callback has been called meanwhile."""
    write_phantom_images(tmp_path / "in", (1, 2))
    held, encoded_on, calls = threading.Event(), [], []
    original = Predictor.encode_image

    def encode_image(*args, **kwargs):
        encoded_on.append(threading.current_thread())
        assert held.wait(timeout=60), "the progress callback was not called while the model ran"
        held.clear()
        return original(*args, **kwargs)

    monkeypatch.setattr(Predictor, "encode_image", encode_image)

    def progress(done, total, name):
        calls.append((done, total, name, threading.current_thread()))
        if len(encoded_on) > done:  # the model of image ``done`` is running on the worker
            held.set()

    results = logic.process_folder(tmp_path / "in", tmp_path / "out", progress=progress)
    assert [r.get("error") for r in results] == [None, None]
    assert {(d, n) for d, _, n, _ in calls} >= {(0, "case1.png"), (1, "case2.png"), (2, "")}
    assert all(t is threading.main_thread() for *_, t in calls)
    assert len(encoded_on) == 2 and all(t is not threading.main_thread() for t in encoded_on)
    assert (tmp_path / "out" / "case2.csv").is_file()


def test_process_folder_can_be_cancelled_between_images(logic, scene, tmp_path):
    write_phantom_images(tmp_path / "in", (1, 2, 3))
    results = logic.process_folder(tmp_path / "in", tmp_path / "out", progress=lambda done, total, name: done < 1)
    assert "outputs" in results[0]
    assert [r.get("cancelled") for r in results] == [None, True, True]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["case1.csv", "case1.mrk.json"]
    assert scene.GetNumberOfNodesByClass("vtkMRMLMarkupsFiducialNode") == 0
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 0


# -------------------------------------------------------------------- measurements


@pytest.fixture
def cobb_logic(scene, model, errors):
    """The same tiny network, its model.json naming the AASCE Cobb angles."""
    import dataclasses

    cobb_model = model_io.KeypointModel(dataclasses.replace(model.config, measurements="aasce-cobb"), model.network)
    logic = KeypointsMRMLLogic(scene=scene, model=cobb_model, device="cpu")
    logic.on_error = errors.append
    return logic


def table_rows(table):
    return [
        [table.GetCellText(r, c) for c in range(table.GetNumberOfColumns())] for r in range(table.GetNumberOfRows())
    ]


def test_measurements_table_follows_drags_undo_and_redo(cobb_logic, volume):
    from interactive_keypoints.measurements import cobb_angles

    logic = cobb_logic
    node = logic.detect(volume)
    table = logic.measurement_table(node)
    assert table.IsA("vtkMRMLTableNode") and node.GetNodeReference("InteractiveKeypoints.Measurements") is table
    assert [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())] == [
        "Measurement",
        "Value",
        "Unit",
        "Class",
        "Landmarks",
    ]
    initial = table_rows(table)
    assert [row[0] for row in initial] == ["Cobb MT", "Cobb PT", "Cobb TL"] and initial[0][2] == "deg"
    # the table holds what the engine computes from the model's points
    height = volume.GetImageData().GetDimensions()[1]
    expected = cobb_angles(logic.prediction(node).points, volume.GetSpacing()[:2], image_height=height)
    assert [float(row[1]) for row in initial] == pytest.approx([m.value for m in expected], abs=0.05)
    assert [m.value for m in logic.measurements(node)] == pytest.approx([m.value for m in expected], abs=1e-6)
    assert initial[0][4].split(", ") == [SPINE_LANDMARK_NAMES[k] for k in expected[0].landmarks]

    major_corner = expected[0].landmarks[1]  # a right corner of the major curve's upper vertebra
    drag(node, major_corner, pixel_target(node, volume, major_corner, (0.0, -12.0)))
    after_drag = table_rows(table)
    assert after_drag != initial
    assert [m.value for m in logic.measurements(node)] == pytest.approx([float(r[1]) for r in after_drag], abs=0.05)
    logic.undo(node)
    assert table_rows(table) == initial
    logic.redo(node)
    assert table_rows(table) == after_drag
    assert logic.measurement_table(node) is table  # one table per list, updated in place


def test_selected_measurement_is_drawn_as_lines_that_follow_the_points(cobb_logic, volume, scene):
    logic = cobb_logic
    node = logic.detect(volume)
    logic.select_measurement(node, "Cobb MT")
    lines = logic.measurement_lines(node)
    assert len(lines) == 2 and all(line.IsA("vtkMRMLMarkupsLineNode") and line.GetLocked() for line in lines)

    def drawn():
        m = ijk_to_ras_matrix(volume)
        return [ras_to_pixels(control_point_positions(line), m) for line in logic.measurement_lines(node)]

    record = logic.measurements(node)[0]
    np.testing.assert_allclose(drawn(), np.array(record.lines), atol=1e-6)
    before = drawn()
    k = record.landmarks[0]
    drag(node, k, pixel_target(node, volume, k, (0.0, 10.0)))
    np.testing.assert_allclose(drawn(), np.array(logic.measurements(node)[0].lines), atol=1e-6)
    assert not np.allclose(drawn(), before)
    with pytest.raises(ValueError, match="no measurement 'SNA'"):
        logic.select_measurement(node, "SNA")
    logic.select_measurement(node, "")
    assert logic.measurement_lines(node) == [] and scene.GetNumberOfNodesByClass("vtkMRMLMarkupsLineNode") == 0


def test_export_writes_the_measurements_next_to_the_points(cobb_logic, volume, tmp_path):
    logic = cobb_logic
    node = logic.detect(volume)
    logic.export(node, tmp_path / "case.mrk.json")
    data = json.loads((tmp_path / "case.measurements.json").read_text())
    assert data["measurement_set"] == "aasce-cobb"
    assert [m["value"] for m in data["measurements"]] == pytest.approx([m.value for m in logic.measurements(node)])
    rows = list(csv.DictReader(open(tmp_path / "case.measurements.csv")))
    assert [r["name"] for r in rows] == ["Cobb MT", "Cobb PT", "Cobb TL"]


def test_a_model_without_a_measurement_set_shows_none(logic, volume, tmp_path):
    node = logic.detect(volume)
    assert logic.measurement_table(node) is None and logic.measurements(node) == []
    logic.export(node, tmp_path / "case.mrk.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case.mrk.json"]


def test_measurements_of_points_given_as_pixels(cobb_logic, phantom, volume):
    from interactive_keypoints.measurements import cobb_angles

    height = volume.GetImageData().GetDimensions()[1]
    got = cobb_logic.measurements(phantom.points, volume)
    assert [m.value for m in got] == pytest.approx(
        [m.value for m in cobb_angles(phantom.points, volume.GetSpacing()[:2], height)]
    )


# ----------------------------------------------------------------- guided review


@pytest.fixture
def review_engine(monkeypatch):
    """The engine's ranking (interactive_keypoints.review, Prediction.review_score), built on
    the branch `guided`. Until it is merged a stand-in with the same names and meaning is
    installed here (lowest confidence first); with the engine present this does nothing."""
    try:
        from interactive_keypoints.review import rank_for_review
    except ImportError:
        import sys
        import types

        from interactive_keypoints.session import Prediction

        def rank_for_review(prediction):
            score = np.asarray(prediction.review_score, dtype=float)
            free = np.flatnonzero(~np.asarray(prediction.fixed, dtype=bool))
            return [int(k) for k in free[np.argsort(-score[free], kind="stable")]]

        stand_in = types.ModuleType("interactive_keypoints.review")
        stand_in.rank_for_review = rank_for_review
        monkeypatch.setitem(sys.modules, "interactive_keypoints.review", stand_in)
        if not hasattr(Prediction, "review_score"):
            monkeypatch.setattr(
                Prediction,
                "review_score",
                property(lambda p: np.where(p.fixed, -np.inf, 1.0 - np.asarray(p.confidence))),
                raising=False,
            )
    return rank_for_review


def test_next_point_is_the_top_ranked_unfixed_point_with_a_halo_in_the_views(logic, volume, review_engine):
    node = logic.detect(volume)
    ranking = review_engine(logic.prediction(node))
    k = logic.next_point(node)
    assert k == ranking[0] and logic.suggested_point(node) == k
    scores = logic.review_scores(node)
    assert scores[k] == scores.max() and np.isfinite(scores).all()
    assert logic.review_order(node) == ranking  # nothing fixed yet: every point, ranked

    marker = logic.next_point_marker(node)
    assert marker is not None and marker.GetNumberOfControlPoints() == 1
    np.testing.assert_allclose(control_point_positions(marker)[0], control_point_positions(node)[k], atol=1e-9)
    assert marker.GetLocked()  # not picked by the views: drags reach the point beneath
    display = marker.GetDisplayNode()
    assert display.GetGlyphType() == display.Circle2D and display.GetOpacity() < 1  # a halo, point visible
    assert display.GetColor() not in (node.GetDisplayNode().GetColor(), node.GetDisplayNode().GetSelectedColor())
    assert point_states(node)[0] == ["predicted"] * K  # the highlight is not a state change


def test_next_point_skips_points_the_user_fixed_or_dropped(logic, volume, review_engine):
    node = logic.detect(volume)
    first = logic.next_point(node)
    drag(node, first, pixel_target(node, volume, first, (3.0, 3.0)))  # the user corrects it
    assert logic.suggested_point(node) is None and logic.next_point_marker(node) is None
    second = logic.next_point(node)
    assert second != first
    assert second == review_engine(logic.prediction(node))[0]
    assert logic.review_order(node)[-1] == first and logic.review_scores(node)[first] == -np.inf

    runner = HeldRunner()  # the model is running: the rest are dropped and wait for it
    logic.runner = runner
    for k in range(K):
        logic.confirm(node, k, blocking=False)
    assert len(runner.jobs) == 1 and point_states(node)[0] == ["user-fixed"] * K
    assert logic.next_point(node) is None and logic.next_point_marker(node) is None
    assert np.isneginf(logic.review_scores(node)).all()


def test_confirm_fixes_the_point_where_it_is_and_undo_reverts_it(logic, volume, review_engine):
    node = logic.detect(volume)
    before = control_point_positions(node)
    k = logic.next_point(node)
    logic.confirm(node, k)

    prediction = logic.prediction(node)
    assert prediction.fixed[k] and prediction.fixed.sum() == 1  # the model ran with the confirm
    np.testing.assert_allclose(control_point_positions(node)[k], before[k], atol=1e-9)  # not moved
    assert point_states(node)[0][k] == "user-fixed" and node.GetNthControlPointSelected(k)
    assert logic.suggested_point(node) is None and logic.next_point_marker(node) is None
    logic.confirm(node, k)  # already fixed: nothing to do, no second undo step
    logic.undo(node)
    assert point_states(node)[0] == ["predicted"] * K
    np.testing.assert_allclose(control_point_positions(node), before, atol=1e-9)
    assert not logic.can_undo(node)


def test_confirm_while_the_model_runs_is_queued_like_a_drop(logic, volume, review_engine):
    node = logic.detect(volume)
    runner = HeldRunner()
    logic.runner = runner
    drag(node, 20, pixel_target(node, volume, 20, (5.0, 0.0)))
    assert logic.is_busy(node) and len(runner.jobs) == 1

    with pytest.raises(LogicBusyError):  # a console call cannot wait for the GUI's run
        logic.confirm(node, 40, blocking=True)
    assert point_states(node)[0][40] == "predicted"

    held = control_point_positions(node)[40]
    logic.confirm(node, 40, blocking=False)
    assert len(runner.jobs) == 1 and point_states(node)[0][40] == "user-fixed"
    runner.run_next()  # the drag's run ends: the queued confirm runs next, point 40 stays
    np.testing.assert_allclose(control_point_positions(node)[40], held, atol=1e-9)
    assert len(runner.jobs) == 1 and logic.is_busy(node)
    runner.run_next()
    prediction = logic.prediction(node)
    assert prediction.fixed[20] and prediction.fixed[40] and not logic.is_busy(node)
    np.testing.assert_allclose(control_point_positions(node)[40], held, atol=1e-9)


def test_confirm_of_a_point_that_is_not_a_landmark_is_refused(logic, volume):
    node = logic.detect(volume)
    with pytest.raises(ValueError, match=f"no landmark {K}"):
        logic.confirm(node, K)
    assert point_states(node)[0] == ["predicted"] * K and not logic.can_undo(node)


def test_jump_to_point_centres_the_slice_views_on_it(logic, volume, scene):
    node = logic.detect(volume)
    slice_node = scene.AddNewNodeByClass("vtkMRMLSliceNode")
    slice_node.SetLayoutName("Red")
    slice_node.SetOrientationToAxial()
    logic.jump_to_point(node, 30)
    centre = [slice_node.GetSliceToRAS().GetElement(i, 3) for i in range(3)]
    np.testing.assert_allclose(centre, control_point_positions(node)[30], atol=1e-6)
    with pytest.raises(ValueError, match="no point"):
        logic.jump_to_point(node, K)


# ------------------------------------------------------------------ DICOM radiographs


@pytest.fixture
def films(tmp_path):
    pytest.importorskip("pydicom", reason="pydicom writes the test's DICOM files (dev extra)")
    from radiographs import grey_image, write_radiograph_files

    return write_radiograph_files(tmp_path / "films", grey_image())


def exported_millimetres(logic, node, path):
    """(K, 2) mm and the spacing column of the list's CSV export."""
    rows = list(csv.DictReader(logic.export(node, path).open()))
    return np.array([[float(r["x_mm"]), float(r["y_mm"])] for r in rows]), rows[0]["spacing"]


def browser_millimetres(logic, scene, path, tmp_path, spacing=None):
    """The browser's loading path (web/app.py open_file): the engine reads the file, the logic
    gets a volume made from it."""
    volume = add_volume_from_radiograph(scene, load_radiograph(path, spacing=spacing), path.stem)
    return volume, *exported_millimetres(logic, logic.detect(volume), tmp_path / f"browser-{path.stem}.csv")


def test_dicom_loaded_by_slicers_dicom_module_gives_the_engines_millimetres(logic, scene, films, tmp_path, monkeypatch):
    """PNG (spacing given), MONOCHROME2 and MONOCHROME1 DICOM: the same landmarks in mm whether
    the browser/CLI loading reads the file or Slicer's DICOM module loads it for the module."""
    from radiographs import SPACING, DicomDatabase, load_like_slicers_dicom_plugin

    _, reference, spacing = browser_millimetres(logic, scene, films["png"], tmp_path, spacing=SPACING)
    assert spacing == "0.15 x 0.2 mm per pixel from the user"
    monkeypatch.setattr(slicer, "dicomDatabase", DicomDatabase(films["m2"], films["m1"]), raising=False)
    for key in ("m2", "m1"):
        _, browser_mm, browser_spacing = browser_millimetres(logic, scene, films[key], tmp_path)
        np.testing.assert_allclose(browser_mm, reference, atol=1e-3)
        volume = load_like_slicers_dicom_plugin(scene, films[key], f"slicer-{key}")
        assert volume.GetSpacing()[:2] == pytest.approx(SPACING)  # Slicer's reader: Imager Pixel Spacing
        node = logic.detect(volume)
        module_mm, module_spacing = exported_millimetres(logic, node, tmp_path / f"module-{key}.csv")
        np.testing.assert_allclose(module_mm, reference, atol=1e-3)
        assert module_spacing == browser_spacing
        assert module_spacing == "0.15 x 0.2 mm per pixel from Imager Pixel Spacing (0018,1164), at the detector"
        assert logic.spacing_description(node) == module_spacing


def test_dicom_added_as_a_file_gives_the_same_millimetres(logic, scene, films, tmp_path):
    """Add Data (a volume storage node reading the .dcm with Slicer's reader): same result."""
    from radiographs import SPACING

    _, reference, _ = browser_millimetres(logic, scene, films["png"], tmp_path, spacing=SPACING)
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "added")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(films["m1"]))
    volume.SetAndObserveStorageNodeID(storage.GetID())
    assert storage.ReadData(volume)
    mm, spacing = exported_millimetres(logic, logic.detect(volume), tmp_path / "added.csv")
    np.testing.assert_allclose(mm, reference, atol=1e-3)
    assert "Imager Pixel Spacing (0018,1164)" in spacing


def test_points_on_an_oriented_dicom_overlay_it_as_slicer_loads_it(logic, scene, films, tmp_path):
    """Defect E: a film with Image Orientation/Position (a coronal AP film): points detected
    on the engine's volume and exported, loaded next to the volume Slicer's reader makes of the
    same file, fall on the same pixels (IJK-to-RAS from origin, spacing and direction)."""
    from radiographs import POSITION, load_like_slicers_dicom_plugin

    engine_volume = add_volume_from_radiograph(scene, load_radiograph(films["m2"]), "engine")
    slicer_volume = load_like_slicers_dicom_plugin(scene, films["m2"], "slicer")
    np.testing.assert_allclose(ijk_to_ras_matrix(engine_volume), ijk_to_ras_matrix(slicer_volume), atol=1e-9)
    node = logic.detect(engine_volume)
    path = logic.export(node, tmp_path / "film.mrk.json")
    storage = scene.AddNewNodeByClass("vtkMRMLMarkupsJsonStorageNode")
    loaded = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "loaded")
    storage.SetFileName(str(path))
    loaded.SetAndObserveStorageNodeID(storage.GetID())
    assert storage.ReadData(loaded)
    pixels = ras_to_pixels(control_point_positions(loaded), ijk_to_ras_matrix(slicer_volume))
    np.testing.assert_allclose(pixels, logic.prediction(node).points, atol=1e-3)
    assert control_point_positions(loaded)[:, 1] == pytest.approx(-POSITION[1])  # RAS A = -LPS P: the film's plane


# ------------------------------------------------------- second reading (issue 26)


@pytest.fixture
def model_folders(tmp_path):
    """Two model folders: a spine model with Cobb angles and a ceph model with its analysis."""
    from interactive_keypoints.conventions import CEPH

    spine = tiny_model(measurements="aasce-cobb")
    ceph = tiny_model(landmark_names=CEPH.names, measurements="isbi-ceph")
    return save_model(tmp_path / "spine", spine), save_model(tmp_path / "ceph", ceph)


def test_a_list_keeps_its_model_when_another_model_is_chosen(scene, volume, model_folders, errors, tmp_path):
    """Defect A: drags, the table and Export of a list keep working with the model it was
    detected with after the panel switched to a model of other landmarks."""
    spine, ceph = model_folders
    logic = KeypointsMRMLLogic(scene=scene, model_folder=spine, device="cpu")
    logic.on_error = errors.append
    node = logic.detect(volume)
    logic.set_model(ceph)
    drag(node, 10, pixel_target(node, volume, 10, (6.0, -5.0)))
    assert not errors and logic.prediction(node).fixed[10]
    logic.export(node, tmp_path / "case.mrk.json")  # used to fail after writing the points
    records = json.loads((tmp_path / "case.measurements.json").read_text())
    assert records["measurement_set"] == "aasce-cobb"
    assert logic.measurement_set(node) == "aasce-cobb" and logic.measurement_set() == "isbi-ceph"
    assert [row[0] for row in table_rows(logic.measurement_table(node))] == ["Cobb MT", "Cobb PT", "Cobb TL"]
    # a new detection takes the chosen model
    other = logic.detect(volume, logic.new_point_list("ceph"))
    assert other.GetNumberOfControlPoints() == 19 and logic.measurement_set(other) == "isbi-ceph"


def test_detect_again_keeps_the_users_fixes(logic, volume):
    """Defect C: Detect on a corrected list re-runs the model around the user's fixes."""
    node = logic.detect(volume)
    target = pixel_target(node, volume, 10, (6.0, -5.0))
    drag(node, 10, target)
    assert logic.detect(volume) is node
    np.testing.assert_allclose(control_point_positions(node)[10], target, atol=1e-6)
    assert point_states(node)[0][10] == "user-fixed" and logic.prediction(node).fixed[10]
    assert sum(logic.prediction(node).fixed) == 1


def test_detect_with_a_model_of_other_landmarks_refuses_to_drop_fixes_unless_told(scene, volume, model_folders, errors):
    from interactive_keypoints.mrml_logic import FixesWouldBeLostError

    spine, ceph = model_folders
    logic = KeypointsMRMLLogic(scene=scene, model_folder=spine, device="cpu")
    node = logic.detect(volume)
    drag(node, 3, pixel_target(node, volume, 3, (4.0, 4.0)))
    logic.set_model(ceph)
    before = control_point_positions(node)
    with pytest.raises(FixesWouldBeLostError, match="1 user-fixed"):
        logic.detect(volume, blocking=False)
    np.testing.assert_allclose(control_point_positions(node), before)
    assert point_states(node)[0][3] == "user-fixed"
    assert logic.detect(volume, keep_fixes=False) is node and node.GetNumberOfControlPoints() == 19


def test_a_deleted_point_list_takes_its_halo_table_and_lines_with_it(cobb_logic, volume, scene, review_engine):
    """Defect D: nothing of a deleted list stays in the scene."""
    node = cobb_logic.detect(volume)
    cobb_logic.select_measurement(node, "Cobb MT")
    cobb_logic.next_point(node)
    owned = [
        cobb_logic.next_point_marker(node),
        cobb_logic.measurement_table(node),
        *cobb_logic.measurement_lines(node),
    ]
    assert all(item is not None for item in owned) and len(owned) >= 4
    owned += [item.GetDisplayNode() for item in owned if item.IsA("vtkMRMLDisplayableNode")]
    scene.RemoveNode(node)
    assert [item.GetID() for item in owned if scene.GetNodeByID(item.GetID()) is item] == []
    assert scene.GetNumberOfNodesByClass("vtkMRMLTableNode") == 0


def test_batch_processing_leaves_no_measurement_tables(cobb_logic, scene, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    image = (make_spine_phantom(1, height=256, width=128).image * 255).astype(np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(image), str(inputs / "case.png"))
    results = cobb_logic.process_folder(inputs, tmp_path / "out")
    assert "error" not in results[0] and (tmp_path / "out" / "case.measurements.json").is_file()
    for class_name in ("vtkMRMLTableNode", "vtkMRMLMarkupsNode", "vtkMRMLVolumeNode"):
        assert scene.GetNumberOfNodesByClass(class_name) == 0, class_name


def test_the_check_next_halo_is_hidden_from_node_selectors_and_not_saved(logic, volume, review_engine):
    node = logic.detect(volume)
    logic.next_point(node)
    marker = logic.next_point_marker(node)
    assert marker.GetHideFromEditors() and not marker.GetSaveWithScene()
    assert not node.GetHideFromEditors()


def snap(node, k, ras):
    """What the markups widget does for its snap-to-slice key: start an interaction and move
    the point, with no end (vtkSlicerMarkupsWidget::ProcessControlPointSnapToSlice)."""
    node.GetDisplayNode().SetActiveControlPoint(k)
    node.InvokeEvent(MARKUPS.PointStartInteractionEvent)
    node.SetNthControlPointPosition(k, *ras)


def test_snap_to_slice_without_an_end_does_not_block_the_list(logic, volume):
    """Defect G: an interaction that never ends is ended on request (the panel asks once no
    mouse button is down) or by the next one, as a drop where the point is."""
    started = []
    logic.on_drag_started = started.append
    node = logic.detect(volume)
    target = pixel_target(node, volume, 12, (3.0, 2.0))
    snap(node, 12, target)
    assert started == [node] and logic.is_dragging(node) and logic.is_dragging()
    logic.end_interaction()
    assert not logic.is_dragging(node)
    assert logic.prediction(node).fixed[12] and point_states(node)[0][12] == "user-fixed"
    np.testing.assert_allclose(control_point_positions(node)[12], target, atol=1e-9)

    second = pixel_target(node, volume, 20, (-3.0, 2.0))
    snap(node, 20, second)
    drag(node, 30, pixel_target(node, volume, 30, (2.0, 2.0)))  # the next drag ends the snap first
    prediction = logic.prediction(node)
    assert prediction.fixed[20] and prediction.fixed[30] and not logic.is_dragging()
    np.testing.assert_allclose(control_point_positions(node)[20], second, atol=1e-9)


def test_a_coordinate_typed_in_the_markups_table_is_a_user_fix(logic, volume, errors):
    """The Markups module's table sets positions with no interaction events
    (qSlicerMarkupsModuleWidget::onActiveMarkupTableCellChanged): a move the logic did not
    make is the user's, so the next run does not overwrite it."""
    node = logic.detect(volume)
    node.SetNthControlPointLabel(16, node.GetNthControlPointLabel(16))  # no move: not a fix
    node.SetNthControlPointLocked(16, True)
    assert point_states(node)[0] == ["predicted"] * K
    target = pixel_target(node, volume, 15, (3.0, 4.0))
    node.SetNthControlPointPosition(15, *target)
    assert logic.prediction(node).fixed[15] and point_states(node)[0][15] == "user-fixed"
    drag(node, 40, pixel_target(node, volume, 40, (2.0, -2.0)))  # a later run keeps the typed point
    np.testing.assert_allclose(control_point_positions(node)[15], target, atol=1e-9)
    before = control_point_positions(node)
    node.SetNthControlPointPosition(20, 1000.0, 1000.0, 0.0)  # outside the image: put back
    np.testing.assert_allclose(control_point_positions(node), before, atol=1e-9)
    assert len(errors) == 1 and "outside" in errors[0]


def test_the_first_radiograph_offered_is_never_a_label_map(logic, scene, phantom):
    """The panel's automatic choice: a label map (a scalar volume subclass) loaded first is
    skipped, so is a volume of several slices."""
    label = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    slicer.util.updateVolumeFromArray(label, np.zeros((1, 8, 8), np.uint8))
    ct = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "ct")
    slicer.util.updateVolumeFromArray(ct, np.zeros((3, 8, 8), np.float32))
    assert scene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode") is label  # what the panel used to take
    assert logic.first_radiograph() is None
    volume = add_volume_from_radiograph(scene, load_radiograph(phantom.image), "film")
    assert logic.first_radiograph() is volume
