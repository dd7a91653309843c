"""What one frame of the browser app's slice view costs the server: multisampling on vs off.

    python bench/view_render.py [--size 1000x800] [--frames 30]

Prints ONE JSON object. A benchmark, not a test: figures depend on the machine and its load.

Builds one web session as ``serve`` does (the environment of ``set_session_environment``:
EGL, Mesa's rasterizer on the calling thread unless ``LP_NUM_THREADS`` is set), detects the
embedded sample's landmarks, then renders ``--frames`` frames while moving one point, as a
drag does, first with trame-slicer's multisampling request (8 samples; the driver may grant
fewer) and then without it (the app's setting). CPU ms per frame counts every thread of the
process (Mesa's included); wall ms is what the event loop waits for.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

from interactive_keypoints.inference import cpu_description


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1000x800", help="view size in pixels, WIDTHxHEIGHT (default 1000x800)")
    parser.add_argument("--frames", type=int, default=30, help="timed frames per setting (default 30)")
    return parser.parse_args(argv)


def time_frames(render_window, points, frames: int) -> tuple[float, float]:
    """(wall ms, CPU ms) per frame, moving point 0 a little before each."""
    start = [0.0, 0.0, 0.0]
    points.GetNthControlPointPosition(0, start)
    render_window.Render()  # the first frame after a change of settings builds buffers: untimed
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(frames):
        points.SetNthControlPointPosition(0, start[0] + 0.5 * i, start[1], start[2])
        render_window.Render()
    return (
        1000 * (time.perf_counter() - wall) / frames,
        1000 * (time.process_time() - cpu) / frames,
    )


async def measure(args) -> dict:
    from trame.app import get_server

    from interactive_keypoints.web.app import build_app

    width, height = (int(v) for v in args.size.lower().split("x"))
    app = build_app(get_server(name="bench-view-render", client_type="vue3"))
    render_window = app.view.render_window()
    render_window.SetSize(width, height)
    app.points = app.logic.detect(app.volume, app.points, blocking=True)
    results = {}
    for label, samples in (("multisampling_8", 8), ("no_multisampling", 0)):
        render_window.SetMultiSamples(samples)
        wall_ms, cpu_ms = time_frames(render_window, app.points, args.frames)
        results[label] = {"wall_ms": round(wall_ms, 1), "cpu_ms": round(cpu_ms, 1)}
    app.close()
    return results


def main(argv=None):
    args = parse_args(argv)
    from interactive_keypoints.web.app import MAX_FILE_BYTES, set_session_environment

    set_session_environment(max_file_mb=MAX_FILE_BYTES / 2**20)
    results = asyncio.run(measure(args))
    results.update(
        cpu_ratio=round(results["multisampling_8"]["cpu_ms"] / max(results["no_multisampling"]["cpu_ms"], 1e-6), 1),
        size=args.size,
        frames=args.frames,
        lp_num_threads=os.environ.get("LP_NUM_THREADS"),
        cpu=cpu_description(),
    )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
