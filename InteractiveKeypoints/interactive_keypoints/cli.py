"""The ``interactive-keypoints`` command line.

Each subcommand is a module with ``add_arguments(parser)`` and ``run(args) -> int``. This
file only registers them. A subcommand's module is imported only when that subcommand is
run, so ``interactive-keypoints --help`` does not pay for torch, MONAI or trame.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__

# name -> (module, one-line help)
SUBCOMMANDS = {
    "demo": (
        "interactive_keypoints.demo",
        "run the model on a generated phantom radiograph and simulate one correction",
    ),
    "predict": ("interactive_keypoints.predict", "place landmarks on radiographs; write .mrk.json and .csv"),
    "pack": ("interactive_keypoints.pack", "pack a dataset's train/val images and labels for training elsewhere"),
    "train": ("interactive_keypoints.train", "train a model"),
    "train-local": ("interactive_keypoints.train_local", "train a model folder's full-resolution local stage"),
    "train-decoder": ("interactive_keypoints.train_decoder", "train a model folder's click decoder"),
    "evaluate": ("interactive_keypoints.evaluate.cli", "evaluate a model with simulated user corrections"),
    "compare": (
        "interactive_keypoints.evaluate.compare",
        "compare two evaluate runs of the same images: paired differences by click count",
    ),
    "serve": ("interactive_keypoints.web.launcher", "serve the browser app"),
}

# (module, class name) of errors caused by the user's input: printed as one line, exit 2
USER_ERROR_EXIT = 2


def _chosen(argv: list[str], names) -> str | None:
    """The subcommand named on the command line: the first argument that is not an option."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in names else None
    return None


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="interactive-keypoints",
        description="Interactive anatomical keypoint estimation on radiographs.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = _chosen(argv, SUBCOMMANDS)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == chosen:  # only the command being run is imported
            try:
                module = importlib.import_module(module_name)
            except ImportError as e:  # e.g. 'serve' without the web extra installed
                parser.error(f"'{name}' cannot run here: {e}")
            module.add_arguments(sub)
            sub.set_defaults(run=module.run)
    return parser


def _is_user_error(error: BaseException) -> bool:
    """Errors the user can fix, printed as a message; anything else is a bug: a traceback."""
    from .errors import KeypointsError

    return isinstance(error, (KeypointsError, FileNotFoundError))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if getattr(args, "run", None) is None:
        parser.print_help()
        return USER_ERROR_EXIT
    try:
        return int(args.run(args) or 0)
    except Exception as error:
        if not _is_user_error(error):
            raise
        print(f"error: {error}", file=sys.stderr)
        return USER_ERROR_EXIT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
