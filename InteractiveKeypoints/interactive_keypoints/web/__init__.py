"""Browser app (trame-slicer): ``interactive-keypoints serve`` or ``python -m interactive_keypoints.web``.

Needs the ``web`` extra (trame-slicer with its standalone libraries) and, on a headless
server, EGL for offscreen rendering. :func:`serve` runs the launcher (one session per
browser tab, all in one session-host process); :func:`build_app` builds one session's trame app.
"""
