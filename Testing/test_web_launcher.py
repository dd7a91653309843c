"""The launcher's session bookkeeping, with a stand-in session host (Testing/web/stand_in_host.py:
no trame, no model, no browser).

These tests check the limit under simultaneous visits, the end of a session after its last
tab disconnected, a host that dies, and the connection info the page asks for, in a few seconds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

import pytest

from interactive_keypoints.web.launcher import Launcher

sys.path.insert(0, str(Path(__file__).parent / "web"))
from stand_in_host import running, stand_in_host_command, visit, wait_until  # noqa: E402


@pytest.fixture
def host_command(tmp_path):
    def command(host_delay: float = 0.5, open_delay: float = 0.1):
        return stand_in_host_command(tmp_path, host_delay, open_delay)

    return command


@pytest.mark.slow
@pytest.mark.parametrize("spares", [0, 1])
def test_the_limit_holds_when_visits_arrive_together(host_command, tmp_path, caplog, spares):
    caplog.set_level(logging.INFO, logger="interactive_keypoints.web.launcher")
    launcher = Launcher(autosave_root=tmp_path, max_sessions=3, spare_sessions=spares, host_command=host_command(0.5))

    async def scenario():
        async with running(launcher) as (base, client):
            answers = await asyncio.gather(*(visit(client, base) for _ in range(8)))
            statuses = sorted(status for status, _ in answers)
            assert statuses == [302] * 3 + [503] * 5
            assert len({location for status, location in answers if status == 302}) == 3
            assert launcher.started_count <= 3
            assert len(launcher.live_sessions()) <= 3
            assert launcher.hosts_started == 1  # one process runs them all

    asyncio.run(scenario())
    assert launcher.host.process.returncode is not None  # the host ends with the launcher
    refusals = [r for r in caplog.records if "refused a visit" in r.getMessage()]
    assert len(refusals) == 5 and all(r.levelno == logging.WARNING for r in refusals)
    assert launcher.started_count <= 3


@pytest.mark.slow
def test_a_spare_is_ready_before_the_visit_and_replaced(host_command, tmp_path):
    launcher = Launcher(autosave_root=tmp_path, max_sessions=3, spare_sessions=1, host_command=host_command(0.5))

    async def scenario():
        async with running(launcher) as (base, client):
            await wait_until(lambda: any(s.ready for s in launcher.spares()), 30)
            spare = launcher.spares()[0]
            status, location = await visit(client, base)
            assert (status, location) == (302, f"/s/{spare.id}/")
            assert len(launcher.spares()) == 1 and launcher.spares()[0] is not spare  # the next one starts
            async with client.get(base + location) as response:
                assert response.status == 200 and await response.text() == f"stand-in session {spare.id}"

    asyncio.run(scenario())


@pytest.mark.slow
def test_a_spare_waits_until_the_tabs_sessions_have_started(host_command, tmp_path):
    """On a small machine a spare starting alongside would slow the start a tab is waiting for."""
    launcher = Launcher(autosave_root=tmp_path, max_sessions=3, spare_sessions=1, host_command=host_command(1.5))

    async def scenario():
        async with running(launcher) as (base, client):
            first, second = asyncio.create_task(visit(client, base)), asyncio.create_task(visit(client, base))
            await asyncio.sleep(0.5)
            assert len(launcher.sessions) == 2 and not launcher.spares()  # the first took the starting spare
            assert sorted(status for status, _ in await asyncio.gather(first, second)) == [302, 302]
            await wait_until(lambda: len(launcher.spares()) == 1, 10)  # topped up once they are ready
            assert launcher.started_count == 3

    asyncio.run(scenario())


@pytest.mark.slow
def test_a_session_ends_soon_after_its_last_tab_disconnects(host_command, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="interactive_keypoints.web.launcher")
    launcher = Launcher(
        autosave_root=tmp_path, max_sessions=2, spare_sessions=0, reconnect_grace=1.5, host_command=host_command(0.2)
    )

    async def scenario():
        async with running(launcher) as (base, client):
            status, location = await visit(client, base)
            assert status == 302
            session = launcher.sessions[location.split("/")[2]]

            async with client.ws_connect(base + location + "ws") as ws:  # the tab's websocket
                await ws.send_str("hello")
                assert (await ws.receive()).data == "hello"
            # a reload: the tab comes back within the grace period and keeps its session
            await asyncio.sleep(0.5)
            async with client.ws_connect(base + location + "ws") as ws:
                await asyncio.sleep(2.0)  # longer than the grace period, while connected
                assert session.alive and not session.closed
                await ws.send_str("still here")
                assert (await ws.receive()).data == "still here"
            # the tab is closed: the session ends, the host lets go of it, the page says so
            seconds = await wait_until(lambda: session.closed, 15)
            print(f"session closed by its host {seconds:.1f} s after its tab closed (grace 1.5 s)")
            async with client.get(base + location) as response:
                assert response.status == 410
            assert len(launcher.live_sessions()) == 0
            assert (await visit(client, base))[0] == 302  # its place is free again

    asyncio.run(scenario())
    messages = [r.getMessage() for r in caplog.records]
    assert any("last tab disconnected" in m for m in messages)
    assert any("ended: its tab did not reconnect" in m for m in messages)


@pytest.mark.slow
def test_a_session_no_tab_connects_to_ends_after_the_idle_timeout(host_command, tmp_path):
    launcher = Launcher(
        autosave_root=tmp_path, max_sessions=1, spare_sessions=0, idle_timeout=1, host_command=host_command(0.2)
    )

    async def scenario():
        async with running(launcher) as (base, client):
            status, location = await visit(client, base)
            session = launcher.sessions[location.split("/")[2]]
            await wait_until(lambda: session.closed, 15)
            assert (await visit(client, base))[0] == 302

    asyncio.run(scenario())


@pytest.mark.slow
def test_a_host_that_dies_ends_its_sessions_and_the_next_visit_gets_a_new_one(host_command, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="interactive_keypoints.web.launcher")
    launcher = Launcher(autosave_root=tmp_path, max_sessions=2, spare_sessions=0, host_command=host_command(0.2))

    async def scenario():
        async with running(launcher) as (base, client):
            _, location = await visit(client, base)
            session = launcher.sessions[location.split("/")[2]]
            os.kill(launcher.host.process.pid, signal.SIGKILL)
            await wait_until(lambda: session.closed, 15)
            async with client.get(base + location) as response:
                assert response.status == 410  # "This session has ended"
            status, location = await visit(client, base)
            assert status == 302 and launcher.hosts_started == 2
            async with client.get(base + location) as response:
                assert response.status == 200 and "stand-in session" in await response.text()

    asyncio.run(scenario())
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("session host exited with -9; its 1 sessions ended" in m for m in errors)


@pytest.mark.slow
def test_the_page_is_told_its_websocket_address(host_command, tmp_path):
    """trame's page POSTs to ./paraview/ first (a 405 there was a console error on every page)."""
    launcher = Launcher(autosave_root=tmp_path, max_sessions=1, spare_sessions=0, host_command=host_command(0.2))

    async def scenario():
        async with running(launcher) as (base, client):
            _, location = await visit(client, base)
            session_id = location.split("/")[2]
            assert session_id == session_id.lower()  # the page lower-cases the address it is given
            async with client.post(base + location + "paraview/", json={"application": "trame"}) as response:
                assert response.status == 200
                assert (await response.json())["sessionURL"] == f"ws://USE_HOST/s/{session_id}/ws"
            async with client.post(base + "/s/unknown/paraview/", json={}) as response:
                assert response.status == 410 and "ended" in (await response.json())["error"]

    asyncio.run(scenario())


@pytest.mark.parametrize("option, value", [("max_sessions", 0), ("spare_sessions", -1)])
def test_bad_limits_are_refused_by_name(option, value):
    with pytest.raises(ValueError, match=option.replace("_", "-")):
        Launcher(**{option: value})
