"""What the browser app's processes tell each other, in one place that needs nothing else
(the launcher, the session host and a session import it; none of them imports another for it).

* The session host (:mod:`.host`) answers the launcher (:mod:`.launcher`) on stdout in lines
  ``IK_HOST {"event": ...}`` (:func:`host_line`, :func:`read_host_line`); other lines are
  the libraries' own output.
* A session run alone (:func:`.app.run_session`) prints ``IK_SESSION_READY port=PORT`` once
  it listens.
* :class:`RunHooks`: what tests and demos add to every model run, given on the command line
  of ``serve`` (hidden there) or of a session process, and passed as one object from there to
  the runner (:class:`.runner.AsyncioRunner`).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

HOST_MARK = "IK_HOST"
READY_MARK = "IK_SESSION_READY"


def host_line(event: str, **fields) -> str:
    """The host's answer ``event`` with its fields, as one line of its stdout."""
    return f"{HOST_MARK} {json.dumps({'event': event, **fields})}"


def read_host_line(text: str) -> dict | None:
    """The answer in one line of the host's stdout; None for a line that is no answer.
    Raises ValueError for a marked line that is not understood."""
    if not text.startswith(HOST_MARK + " "):
        return None
    answer = json.loads(text[len(HOST_MARK) + 1 :])
    if not isinstance(answer, dict):
        raise ValueError("an answer is a JSON object")
    return answer


@dataclass(frozen=True)
class RunHooks:
    """Added to every model run: a delay (a slow CPU, for demos and tests of drags during
    inference), and a file that holds each run while it exists (tests: the run lasts until
    the test removes it, however loaded the machine)."""

    delay_s: float = 0.0
    hold_path: str | None = None

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser, show_help: bool = True) -> None:
        parser.add_argument(
            "--slow-inference",
            type=float,
            default=0.0,
            help="add this many seconds to every model run (demos and tests of drags during inference)"
            if show_help
            else argparse.SUPPRESS,
        )
        parser.add_argument("--hold-inference-while", default=None, help=argparse.SUPPRESS)  # tests

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RunHooks:
        return cls(float(args.slow_inference or 0.0), args.hold_inference_while)

    def argv(self) -> list[str]:
        """The options that give these hooks to another process (none for no hooks)."""
        options = ["--slow-inference", str(self.delay_s)] if self.delay_s else []
        return options + (["--hold-inference-while", self.hold_path] if self.hold_path else [])
