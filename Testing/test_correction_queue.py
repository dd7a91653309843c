"""CorrectionQueue: what one point list has waiting for the model (pure Python: no MRML, no model).

The logic's tests (test_mrml_logic.py) drive the same rules through real markups events;
here each rule is checked alone, in microseconds."""

import ast
from pathlib import Path

import pytest

from interactive_keypoints.mrml_logic import correction_queue
from interactive_keypoints.mrml_logic.correction_queue import CorrectionQueue, LogicBusyError, Run

SIZE = (100, 50)  # (H, W) of the radiograph


@pytest.fixture
def queue():
    return CorrectionQueue(SIZE)


def test_the_queue_needs_neither_mrml_nor_the_model():
    source = Path(correction_queue.__file__)
    imported = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.ImportFrom):
            imported.add("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
    assert imported <= {"__future__", "dataclasses", "..conventions", "..errors"}


def test_drops_run_together_as_one_correction_and_the_latest_per_point_wins(queue):
    queue.drop({3: (1.0, 2.0)})
    queue.drop({7: (5.0, 6.0)})
    queue.drop({3: (4.0, 4.0)})
    assert queue.next_run(drops=True) == Run({3: (4.0, 4.0), 7: (5.0, 6.0)})


def test_nothing_runs_while_the_model_runs_and_drops_made_meanwhile_run_next(queue):
    queue.drop({3: (1.0, 2.0)})
    first = queue.next_run(drops=True)
    queue.start(first)
    queue.drop({3: (9.0, 9.0)})  # a newer drop of the same point, and another point
    queue.drop({8: (2.0, 2.0)})
    assert queue.busy and queue.next_run(drops=True) is None
    with pytest.raises(LogicBusyError):
        queue.start()
    queue.finish(first)
    assert not queue.busy
    assert queue.next_run(drops=True) == Run({3: (9.0, 9.0), 8: (2.0, 2.0)})  # the newer drop was kept


def test_a_finished_correction_takes_its_drops_off_the_queue_also_when_it_failed(queue):
    queue.drop({3: (1.0, 2.0)})
    run = queue.next_run(drops=True)
    queue.start(run)
    queue.finish(run)  # done or failed: the logic puts refused points back itself
    assert queue.pending == {} and queue.next_run(drops=True) is None


def test_with_auto_refine_off_drops_wait(queue):
    queue.drop({3: (1.0, 2.0)})
    assert queue.next_run(drops=False) is None
    assert queue.pending == {3: (1.0, 2.0)}
    assert queue.next_run(drops=True) == Run({3: (1.0, 2.0)})  # update()


def test_during_a_drag_only_the_latest_position_of_the_dragged_point_is_previewed(queue):
    queue.drop({3: (1.0, 2.0)})
    queue.start_drag(5, start="where it was")
    assert queue.next_run(drops=True) is None  # the drops wait for the drag's end
    queue.start(None)  # a run in progress (the drag's first preview)
    queue.move(5, (10.0, 10.0))
    queue.move(5, (12.0, 11.0))
    queue.move(6, (30.0, 30.0))  # not the dragged point
    queue.finish(None)
    assert queue.held() == {3, 5}
    preview = queue.next_run(drops=True)
    assert preview == Run({3: (1.0, 2.0), 5: (12.0, 11.0)}, preview=True)
    queue.start(preview)
    queue.finish(preview)
    assert queue.pending == {3: (1.0, 2.0)}  # a preview is no drop
    assert queue.next_run(drops=True) is None  # no new position
    assert queue.end_drag() == (5, "where it was")
    assert queue.dragging is None and queue.held() == {3}


def test_a_position_off_the_image_is_no_preview(queue):
    queue.start_drag(5)
    queue.move(5, (60.0, 10.0))  # x beyond the 50 pixel width
    assert queue.next_run(drops=True) is None


def test_a_shown_preview_is_replaced_by_the_next_correction_even_without_drops(queue):
    queue.start_drag(5)
    queue.move(5, (10.0, 10.0))
    preview = queue.next_run(drops=True)
    queue.start(preview)
    queue.finish(preview)
    queue.end_drag()  # a click, or a refused drop: no drop to run
    assert queue.preview_shown
    correction = queue.next_run(drops=False)  # replaced even with auto-refine off
    assert correction == Run({})
    queue.start(correction)
    assert not queue.preview_shown


def test_any_other_model_run_replaces_a_shown_preview(queue):
    queue.start_drag(5)
    queue.move(5, (10.0, 10.0))
    preview = queue.next_run(drops=True)
    queue.start(preview)
    queue.finish(preview)
    queue.end_drag()
    queue.start(None)  # undo, reset, a new detection ...
    queue.finish(None)
    assert not queue.preview_shown and queue.next_run(drops=True) is None


def test_cancel_forgets_what_has_not_reached_the_model(queue):
    assert not queue.cancel()
    queue.drop({3: (1.0, 2.0)})
    queue.start_drag(5)
    queue.move(5, (10.0, 10.0))
    preview = queue.next_run(drops=True)
    queue.start(preview)
    queue.finish(preview)
    assert queue.cancel()
    assert queue.pending == {} and not queue.preview_shown


def test_withdraw_forgets_the_drops_of_unfixed_points(queue):
    queue.drop({3: (1.0, 2.0), 4: (2.0, 2.0)})
    queue.withdraw([3, 9])
    assert queue.pending == {4: (2.0, 2.0)}


def test_a_new_drag_forgets_the_last_drags_position(queue):
    queue.start_drag(5)
    queue.start(None)
    queue.move(5, (10.0, 10.0))
    queue.start_drag(6)  # the view ended the first drag without telling (snap to slice)
    queue.finish(None)
    assert queue.next_run(drops=True) is None
