"""Every runner the logic is given keeps the one contract of ``mrml_logic.runners.Runner``:
finish once per call, on the thread that drives the logic, with compute's result or its
exception (never raised), computations one at a time in submission order."""

import asyncio
import threading
import time

import pytest

pytest.importorskip("slicer", reason="slicer-core (pip install slicer-core) is needed for the logic package")

from interactive_keypoints.mrml_logic import ThreadedRunner, run_inline, waiting_runner  # noqa: E402
from interactive_keypoints.web.runner import AsyncioRunner  # noqa: E402


def drive_inline(computes):
    finished = []
    for compute in computes:
        run_inline(compute, lambda outcome: finished.append((outcome, threading.get_ident())))
    return finished


def drive_threaded(computes):
    runner, finished = ThreadedRunner(), []
    try:
        for compute in computes:
            runner(compute, lambda outcome: finished.append((outcome, threading.get_ident())))
        while runner.busy:
            runner.poll(wait=0.01)
    finally:
        runner.shutdown()
    return finished


def drive_waiting(computes):
    runner, finished = ThreadedRunner(), []
    try:
        run = waiting_runner(runner)
        for compute in computes:
            run(compute, lambda outcome: finished.append((outcome, threading.get_ident())))
    finally:
        runner.shutdown()
    return finished


def drive_asyncio(computes):
    finished = []

    async def main():
        runner = AsyncioRunner()
        try:
            for compute in computes:
                runner(compute, lambda outcome: finished.append((outcome, threading.get_ident())))
            while runner.in_flight:
                await asyncio.sleep(0.01)
        finally:
            runner.shutdown()

    asyncio.run(main())  # on this thread: the loop thread is the test's thread
    return finished


DRIVERS = [drive_inline, drive_threaded, drive_waiting, drive_asyncio]


@pytest.mark.parametrize("drive", DRIVERS, ids=lambda d: d.__name__)
def test_finish_gets_each_outcome_once_on_the_driving_thread(drive):
    error = ValueError("bad image")

    def fails():
        raise error

    finished = drive([lambda: 1, fails, lambda: 3])
    assert [outcome for outcome, _ in finished] == [1, error, 3]
    assert {thread for _, thread in finished} == {threading.get_ident()}


@pytest.mark.parametrize("drive", DRIVERS, ids=lambda d: d.__name__)
def test_computations_run_one_at_a_time_in_submission_order(drive):
    log, running = [], []

    def compute(name):
        def run():
            running.append(name)
            assert len(running) == 1, f"{name} overlapped {running}"
            time.sleep(0.01)  # long enough for a second worker to start, if there were one
            log.append(name)
            running.remove(name)
            return name

        return run

    finished = drive([compute(n) for n in "abc"])
    assert log == ["a", "b", "c"]
    assert [outcome for outcome, _ in finished] == ["a", "b", "c"]
