"""Who may use the launcher, and what each visitor reaches (#29): real HTTP and websockets
against the launcher on a loopback port, with the stand-in session host of
Testing/web/stand_in_host.py (no trame, no model, no browser).

A stranger gets 401 and no session; a signed-in browser gets one; a session answers only the
browser it was given to (its page, websocket and autosaves); one visitor cannot take every
session; old autosaves are removed; ``serve`` does not start on a shared address without a
secret. The page itself (data root, uploads, no server path) is checked in the browser by
test_web_shared_e2e.py.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from interactive_keypoints.web import access
from interactive_keypoints.web.access import PASSWORD, PROXY, TOKEN, Access, AccessError, choose_access, start_url
from interactive_keypoints.web.launcher import Launcher, main

sys.path.insert(0, str(Path(__file__).parent / "web"))
from stand_in_host import new_client, running, stand_in_host_command, visit, wait_until  # noqa: E402

TOKEN_VALUE = "a-test-token-of-some-length"
PASSWORD_VALUE = "correct horse battery"


def launcher(tmp_path, **options) -> Launcher:
    defaults = {"autosave_root": tmp_path / "autosaves", "spare_sessions": 0, "max_sessions": 3}
    return Launcher(host_command=stand_in_host_command(tmp_path, 0.2, 0.05), **{**defaults, **options})


async def status_of(client, method: str, url, **options) -> int:
    async with client.request(method, url, allow_redirects=False, **options) as response:
        return response.status


async def websocket_status(client, url) -> int:
    """101 when the websocket opens, else the status it was refused with."""
    try:
        async with client.ws_connect(url):
            return 101
    except aiohttp.WSServerHandshakeError as error:
        return error.status


async def strangers_are_refused(base: str, session_id: str, expected: int = 401):
    async with new_client() as stranger:
        assert await visit(stranger, base) == (expected, "")
        assert await status_of(stranger, "GET", f"{base}/s/{session_id}/") == expected
        assert await status_of(stranger, "POST", f"{base}/s/{session_id}/paraview/", json={}) == expected
        assert await status_of(stranger, "GET", f"{base}/s/{session_id}/autosaved/points.mrk.json") == expected
        assert await websocket_status(stranger, f"{base}/s/{session_id}/ws") == expected


# ------------------------------------------------------------------------------- access


@pytest.mark.slow
def test_without_the_token_no_session_and_with_it_a_session(tmp_path):
    served = launcher(tmp_path, access=Access(TOKEN, TOKEN_VALUE))

    async def scenario():
        async with running(served) as (base, client):
            assert await visit(client, base) == (401, "")
            assert await status_of(client, "GET", base + "/?token=not-the-token") == 401
            await asyncio.sleep(0.5)
            assert served.sessions == {} and served.started_count == 0  # no session was even reserved

            # the token's visit: a cookie, and the token taken out of the address
            async with client.get(base + "/?token=" + TOKEN_VALUE + "&keep=1", allow_redirects=False) as response:
                assert response.status == 303 and response.headers["Location"] == "/?keep=1"
                cookie = response.cookies[access.AUTH_COOKIE]
                assert cookie["httponly"] and cookie["samesite"] == "Lax" and TOKEN_VALUE not in cookie.value
            status, location = await visit(client, base)
            assert status == 302 and location.startswith("/s/")
            session_id = location.split("/")[2]
            async with client.get(base + location) as response:
                assert response.status == 200 and await response.text() == f"stand-in session {session_id}"
            assert await websocket_status(client, base + location + "ws") == 101

            await strangers_are_refused(base, session_id)
            assert len(served.sessions) == 1

    asyncio.run(scenario())


@pytest.mark.slow
def test_a_password_signs_in_and_wrong_ones_are_counted(tmp_path):
    served = launcher(tmp_path, access=Access(PASSWORD, PASSWORD_VALUE))

    async def scenario():
        async with running(served) as (base, client):
            async with client.get(base + "/") as response:
                assert response.status == 401 and "name='password'" in await response.text()
            wrong = {"password": "not it", "next": "/"}
            assert await status_of(client, "POST", base + "/sign-in", data=wrong) == 401
            # the form is the only thing read before signing in, and only a small one
            assert await status_of(client, "POST", base + "/sign-in", data={"password": "x" * 5000}) == 413
            async with client.post(
                base + "/sign-in", data={"password": PASSWORD_VALUE, "next": "//elsewhere.example/"}
            ) as response:
                assert response.history[0].status == 303
                assert response.history[0].headers["Location"] == "/"  # only a page of this server
            assert served.sessions  # the redirect to / gave a session
            session_id = next(iter(served.sessions))
            await strangers_are_refused(base, session_id)

            async with new_client() as guesser:
                for _ in range(access.MAX_FAILURES - 1):
                    assert await status_of(guesser, "POST", base + "/sign-in", data=wrong) == 401
                # too many wrong tries from one client: even the right password waits
                right = {"password": PASSWORD_VALUE, "next": "/"}
                assert await status_of(guesser, "POST", base + "/sign-in", data=right) == 429

    asyncio.run(scenario())


@pytest.mark.slow
def test_behind_a_signing_in_proxy_only_requests_with_its_user_pass(tmp_path):
    served = launcher(tmp_path, access=Access(PROXY), max_sessions_per_client=1)

    async def scenario():
        async with running(served) as (base, client):
            assert await visit(client, base) == (401, "")
            alice, bob = {"X-Forwarded-User": "alice"}, {"X-Forwarded-User": "bob"}
            async with client.get(base + "/", headers=alice, allow_redirects=False) as response:
                assert response.status == 302
                location = response.headers["Location"]
            assert await status_of(client, "GET", base + location) == 401  # the header on every request
            assert await status_of(client, "GET", base + location, headers=alice) == 200
            # the cap counts the proxy's users, not its one address
            assert await status_of(client, "GET", base + "/", headers=alice) == 429
            async with new_client() as other:
                assert await status_of(other, "GET", base + "/", headers=bob) == 302

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "host, options",
    [
        ("0.0.0.0", []),
        ("192.0.2.7", []),
        ("", []),
        ("myserver.example", []),
        ("0.0.0.0", ["--token", "--no-auth"]),
        ("0.0.0.0", ["--password-file", "/nonexistent/password"]),
    ],
)
def test_serve_does_not_start_on_a_shared_address_without_one_secret(host, options, capsys):
    assert main(["--host", host, "--port", "0", *options]) == 2
    error = capsys.readouterr().err
    assert "--token" in error or "password file" in error


def test_the_access_modes_are_chosen_by_name(tmp_path, monkeypatch):
    assert choose_access("127.0.0.1") == Access()
    assert choose_access("::1").mode == access.OPEN
    assert choose_access("localhost").mode == access.OPEN
    assert choose_access("0.0.0.0", no_auth=True).mode == access.OPEN
    assert choose_access("0.0.0.0", trust_proxy_auth=True, user_header="X-Remote-User") == Access(
        PROXY, user_header="X-Remote-User"
    )
    monkeypatch.delenv(access.TOKEN_ENVIRONMENT, raising=False)
    first, second = choose_access("0.0.0.0", token=True), choose_access("0.0.0.0", token=True)
    assert first.mode == TOKEN and len(first.secret) >= 32 and first.secret != second.secret
    monkeypatch.setenv(access.TOKEN_ENVIRONMENT, TOKEN_VALUE)
    assert choose_access("0.0.0.0", token=True).secret == TOKEN_VALUE
    assert start_url("127.0.0.1", 8080, Access(TOKEN, TOKEN_VALUE)) == f"http://127.0.0.1:8080/?token={TOKEN_VALUE}"

    password = tmp_path / "password"
    password.write_text(PASSWORD_VALUE + "\n")
    assert choose_access("0.0.0.0", password_file=password) == Access(PASSWORD, PASSWORD_VALUE)
    password.write_text("short\n")
    with pytest.raises(AccessError, match="shorter than"):
        choose_access("0.0.0.0", password_file=password)


# ----------------------------------------------------------------- each session its own


async def a_session(client, base) -> str:
    status, location = await visit(client, base)
    assert status == 302, status
    return location.split("/")[2]


def encoded(base: str, path: str) -> URL:
    """A URL sent exactly as written (no normalising of dots or escapes by the client)."""
    return URL(base + path, encoded=True)


@pytest.mark.slow
def test_a_session_answers_only_the_browser_it_was_given_to(tmp_path):
    served = launcher(tmp_path, reconnect_grace=0.5)

    async def scenario():
        async with running(served) as (base, mine), new_client() as theirs:
            my_id, their_id = await a_session(mine, base), await a_session(theirs, base)
            await wait_until(lambda: all(s.ready for s in served.sessions.values()), 15)

            # the other browser's page, connection, websocket and autosave are not reachable
            assert await status_of(mine, "GET", f"{base}/s/{their_id}/") == 403
            assert await status_of(mine, "POST", f"{base}/s/{their_id}/paraview/", json={}) == 403
            assert await websocket_status(mine, f"{base}/s/{their_id}/ws") == 403
            assert await status_of(mine, "GET", f"{base}/s/{their_id}/autosaved/points.mrk.json") == 404
            # ... nor through my own session's addresses, however the path is written
            for path in [
                f"/s/{my_id}/autosaved/..%2F{their_id}%2Fpoints.mrk.json",
                f"/s/{my_id}/autosaved/%2e%2e%2f{their_id}%2fpoints.mrk.json",
                f"/s/{my_id}/autosaved/..%5C{their_id}%5Cpoints.mrk.json",
                f"/s/{my_id}/../{their_id}/autosaved/points.mrk.json",
                f"/s/{my_id}/%2e%2e/{their_id}/autosaved/points.mrk.json",
                f"/s/{my_id}/..%2f..%2fetc%2fpasswd",
                f"/s/{my_id}/%2e%2e/%2e%2e/etc/passwd",
                f"/s/{my_id}/autosaved/%2Fetc%2Fpasswd",
                f"/s/%2e%2e/{their_id}/",
            ]:
                async with mine.get(encoded(base, path), allow_redirects=False) as response:
                    body = await response.text()
                    assert response.status in (403, 404, 410), (path, response.status)
                    assert their_id not in body.replace(f"/s/{their_id}/", "") and "root:" not in body, path

            # my own autosave is mine to download, while the session runs and after it ended
            async with mine.get(f"{base}/s/{my_id}/autosaved/points.mrk.json") as response:
                assert response.status == 200 and my_id in await response.text()
                assert "attachment" in response.headers["Content-Disposition"]
            async with mine.ws_connect(f"{base}/s/{my_id}/ws"):
                pass  # the tab closes: the session ends after the grace period
            session = served.sessions[my_id]
            await wait_until(lambda: session.closed, 15)
            async with mine.get(f"{base}/s/{my_id}/") as response:
                assert response.status == 410
                assert f"/s/{my_id}/autosaved/points.mrk.json" in await response.text()
            async with theirs.get(f"{base}/s/{my_id}/") as response:
                assert response.status == 410 and "autosaved" not in await response.text()
            assert await status_of(theirs, "GET", f"{base}/s/{my_id}/autosaved/points.mrk.json") == 404
            assert await status_of(mine, "GET", f"{base}/s/{my_id}/autosaved/points.mrk.json") == 200

    asyncio.run(scenario())


@pytest.mark.slow
def test_one_visitor_cannot_take_every_session(tmp_path):
    served = launcher(tmp_path, max_sessions=3, max_sessions_per_client=2)

    async def scenario():
        async with running(served) as (base, client):
            assert [(await visit(client, base))[0] for _ in range(3)] == [302, 302, 429]
            # another machine (another loopback address) still gets a session
            async with new_client(local_addr=("127.0.0.2", 0)) as other:
                assert (await visit(other, base))[0] == 302
                assert (await visit(other, base))[0] == 503  # now the server is full

    asyncio.run(scenario())


@pytest.mark.slow
def test_behind_a_proxy_on_this_machine_each_forwarded_address_is_a_visitor(tmp_path):
    served = launcher(tmp_path, access=Access(PASSWORD, PASSWORD_VALUE), max_sessions=4, max_sessions_per_client=1)

    async def scenario():
        async with running(served) as (base, client):
            await client.post(base + "/sign-in", data={"password": PASSWORD_VALUE, "next": "/s/none/"})

            async def visit_from(forwarded_for: str) -> int:
                return await status_of(client, "GET", base + "/", headers={"X-Forwarded-For": forwarded_for})

            assert await visit_from("203.0.113.5") == 302
            assert await visit_from("203.0.113.5") == 429
            assert await visit_from("198.51.100.7") == 302
            # the proxy adds the address it saw last: a first entry sent by the visitor changes nothing
            assert await visit_from("192.0.2.1, 198.51.100.7") == 429

    asyncio.run(scenario())


# --------------------------------------------------------------------------- autosaves


@pytest.mark.slow
def test_old_autosaves_are_removed_and_recent_or_live_ones_kept(tmp_path):
    root = tmp_path / "autosaves"
    old, recent, not_ours = root / ("a" * 24), root / ("b" * 24), root / "my-notes"
    for folder in (old, recent, not_ours):
        folder.mkdir(parents=True)
        (folder / "points.mrk.json").write_text("{}")
    twenty_days_ago = time.time() - 20 * 86400
    for path in (old, old / "points.mrk.json", not_ours, not_ours / "points.mrk.json"):
        os.utime(path, (twenty_days_ago, twenty_days_ago))
    served = launcher(tmp_path, keep_autosaves_days=14, sweep_every_s=0.2)

    async def scenario():
        async with running(served) as (base, client):
            await wait_until(lambda: not old.exists(), 5)  # removed at start
            assert recent.exists() and not_ours.exists()
            live_id = await a_session(client, base)
            await wait_until(lambda: served.sessions[live_id].ready, 15)
            live = root / live_id
            for path in (live, live / "points.mrk.json"):
                os.utime(path, (twenty_days_ago, twenty_days_ago))
            await asyncio.sleep(1.0)  # several sweeps
            assert live.exists(), "a live session's autosave was removed"

    asyncio.run(scenario())


def test_autosaves_may_not_lie_inside_the_data_root(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(ValueError, match="inside --data-root"):
        Launcher(autosave_root=tmp_path / "images" / "autosaves", data_root=tmp_path / "images")
    with pytest.raises(ValueError, match="not a folder"):
        Launcher(autosave_root=tmp_path / "autosaves", data_root=tmp_path / "missing")
    served = Launcher(autosave_root=tmp_path / "autosaves", data_root=tmp_path / "images")
    assert served.session_args[-2:] == ["--data-root", str((tmp_path / "images").resolve())]
