"""One base class for the errors a user can cause and fix: a wrong file, a bad image, a drag
outside the image, a click while the model runs. The command line prints them as a message
(exit code 2) instead of a traceback; Slicer and the browser show them in their message area.

Each subclass also derives from the built-in class it used to be (ValueError, RuntimeError,
FileNotFoundError), so ``except ValueError`` around older calls keeps working.
"""


class KeypointsError(Exception):
    """A problem with the user's input or timing, reported as its message."""


# Also a ValueError: these checks raised ValueError before, and callers and tests that catch
# ValueError (pytest.raises(ValueError, ...), ``except ValueError`` in scripts) keep working.
class UsageError(KeypointsError, ValueError):
    """A command-line option or argument the run cannot use (``--limit 0``, ``--pack`` with
    ``--data-root``, a ``--split`` the dataset lacks, a model that does not fit the dataset)."""


# Here, not in config.py: config.py and the model folder's parts (part_configs.py,
# local_stage.py, click_decoder.py) all raise it, and none of them has to import another for it.
class ModelFormatError(KeypointsError, ValueError):
    """A model folder or config that cannot be used (missing, corrupt or inconsistent)."""
