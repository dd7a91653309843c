"""Several users at once: N browser tabs open the app together, Detect, and drag points.

    python Testing/web/load_test.py --tabs 1 2 4 6 [--model DIR] [--drags 3] [--browser-nice 10]

For each N a fresh ``interactive-keypoints serve`` (loopback, a free port, --max-sessions
max(N, 4)) is started; once its spare session listens, N separate browser contexts of
headless Chromium open ``/`` at the same moment, press Detect and drag different points.
Printed (p50 over the tabs or drags, seconds): ready (``/`` to a rendered view), detect
(click to points shown), drag -> updated (mouse up to the refined points shown), and the
server's process tree memory (sum of RSS, and of PSS, which counts a shared page once),
sampled every 0.5 s. Asserted, not timed: every tab gets its own session, sees 68 points
and only its own corrections, no console errors, and every session is closed (the host lets go of it)
within 15 s of its tab closing. Everything runs on 127.0.0.1 and stops by itself
(--run-timeout per N).

The browsers run on the server's machine here: by default the kernel splits the cores evenly
between them and the server; ``--browser-nice`` lets the server have them first, as it would
serving browsers on other machines (see :func:`lower_browser_group`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from browser import CHROMIUM, CHROMIUM_ARGS, VIEWPORT, free_port, running_server, session_closed  # noqa: E402

from interactive_keypoints.web.launcher import SPARE_SESSIONS  # noqa: E402

SESSION_GONE_WITHIN_S = 15.0
DRAG_TIMEOUT_S = 60.0  # a drop is refined within seconds; longer means the drag was lost
stages: dict[int, str] = {}  # tab -> what it is doing now (printed when a run does not finish)


# ------------------------------------------------------------------ memory and CPU


def proc_stats() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, user + system CPU seconds so far), in one pass over /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    stats = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(stat.parent.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    return stats


def process_tree(root: int, stats: dict[int, tuple[int, float]] | None = None) -> list[int]:
    stats = proc_stats() if stats is None else stats
    tree, grew = {root}, True
    while grew:
        children = {pid for pid, (parent, _) in stats.items() if parent in tree} - tree
        tree |= children
        grew = bool(children)
    return sorted(tree)


def memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in KiB; (0, 0) once it has gone."""
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0, 0
    values = {line.split(":")[0]: int(line.split()[1]) for line in rollup.splitlines()[1:] if line.endswith("kB")}
    return values.get("Rss", 0), values.get("Pss", 0)


class ResourceSampler(threading.Thread):
    """Memory of the server's process tree, and the CPU time of the server and of the browser
    (this process's other children): on a 2-core machine they share the cores."""

    def __init__(self, root: int, every_s: float = 0.5):
        super().__init__(daemon=True)
        self.root, self.every_s = root, every_s
        self.samples: list[tuple[float, int, int, int]] = []  # time, processes, RSS, PSS (KiB)
        self.cpu_at_start: dict[int, float] = {}
        self.cpu_now: dict[int, float] = {}  # pid -> CPU seconds at its last sample
        self.server_pids: set[int] = set()
        self._halt = threading.Event()

    def run(self):
        while not self._halt.is_set():
            stats = proc_stats()
            pids = process_tree(self.root, stats)
            sizes = [memory_kib(pid) for pid in pids]
            self.samples.append((time.monotonic(), len(pids), sum(r for r, _ in sizes), sum(p for _, p in sizes)))
            self.server_pids.update(pids)
            for pid in process_tree(os.getpid(), stats):
                self.cpu_at_start.setdefault(pid, stats[pid][1])
                self.cpu_now[pid] = stats[pid][1]
            self._halt.wait(self.every_s)

    def cpu_used(self) -> tuple[float, float]:
        """CPU seconds used since sampling began by the server's tree and by the browser."""
        used = {pid: self.cpu_now[pid] - self.cpu_at_start[pid] for pid in self.cpu_now}
        server = sum(v for pid, v in used.items() if pid in self.server_pids)
        browser = sum(v for pid, v in used.items() if pid not in self.server_pids and pid != os.getpid())
        return server, browser

    def stop(self):
        self._halt.set()
        self.join()

    def peak_gb(self, since: float = 0.0) -> tuple[float, float]:
        chosen = [s for s in self.samples if s[0] >= since] or self.samples
        return max(s[2] for s in chosen) / 2**20, max(s[3] for s in chosen) / 2**20


# ------------------------------------------------------------------ one tab


async def read_debug(page) -> dict:
    import json

    return json.loads(await page.locator("#ik-debug").text_content() or "{}")


async def wait_for_debug(page, predicate_js: str, arg=None, timeout_s: float = 300) -> dict:
    """Wait until ``predicate_js`` (a JS function of the page's debug object and ``arg``) holds,
    then return the debug object. The page checks it every 50 ms itself: a read from here per
    check costs a round trip through Playwright (0.1-0.2 s, and the browser's CPU, with four tabs
    on two cores) that the figures would count as the app's."""
    from playwright.async_api import TimeoutError as PlaywrightTimeout

    try:
        await page.wait_for_function(
            "(arg) => { const node = document.querySelector('#ik-debug');"
            f" return !!node && ({predicate_js})(JSON.parse(node.textContent || '{{}}'), arg); }}",
            arg=arg,
            polling=50,
            timeout=timeout_s * 1000,
        )
    except PlaywrightTimeout:
        raise AssertionError(
            f"{predicate_js} not met within {timeout_s} s; last debug: {await read_debug(page)}"
        ) from None
    return await read_debug(page)


async def view_to_page(page, view_xy, view_size):
    box = await page.locator("#ik-view img, img").first.bounding_box()
    return (
        box["x"] + view_xy[0] * box["width"] / view_size[0],
        box["y"] + (view_size[1] - view_xy[1]) * box["height"] / view_size[1],
    )


async def drag(page, start, end, steps: int = 15):
    await page.mouse.move(start[0] - 2, start[1] - 2)
    await asyncio.sleep(0.15)
    await page.mouse.move(*start)  # hovering highlights the point so the press grabs it
    await asyncio.sleep(0.25)
    await page.mouse.down()
    await asyncio.sleep(0.1)
    for i in range(1, steps + 1):
        f = i / steps
        await page.mouse.move(start[0] + (end[0] - start[0]) * f, start[1] + (end[1] - start[1]) * f)
        await asyncio.sleep(0.03)
    await asyncio.sleep(0.2)
    await page.mouse.up()


def spread_points(debug, count: int, skip: int) -> list[int]:
    """Points far from their neighbours; tab ``skip`` starts further down the list (its own points)."""
    import numpy as np

    xy = np.array([p["view_xy"] for p in debug["points"]])
    distance = np.linalg.norm(xy[:, None] - xy[None], axis=2)
    np.fill_diagonal(distance, np.inf)
    order = [int(k) for k in np.argsort(-distance.min(axis=1))]
    return order[skip * count : (skip + 1) * count]


async def describe_lost_drag(page, tab: int, k: int, before: dict) -> str:
    """What the page shows after a drag that did not fix its point (and a screenshot of it)."""
    after = await read_debug(page)
    box = await page.locator("#ik-view img, img").first.bounding_box()
    natural = await page.evaluate(
        "() => { const i = document.querySelector('img'); return [i.naturalWidth, i.naturalHeight]; }"
    )
    shot = HERE.parent / "artifacts" / "web" / f"lost-drag-tab-{tab}.png"
    await page.screenshot(path=str(shot))
    fixed = [p["name"] for p in after["points"] if p["state"] == "user-fixed"]
    return (
        f"tab {tab}: the drag of {before['points'][k]['name']} (point {k}) did not fix it within {DRAG_TIMEOUT_S:g} s; "
        f"its pixel {before['points'][k]['pixel']} -> {after['points'][k]['pixel']}, busy {after['busy']}, "
        f"runs started {before.get('runs_started')} -> {after.get('runs_started')}, fixed now {fixed}; "
        f"view size {before['view_size']} -> {after['view_size']}, image element {box}, image {natural}; see {shot}"
    )


async def one_tab(browser, base_url: str, tab: int, drags: int, start_signal: asyncio.Event, errors: list) -> dict:
    stages[tab] = "opening its browser context"
    context = await browser.new_context(viewport=VIEWPORT)
    page = await context.new_page()
    page.on("console", lambda m: errors.append(f"tab {tab}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"tab {tab}: {e}"))
    await start_signal.wait()
    began = time.monotonic()
    stages[tab] = "loading /"
    await page.goto(base_url + "/", timeout=600_000)
    stages[tab] = f"waiting for the first view of {page.url}"
    assert "/s/" in page.url, f"tab {tab} got no session: {page.url}"
    await page.wait_for_selector("#ik-detect", timeout=600_000)
    await page.wait_for_function(
        "() => Array.from(document.querySelectorAll('img')).some(i => i.complete && i.naturalWidth > 100)",
        timeout=600_000,
    )
    await wait_for_debug(page, "(d) => (d.view_size || [0])[0] > 0")
    ready = time.monotonic() - began

    began = time.monotonic()
    stages[tab] = "detecting"
    await page.click("#ik-detect")
    debug = await wait_for_debug(page, "(d) => (d.points || []).length === 68 && !d.busy")
    detect = time.monotonic() - began

    updated = []
    mine = spread_points(debug, drags, tab)
    for k in mine:
        stages[tab] = f"dragging point {k}"
        start = await view_to_page(page, debug["points"][k]["view_xy"], debug["view_size"])
        centre = await view_to_page(
            page, [sum(p["view_xy"][i] for p in debug["points"]) / 68 for i in (0, 1)], debug["view_size"]
        )
        towards = [25 if c >= s else -25 for s, c in zip(start, centre)]  # the drop stays on the image
        await drag(page, start, (start[0] + towards[0], start[1] + 1.4 * towards[1]))
        released = time.monotonic()
        try:
            # the page can show the point fixed one state push before the model run starts: wait
            # for a run begun after the drop to end, so the next drag presses where the point is now
            debug = await wait_for_debug(
                page,
                "(d, [k, runs]) => d.points[k].state === 'user-fixed' && d.runs_started > runs && !d.busy",
                [k, debug["runs_started"]],
                DRAG_TIMEOUT_S,
            )
        except AssertionError:
            raise AssertionError(await describe_lost_drag(page, tab, k, debug)) from None
        updated.append(time.monotonic() - released)
    stages[tab] = "done"
    fixed = {k for k, p in enumerate(debug["points"]) if p["state"] == "user-fixed"}
    assert fixed == set(mine), f"tab {tab} sees fixed points {sorted(fixed)}, its own are {sorted(mine)}"
    return {"page": page, "context": context, "url": page.url, "ready": ready, "detect": detect, "updated": updated}


# ------------------------------------------------------------------ one N


def lower_browser_group(server_pid: int, nice: int):
    """Give the browser's scheduling group the niceness ``nice``: the server then gets the cores
    first, as it would with the browsers on the users' machines.

    Chromium runs in a session of its own, so Linux schedules it as a group of its own (an
    autogroup) beside the server's: when both are busy, the kernel splits the cores evenly
    between the two groups whatever the processes' own niceness, and the server's model runs
    wait for CPU. An autogroup's niceness is set by writing it to ``/proc/PID/autogroup``."""
    stats = proc_stats()
    server = set(process_tree(server_pid, stats))
    server_group = Path(f"/proc/{server_pid}/autogroup").read_text().split()[0]
    lowered = set()
    for pid in process_tree(os.getpid(), stats):
        if pid in server or pid == os.getpid():
            continue
        try:
            group = Path(f"/proc/{pid}/autogroup").read_text().split()[0]
            if group != server_group and group not in lowered:
                Path(f"/proc/{pid}/autogroup").write_text(str(nice))
                lowered.add(group)
        except FileNotFoundError:
            continue  # the process has gone
    if not lowered:
        raise RuntimeError("--browser-nice: the browser shares the server's scheduling group; nothing to lower")


async def run_tabs(
    base_url: str, tabs: int, drags: int, server_log: Path, server_pid: int, browser_nice: int = 0
) -> tuple[list[dict], float]:
    from playwright.async_api import async_playwright

    errors: list[str] = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        if browser_nice:
            lower_browser_group(server_pid, browser_nice)  # its renderers, forked later, join its group
        try:
            start_signal = asyncio.Event()
            runs = [
                asyncio.create_task(one_tab(browser, base_url, t, drags, start_signal, errors)) for t in range(tabs)
            ]
            await asyncio.sleep(1.0)  # the contexts exist: the visits leave together
            start_signal.set()
            results = await asyncio.gather(*runs)
            assert len({r["url"] for r in results}) == tabs, "two tabs shared a session"
            assert not errors, "console errors:\n" + "\n".join(errors)
            for r in results:
                await r["context"].close()
            closed = time.monotonic()
            ids = [r["url"].split("/s/")[1].split("/")[0] for r in results]
            while not all(session_closed(server_log, i) for i in ids):
                assert time.monotonic() - closed < SESSION_GONE_WITHIN_S, "sessions outlived their closed tabs"
                await asyncio.sleep(0.25)
            gone = time.monotonic() - closed
        finally:
            await browser.close()
    return results, gone


def model_runs(server_log: Path) -> tuple[float, float]:
    """p50 over the drags' model runs of the run itself and of request -> points in MRML, in ms:
    the server's share of drag -> updated (the host logs one line per run)."""
    runs = re.findall(r": correction: model (\d+) ms, (\d+) ms from request to display", server_log.read_text())
    if not runs:
        return float("nan"), float("nan")
    return statistics.median(int(m) for m, _ in runs), statistics.median(int(s) for _, s in runs)


def dump_host_stacks(server_pid: int):
    """Ask the session host to print its threads' stacks into the server log (it registers SIGUSR1)."""
    for pid in process_tree(server_pid):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"interactive_keypoints.web.host" in command:
            os.kill(pid, signal.SIGUSR1)
    time.sleep(2.0)  # the launcher copies the host's output into its log


def measure(
    tabs: int,
    drags: int,
    model: str | None,
    run_timeout: float,
    log_dir: Path,
    spare_sessions: int = SPARE_SESSIONS,
    inference_threads: int | None = None,
    browser_nice: int = 0,
) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = log_dir / f"load-{tabs}-tabs-server.log"
    with tempfile.TemporaryDirectory(prefix="ik-load-") as autosave:
        args = [
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--autosave-dir",
            autosave,
            "--max-sessions",
            str(max(tabs, 4)),
            "--start-timeout",
            str(run_timeout),
        ]
        if model:
            args += ["--model", model]
        args += ["--spare-sessions", str(spare_sessions)]
        if inference_threads:
            args += ["--inference-threads", str(inference_threads)]
        with running_server(args, log_path, ready_url=f"{url}/s/none/", ready_statuses=(410,)) as server:
            deadline = time.monotonic() + run_timeout
            while log_path.read_text().count("listening after") < spare_sessions:  # the spare sessions are up
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no spare session started; see {log_path}")
                time.sleep(0.5)
            sampler = ResourceSampler(server.pid)
            sampler.start()
            began = time.monotonic()
            stages.clear()
            try:
                results, gone = asyncio.run(
                    asyncio.wait_for(run_tabs(url, tabs, drags, log_path, server.pid, browser_nice), run_timeout)
                )
            except (asyncio.TimeoutError, TimeoutError):
                dump_host_stacks(server.pid)
                where = "; ".join(f"tab {t}: {stage}" for t, stage in sorted(stages.items()))
                raise TimeoutError(f"{where}; the host's thread stacks are in {log_path}") from None
            finally:
                sampler.stop()
            rss, pss = sampler.peak_gb(since=began)
            model_ms, served_ms = model_runs(log_path)
            server_cpu, browser_cpu = sampler.cpu_used()
            wall = time.monotonic() - began
    return {
        "tabs": tabs,
        "ready": statistics.median(r["ready"] for r in results),
        "detect": statistics.median(r["detect"] for r in results),
        "updated": statistics.median(u for r in results for u in r["updated"]),
        "rss": rss,
        "pss": pss,
        "gone": gone,
        "model_ms": model_ms,
        "served_ms": served_ms,
        "server_cpu": server_cpu,
        "browser_cpu": browser_cpu,
        "wall": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tabs", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--drags", type=int, default=3, help="drags per tab (each a different point)")
    parser.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    parser.add_argument("--run-timeout", type=float, default=900, help="seconds allowed for each N")
    parser.add_argument(
        "--inference-threads", type=int, default=None, help="passed to serve (the test runs it with OMP_NUM_THREADS=1)"
    )
    parser.add_argument(
        "--spare-sessions",
        type=int,
        default=SPARE_SESSIONS,
        help=f"passed to serve (default {SPARE_SESSIONS}, serve's)",
    )
    parser.add_argument(
        "--browser-nice",
        type=int,
        default=0,
        help="niceness of the browser's scheduling group (1-19): the server gets the cores first, as with "
        "the browsers on other machines (default 0: the kernel splits the cores evenly between them)",
    )
    args = parser.parse_args()
    if any(n < 1 or n > 8 for n in args.tabs):
        parser.error(f"--tabs must be between 1 and 8 (loopback load on a small machine), not {args.tabs}")
    if not 0 <= args.browser_nice <= 19:
        parser.error(f"--browser-nice must be between 0 and 19, not {args.browser_nice}")
    log_dir = HERE.parent / "artifacts" / "web"
    log_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for tabs in args.tabs:
        try:
            row = measure(
                tabs,
                args.drags,
                args.model,
                args.run_timeout,
                log_dir,
                args.spare_sessions,
                args.inference_threads,
                args.browser_nice,
            )
        except (asyncio.TimeoutError, TimeoutError) as error:
            print(
                f"{tabs} tabs: not done within --run-timeout {args.run_timeout:g} s ({error}); larger runs skipped",
                flush=True,
            )
            break
        rows.append(row)
        print(
            f"{tabs} tabs: ready {row['ready']:.1f} s, detect {row['detect']:.2f} s, "
            f"drag->updated {row['updated']:.2f} s, peak RSS {row['rss']:.2f} GB (PSS {row['pss']:.2f} GB), "
            f"sessions closed {row['gone']:.1f} s after the tabs closed; drags' model runs {row['model_ms']:.0f} ms, "
            f"request -> points in MRML {row['served_ms']:.0f} ms; CPU seconds over {row['wall']:.0f} s: "
            f"server {row['server_cpu']:.0f}, browser {row['browser_cpu']:.0f}",
            flush=True,
        )
    print("\n| tabs | ready | detect | drag -> updated | RSS (PSS), peak |\n|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['tabs']} | {r['ready']:.1f} | {r['detect']:.2f} | {r['updated']:.2f} | "
            f"{r['rss']:.2f} GB ({r['pss']:.2f} GB) |"
        )


if __name__ == "__main__":
    main()
