"""Who may use the server: ``serve``'s ``--token``, ``--password-file``, ``--trust-proxy-auth``
and ``--no-auth``.

On a loopback address the server is this machine's alone, as it always was. On any other
address ``serve`` refuses to start unless one way of telling its users from strangers is
named (:func:`choose_access`):

- a token (``--token``): printed in the start-up URL; the first visit with it sets a cookie
  and takes the token out of the address bar;
- a password (``--password-file``): a sign-in form sets the same cookie;
- a reverse proxy that signs users in (``--trust-proxy-auth``): every request must carry the
  user name the proxy puts in its header (``X-Forwarded-User`` unless ``--proxy-user-header``);
- ``--no-auth``: anyone who can reach the port.

:class:`AccessGate`'s middleware runs before every handler of the launcher (pages, the page's
connection request, websockets, downloads): a stranger gets 401 and never a session. The
cookie holds an HMAC of a fixed text keyed by the secret, so the secret itself is sent once;
comparisons are hmac.compare_digest. Wrong tokens and passwords are counted per client, and
a client with too many in a while is refused for the rest of it (429).
"""

from __future__ import annotations

import hashlib
import hmac
import html
import ipaddress
import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from ..errors import KeypointsError
from .pages import page

log = logging.getLogger(__name__)

OPEN, TOKEN, PASSWORD, PROXY = "open", "token", "password", "proxy"
TOKEN_ENVIRONMENT = "INTERACTIVE_KEYPOINTS_TOKEN"  # a token of one's own, kept out of the process list
PROXY_USER_HEADER = "X-Forwarded-User"  # oauth2-proxy's; nginx and Apache set it from their sign-in
AUTH_COOKIE = "ik_auth"
COOKIE_DAYS = 30
SIGN_IN_PATH = "/sign-in"
MIN_PASSWORD_LENGTH = 8
MAX_FAILURES = 5  # wrong tokens or passwords from one client within FAILURE_WINDOW_S
FAILURE_WINDOW_S = 600.0
FORM_BYTES = 4096  # the sign-in form is read only up to this size
UNCHECKED_PATHS = {"/favicon.ico"}  # the launcher answers it with an empty 204


class AccessError(KeypointsError, ValueError):
    """``serve``'s access options do not fit the address (or each other)."""


@dataclass(frozen=True)
class Access:
    mode: str = OPEN
    secret: str = ""  # the token or the password
    user_header: str = PROXY_USER_HEADER

    @property
    def exposed(self) -> bool:
        """Whether the server is meant for other people than the one who started it."""
        return self.mode in (TOKEN, PASSWORD, PROXY)

    def cookie_value(self) -> str:
        """What the cookie holds: fixed for a secret, useless without it."""
        return hmac.new(self.secret.encode(), b"interactive-keypoints signed in", hashlib.sha256).hexdigest()

    def client(self, request: web.Request) -> str:
        """Who is asking, for per-client limits: the proxy's signed-in user, else the address;
        behind a proxy on this machine (the request comes from loopback), the address the proxy
        saw, which it adds last to X-Forwarded-For (one sent from elsewhere is not believed)."""
        if self.mode == PROXY and request.headers.get(self.user_header):
            return "user " + request.headers[self.user_header]
        remote = request.remote or "unknown"
        forwarded = request.headers.get("X-Forwarded-For", "")
        if forwarded and is_loopback(remote):
            return forwarded.split(",")[-1].strip() or remote
        return remote


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name or "" (every address)
        return False


def choose_access(
    host: str,
    token: bool = False,
    password_file=None,
    trust_proxy_auth: bool = False,
    no_auth: bool = False,
    user_header: str = PROXY_USER_HEADER,
) -> Access:
    """The one access mode the options name; on a non-loopback ``host`` one must be named."""
    named = [name for name, given in (("--token", token), ("--password-file", password_file),
                                      ("--trust-proxy-auth", trust_proxy_auth), ("--no-auth", no_auth)) if given]  # fmt: skip
    if len(named) > 1:
        raise AccessError(f"choose one of {' and '.join(named)}")
    if not named:
        if not is_loopback(host):
            raise AccessError(
                f"--host {host or '(every address)'} serves other machines: name how visitors are let in, "
                "--token (a random token, printed in the address to open), --password-file FILE, "
                "--trust-proxy-auth (a reverse proxy signs users in) or --no-auth (anyone who reaches the port)"
            )
        return Access(OPEN)
    if token:
        return Access(TOKEN, os.environ.get(TOKEN_ENVIRONMENT) or secrets.token_urlsafe(24))
    if password_file:
        return Access(PASSWORD, _read_password(Path(password_file)))
    if trust_proxy_auth:
        return Access(PROXY, user_header=user_header)
    return Access(OPEN)


def _read_password(path: Path) -> str:
    try:
        password = path.read_text().rstrip("\r\n")
    except OSError as error:
        raise AccessError(f"cannot read the password file {path}: {error.strerror or error}") from None
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccessError(f"the password in {path} is shorter than {MIN_PASSWORD_LENGTH} characters")
    return password


def start_url(host: str, port: int, access: Access) -> str:
    """The address to open, printed at start (with the token, in token mode)."""
    shown = socket.gethostname() if host in ("", "0.0.0.0", "::") else host
    if ":" in shown:  # an IPv6 address
        shown = f"[{shown}]"
    query = f"?token={access.secret}" if access.mode == TOKEN else ""
    return f"http://{shown}:{port}/{query}"


def is_https(request: web.Request) -> bool:
    """Whether the browser reached us over TLS (directly, or through a proxy that says so)."""
    return request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"


class AccessGate:
    """The launcher's check of every request (see the module's description)."""

    def __init__(self, access: Access):
        self.access = access
        self._failures: dict[str, list[float]] = {}  # client -> times of wrong tokens or passwords

    @web.middleware
    async def middleware(self, request: web.Request, handler):
        mode = self.access.mode
        if mode == OPEN or request.path in UNCHECKED_PATHS:
            return await handler(request)
        if mode == PROXY:
            if request.headers.get(self.access.user_header):
                return await handler(request)
            return self._refuse(request, 401, "Sign-in needed", "Open this app through its sign-in page.")
        if self._signed_in(request):
            return await handler(request)
        if self._too_many_failures(request):
            return self._refuse(
                request, 429, "Too many wrong tries", "Wait a few minutes, then open the address you were given."
            )
        if mode == TOKEN and "token" in request.query:
            return self._token_visit(request)
        if mode == PASSWORD:
            if request.path == SIGN_IN_PATH and request.method == "POST":
                return await self._sign_in(request)
            return self._sign_in_page(request.path_qs if request.method == "GET" else "/", wrong=False)
        return self._refuse(
            request,
            401,
            "Sign-in needed",
            "Open the address printed when the server started (it carries the token); "
            "after that this browser is remembered.",
        )

    def _signed_in(self, request: web.Request) -> bool:
        cookie = request.cookies.get(AUTH_COOKIE, "")
        return hmac.compare_digest(cookie.encode(), self.access.cookie_value().encode())

    def _signed_in_response(self, request: web.Request, location: str) -> web.Response:
        response = web.Response(status=303, headers={"Location": location})
        response.set_cookie(
            AUTH_COOKIE,
            self.access.cookie_value(),
            max_age=COOKIE_DAYS * 86400,
            path="/",
            httponly=True,
            samesite="Lax",
            secure=is_https(request),
        )
        log.info("signed in a browser at %s", self.access.client(request))
        return response

    def _token_visit(self, request: web.Request) -> web.Response:
        if not hmac.compare_digest(request.query["token"].encode(), self.access.secret.encode()):
            self._count_failure(request)
            return self._refuse(request, 401, "Wrong token", "That address does not carry this server's token.")
        rest = request.rel_url.query.copy()
        rest.popall("token")
        # the token leaves the address bar (and the history); the cookie stands for it
        return self._signed_in_response(request, str(request.rel_url.with_query(rest)))

    async def _sign_in(self, request: web.Request) -> web.Response:
        if request.content_length is None or request.content_length > FORM_BYTES:
            return page(413, "Sign-in form too large", "Send the sign-in form of this page.")
        form = await request.post()
        password = str(form.get("password", ""))
        target = str(form.get("next", "/"))
        if not target.startswith("/") or target.startswith("//"):  # only a page of this server
            target = "/"
        given = hmac.new(b"password", password.encode(), hashlib.sha256).digest()
        expected = hmac.new(b"password", self.access.secret.encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(given, expected):
            self._count_failure(request)
            log.warning("a wrong password from %s", self.access.client(request))
            return self._sign_in_page(target, wrong=True)
        return self._signed_in_response(request, target)

    def _sign_in_page(self, target: str, wrong: bool) -> web.Response:
        form = (
            f"<form method='post' action='{SIGN_IN_PATH}'>"
            f"<input type='hidden' name='next' value='{html.escape(target, quote=True)}'>"
            "<input type='password' name='password' id='ik-password' autofocus autocomplete='current-password'> "
            "<button type='submit' id='ik-sign-in'>Sign in</button></form>"
        )
        message = "That password is not this server's. " if wrong else ""
        return page(401, "Sign in", f"{message}This server asks for its password.{form}")

    def _refuse(self, request: web.Request, status: int, title: str, text: str) -> web.Response:
        log.warning("refused %s %s from %s: %s", request.method, request.path, self.access.client(request), title)
        return page(status, title, html.escape(text))

    def _recent_failures(self, client: str) -> list[float]:
        now = time.monotonic()
        recent = [t for t in self._failures.get(client, []) if now - t < FAILURE_WINDOW_S]
        if recent:
            self._failures[client] = recent
        else:
            self._failures.pop(client, None)
        return recent

    def _too_many_failures(self, request: web.Request) -> bool:
        return len(self._recent_failures(self.access.client(request))) >= MAX_FAILURES

    def _count_failure(self, request: web.Request):
        client = self.access.client(request)
        self._failures[client] = [*self._recent_failures(client), time.monotonic()]
