"""Memory a session host keeps per closed browser session.

    python bench/session_memory.py [--sessions 20]

Prints ONE JSON object. A benchmark, not a test: figures depend on the machine and its load.

One session host (as ``serve`` runs it: the shipped model, no browser) opens ``--sessions``
sessions one after the other; each detects the embedded sample's landmarks, takes one drag
(the markups events of Slicer's widget) and is closed. The process's RSS is read after each
close; the figure is the growth from the middle to the last session, per session (the first
sessions also fill caches that stay).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile

from interactive_keypoints.inference import cpu_description


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=20, help="sessions opened and closed in turn (default 20)")
    args = parser.parse_args(argv)
    if args.sessions < 4:
        parser.error(f"--sessions must be at least 4, not {args.sessions}")
    return args


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


async def until_idle(app, timeout_s: float = 120.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while app.logic.runner.in_flight or (app.points is not None and app.logic.is_busy(app.points)):
        if loop.time() > deadline:
            raise TimeoutError("the model run did not finish")
        await asyncio.sleep(0.02)


def drag(node, k: int, offset_ras):
    """Point k moved by ``offset_ras``, as vtkSlicerMarkupsWidget performs a drag."""
    position = [0.0, 0.0, 0.0]
    node.GetNthControlPointPosition(k, position)
    node.GetDisplayNode().SetActiveControlPoint(k)
    node.InvokeEvent(node.PointStartInteractionEvent)
    node.SetNthControlPointPosition(k, *(p + d for p, d in zip(position, offset_ras)))
    node.InvokeEvent(node.PointEndInteractionEvent)


async def measure(sessions: int, autosave_root: str) -> list[float]:
    from interactive_keypoints.web.host import SessionHost
    from interactive_keypoints.web.shared_model import SharedModel

    host = SessionHost(SharedModel(None), {})
    host.shared_model.load()
    sizes = []
    for i in range(sessions):
        await host.open(str(i), f"{autosave_root}/{i}")
        app = host.apps[str(i)]
        await app.detect()
        await until_idle(app)
        drag(app.points, 5, (3.0, 2.0, 0.0))
        await until_idle(app)
        del app
        await host.close(str(i))
        sizes.append(rss_mb())
    return sizes


def main(argv=None):
    args = parse_args(argv)
    from interactive_keypoints.web.app import MAX_FILE_BYTES, set_session_environment

    set_session_environment(max_file_mb=MAX_FILE_BYTES / 2**20)
    with tempfile.TemporaryDirectory(prefix="ik-session-memory-") as autosave_root:
        sizes = asyncio.run(measure(args.sessions, autosave_root))
    middle = len(sizes) // 2
    print(
        json.dumps(
            {
                "mb_per_closed_session": round((sizes[-1] - sizes[middle - 1]) / (len(sizes) - middle), 2),
                "rss_mb_after_each_close": [round(s) for s in sizes],
                "sessions": args.sessions,
                "cpu": cpu_description(),
            }
        )
    )


if __name__ == "__main__":
    main()
