"""A runner for ``KeypointsMRMLLogic`` inside an asyncio server (trame).

It satisfies :class:`interactive_keypoints.mrml_logic.runners.Runner`: the logic hands us
``compute`` (touches only the engine session, no MRML) and ``finish`` (writes into MRML).
Inference runs on one worker thread so the websocket loop keeps serving mouse events;
``finish`` comes back on the event-loop thread, the only thread that touches MRML.
Sessions that share a process pass the process's one inference thread (``executor``), so
their model runs queue instead of competing for the cores.
"""

from __future__ import annotations

import asyncio
import os
import time
from concurrent.futures import ThreadPoolExecutor

from ..mrml_logic.runners import Compute, Finish, Outcome, outcome_of
from .protocol import RunHooks


def _outcome(compute: Compute, hooks: RunHooks) -> Outcome:
    if hooks.delay_s:
        time.sleep(hooks.delay_s)  # emulate a slow CPU (demos, tests of drags during inference)
    while hooks.hold_path and os.path.exists(hooks.hold_path):
        time.sleep(0.05)  # tests: the run lasts until the test removes this file, however loaded the machine
    return outcome_of(compute)


class AsyncioRunner:
    """A :class:`~interactive_keypoints.mrml_logic.runners.Runner` for the logic: one
    computation at a time on a worker thread, ``finish`` on the event-loop thread.
    ``hooks``: added to every run (tests, demos)."""

    def __init__(self, hooks: RunHooks | None = None, executor: ThreadPoolExecutor | None = None):
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="ik-inference")
        self.hooks = hooks or RunHooks()
        self.in_flight = 0

    def __call__(self, compute: Compute, finish: Finish) -> None:
        loop = asyncio.get_running_loop()  # the logic is driven from the loop thread
        self.in_flight += 1
        future = loop.run_in_executor(self._executor, _outcome, compute, self.hooks)
        future.add_done_callback(lambda done: self._finish(finish, done.result()))

    def _finish(self, finish, outcome):
        self.in_flight -= 1
        finish(outcome)  # the app pushes its state from the logic's callbacks

    def shutdown(self):
        if self._own_executor:  # a shared one belongs to the process
            self._executor.shutdown(wait=False, cancel_futures=True)
