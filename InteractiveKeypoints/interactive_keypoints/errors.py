"""One base class for the errors a user can cause and fix: a wrong file, a bad image, a drag
outside the image, a click while the model runs. The command line prints them as a message
(exit code 2) instead of a traceback; Slicer and the browser show them in their message area.

Each subclass also derives from the built-in class it used to be (ValueError, RuntimeError,
FileNotFoundError), so ``except ValueError`` around older calls keeps working.
"""


class KeypointsError(Exception):
    """A problem with the user's input or timing, reported as its message."""
