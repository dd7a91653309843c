"""Runners: how the logic gets a model run done without blocking the thread that owns MRML.

Every runner satisfies :class:`Runner`: ``runner(compute, finish)``. The logic splits each
model run into

* ``compute()`` -- touches only the engine session and values copied from MRML on the
  main thread beforehand (never a node, never the scene); it may run on any thread;
* ``finish(outcome)`` -- writes the result into MRML; ``outcome`` is what compute
  returned, or the ``Exception`` it raised (a runner never raises compute's error itself).

Runners here: :func:`run_inline` (console, batch, tests), :class:`ThreadedRunner` (the
Slicer module, polled from a QTimer), :func:`waiting_runner` (blocking calls that keep a
GUI live); the browser app's is ``interactive_keypoints.web.runner.AsyncioRunner``.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, Protocol, Union

Outcome = Union[Any, Exception]  # what compute returned, or the exception it raised
Compute = Callable[[], Any]
Finish = Callable[[Outcome], None]


class Runner(Protocol):
    """``runner(compute, finish)``: run ``compute`` and hand its outcome to ``finish``.

    The contract the logic relies on:

    * ``finish`` is called exactly once per call, on the thread that owns MRML (the one
      that drives the logic): the caller itself for :func:`run_inline`, the thread that
      calls :meth:`ThreadedRunner.poll`, the event-loop thread for ``AsyncioRunner``. It
      may be called before ``runner(...)`` returns (inline) or long after.
    * ``compute`` may run on another thread, so it must not touch MRML; an exception it
      raises is given to ``finish`` as the outcome, never raised to the caller.
    * Computations run one at a time, in the order they were submitted: the model and
      its session are never used by two threads at once.
    """

    def __call__(self, compute: Compute, finish: Finish) -> None: ...


def outcome_of(compute: Compute) -> Outcome:
    """compute()'s result, or the exception it raised (for ``finish`` to report)."""
    try:
        return compute()
    except Exception as error:  # noqa: BLE001 - handed to finish, which reports it
        return error


def run_inline(compute: Compute, finish: Finish) -> None:
    """Synchronous runner: compute and finish on the calling thread."""
    finish(outcome_of(compute))


class ThreadedRunner:
    """Runs computations one at a time on a worker thread.

    ``finish`` callbacks are not called from the worker: the main thread calls
    :meth:`poll` (Slicer: from a QTimer) and the finished ones run there, because MRML
    must only be touched from the main thread.

    Inside Slicer the Qt main loop holds the GIL while idle, so the worker only advances
    while the main thread waits in Python: ``poll(wait=...)`` blocks (GIL released) until a
    result arrives or ``wait`` seconds pass, which keeps the model at full speed while the
    GUI still gets its events between polls.
    """

    def __init__(self):
        self._jobs: queue.Queue = queue.Queue()
        self._done: queue.Queue = queue.Queue()
        self._in_flight = 0
        self._thread = threading.Thread(target=self._work, name="InteractiveKeypoints inference", daemon=True)
        self._thread.start()

    def __call__(self, compute: Compute, finish: Finish) -> None:
        self._in_flight += 1
        self._jobs.put((compute, finish))

    @property
    def busy(self) -> bool:
        return self._in_flight > 0

    def _work(self):
        while True:
            job = self._jobs.get()
            if job is None:
                return
            compute, finish = job
            self._done.put((finish, outcome_of(compute)))  # finish runs in poll(), on the main thread

    def poll(self, wait: float = 0.0) -> int:
        """Call the finish callbacks of completed computations; returns how many ran.

        ``wait`` > 0: while computations are in flight and none has finished yet, wait up
        to that many seconds for one, with the GIL released (the worker runs meanwhile)."""
        count = 0
        while True:
            try:
                if count == 0 and wait > 0 and self._in_flight > 0:
                    finish, outcome = self._done.get(timeout=wait)
                else:
                    finish, outcome = self._done.get_nowait()
            except queue.Empty:
                return count
            self._in_flight -= 1
            count += 1
            finish(outcome)

    def shutdown(self):
        self._jobs.put(None)


def waiting_runner(runner: ThreadedRunner, pump: Callable[[], Any] | None = None, wait: float = 0.02) -> Runner:
    """A runner for blocking calls that keeps a GUI live: the computation goes to
    ``runner`` (after any queued run, so the model is never used by two threads at once);
    the calling thread polls it, with the GIL released while it waits, and calls ``pump()``
    between polls (process GUI events, update a progress bar) until it is done."""

    def run(compute: Compute, finish: Finish) -> None:
        outcome: list[Outcome] = []
        runner(compute, outcome.append)
        while not outcome:
            runner.poll(wait=wait)
            if not outcome and pump is not None:
                pump()
        finish(outcome[0])

    return run
