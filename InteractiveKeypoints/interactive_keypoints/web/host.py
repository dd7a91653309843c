"""Several sessions in one process: the libraries and the model are loaded once.

A session (:class:`.app.KeypointsWebApp`) is a trame server of its own on a loopback port,
with its own state, MRML scene and logic; the host runs all of them in its event loop, and
they share only the read-only model and its one inference thread (:class:`.SharedModel`).
A new session is then built in about a second, where a process of its own needs several to
import torch, VTK and MRML, and takes ~100 MB, not ~1 GB.

The launcher starts the host (``python -m interactive_keypoints.web.host``) and asks it for
sessions in JSON lines on its stdin; the host answers on stdout in lines starting with
``IK_HOST`` (:mod:`.protocol`; other output is the libraries' own)::

    (once the model is loaded)                         {"event": "host-ready"}
    {"open": ID, "autosave_dir": DIR}              ->  {"event": "ready", "id": ID, "port": PORT}
                                                       or {"event": "failed", "id": ID, "error": ...}
    {"close": ID}                                  ->  {"event": "closed", "id": ID}

The host ends its sessions and exits when its stdin closes (the launcher has gone) or on
SIGTERM; the points of every session are autosaved after each change.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import faulthandler
import gc
import json
import logging
import signal
import sys

from .protocol import host_line

log = logging.getLogger(__name__)


def announce(event: str, **fields):
    print(host_line(event, **fields), flush=True)


def _server_name(session_id: str) -> str:
    return f"interactive-keypoints-{session_id}"


def _give_back_freed_memory():
    """glibc keeps freed memory for reuse; a closed session's is returned to the system."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class SessionHost:
    def __init__(self, shared_model, session_options: dict):
        self.shared_model = shared_model
        self.session_options = session_options  # max_file_bytes, max_pixels, data_root, run_hooks, ...; see app
        self.apps = {}  # session id -> KeypointsWebApp
        self.tasks: dict[str, set[asyncio.Task]] = {}  # session id -> tasks started while building it

    async def open(self, session_id: str, autosave_dir: str | None):
        from trame.app import get_server

        from .app import build_app

        if session_id in self.apps:
            announce("failed", id=session_id, error="a session with this id is open already")
            return
        try:
            # built in one go on the loop thread: the views take the MRML application logic
            # of this session's SlicerApp from a process-wide factory when they are created
            server = get_server(name=_server_name(session_id), client_type="vue3")
            before = asyncio.all_tasks()
            app = build_app(server, autosave_dir=autosave_dir, shared_model=self.shared_model, **self.session_options)
            self.apps[session_id] = app
            # the loops it started (the views' render and push): they run until cancelled
            self.tasks[session_id] = asyncio.all_tasks() - before
            server.start(
                host="127.0.0.1",
                port=0,
                open_browser=False,
                show_connection_info=False,
                timeout=0,
                exec_mode="task",
                thread=True,
            )  # thread: no signal handlers per server
            await server.ready
        except Exception as error:  # noqa: BLE001 - reported to the launcher, which tells the user
            log.exception("session %s could not start", session_id)
            await self.close(session_id, quiet=True)
            announce("failed", id=session_id, error=f"{type(error).__name__}: {error}")
            return
        announce("ready", id=session_id, port=server.port)

    async def close(self, session_id: str, quiet: bool = False):
        from trame.app.core import AVAILABLE_SERVERS

        app = self.apps.pop(session_id, None)
        tasks = self.tasks.pop(session_id, set())
        if app is not None:
            try:
                await app.server.stop()
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            finally:
                app.close()
                AVAILABLE_SERVERS.pop(_server_name(session_id), None)
                del app
                gc.collect()  # the scene's VTK objects are held in cycles with their Python observers
                _give_back_freed_memory()
        if not quiet:
            announce("closed", id=session_id)

    async def close_all(self):
        for session_id in list(self.apps):
            await self.close(session_id)

    async def follow(self, commands: asyncio.StreamReader):
        """Carry out the launcher's commands in order until it closes our stdin."""
        while line := await commands.readline():
            try:
                command = json.loads(line)
                if "open" in command:
                    await self.open(str(command["open"]), command.get("autosave_dir"))
                elif "close" in command:
                    await self.close(str(command["close"]))
                else:
                    raise ValueError("neither open nor close")
            except (ValueError, TypeError, KeyError) as error:
                log.error("host: ignored a command that is not understood (%s): %r", error, line[:200])


async def serve(shared_model, session_options: dict):
    loop = asyncio.get_running_loop()
    try:
        await loop.run_in_executor(None, shared_model.load)
    except Exception as error:  # noqa: BLE001 - each session page shows it (its own preload fails too)
        log.error("model not available: %s", error)
    from . import app  # noqa: F401 - imported before the freeze below

    # the libraries and the model are most of the objects and live as long as the process:
    # kept out of later collections, a closed session's gc pass takes ms, not ~0.4 s of the loop
    gc.freeze()
    host = SessionHost(shared_model, session_options)
    stopped = asyncio.Event()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stopped.set)
    commands = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)
    announce("host-ready")
    following = asyncio.create_task(host.follow(commands))
    stopping = asyncio.create_task(stopped.wait())
    await asyncio.wait({following, stopping}, return_when=asyncio.FIRST_COMPLETED)
    following.cancel()
    await host.close_all()
    shared_model.shutdown()


def build_parser() -> argparse.ArgumentParser:
    from .app import add_session_arguments

    parser = argparse.ArgumentParser(description="InteractiveKeypoints: the process that runs the browser sessions")
    add_session_arguments(parser)
    parser.add_argument(
        "--inference-threads",
        type=int,
        default=None,
        help="threads of a model run (default: torch's, which follows OMP_NUM_THREADS)",
    )
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    sys.argv = sys.argv[:1]  # trame reads the command line when a server starts: ours is not for it
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # one line per model run (its time, and the wait from the request to the points in MRML)
    logging.getLogger("interactive_keypoints.mrml_logic").setLevel(logging.INFO)
    from .app import session_options, set_session_environment
    from .shared_model import SharedModel

    set_session_environment(args.max_file_mb)
    # `kill -USR1 <host pid>` prints every thread's stack (to the launcher's log): a hung session is diagnosable
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    if args.inference_threads:
        import torch

        torch.set_num_threads(args.inference_threads)
    asyncio.run(serve(SharedModel(args.model), session_options(args)))


if __name__ == "__main__":
    main(sys.argv[1:])
