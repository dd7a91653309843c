"""Browser app (trame-slicer): ``interactive-keypoints serve``.

Needs the ``web`` extra (trame-slicer with its standalone libraries) and, on a headless
server, EGL for offscreen rendering. :func:`serve` runs the launcher (one session per
browser tab, all in one session-host process); :func:`build_app` builds one session's trame app.
"""


def serve(host: str = "127.0.0.1", port: int = 8080, model_dir=None, **kwargs):
    from .launcher import serve as _serve

    _serve(host, port, model_dir, **kwargs)


def main(argv=None):
    from .launcher import main as _main

    _main(argv)


def build_app(server=None, model_dir=None, **kwargs):
    from .app import build_app as _build_app

    return _build_app(server, model_dir=model_dir, **kwargs)
