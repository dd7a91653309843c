"""Browser app (trame-slicer): ``interactive-keypoints serve`` or ``python -m interactive_keypoints.web``.

Needs the ``web`` extra (trame-slicer with its standalone libraries) and, on a headless
server, EGL for offscreen rendering. :mod:`.launcher` serves (one session process per
browser tab); :mod:`.app` builds one session's trame app.
"""
