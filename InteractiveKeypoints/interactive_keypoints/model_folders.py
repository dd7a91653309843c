"""Where the shipped models are: one discovery function for the Slicer panel, the MRML
logic (also without the panel: console, batch scripts), the command line and the web app.

A model is a folder with ``model.json`` and ``model.safetensors``. The places searched, in
order (the first folder of a given name wins):

1. the folder named by ``$INTERACTIVE_KEYPOINTS_MODELS``;
2. ``Resources/Models`` next to this package: an installed Slicer extension puts the
   package and the models side by side in its ``qt-scripted-modules`` folder;
3. ``models/`` of a source checkout (two levels above this package).

Needs neither torch nor Slicer, so the GUI thread can list models without importing torch.
"""

from __future__ import annotations

import os
from pathlib import Path

from .config import ModelFormatError

WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"  # weights in shards (model_io)
CONFIG_FILE = "model.json"
MODELS_ENV = "INTERACTIVE_KEYPOINTS_MODELS"  # another models folder
DEFAULT_MODEL_NAME = "aasce-spine-68"  # trained on real radiographs: the default everywhere
PHANTOM_MODEL_NAME = "phantom-spine-68"  # trained on generated phantoms: the demo's default
PREFERRED_MODEL_NAMES = (DEFAULT_MODEL_NAME, PHANTOM_MODEL_NAME)

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_MODELS_DIR = PACKAGE_DIR.parents[1] / "models"


def models_dirs(package_dir: Path = PACKAGE_DIR) -> list[Path]:
    """The folders that may hold model folders, in search order (existing or not)."""
    package_dir = Path(package_dir)
    extra = os.environ.get(MODELS_ENV)
    candidates = [Path(extra)] if extra else []
    candidates += [package_dir.parent / "Resources" / "Models", package_dir.parents[1] / "models"]
    unique = []
    for folder in candidates:
        if folder not in unique:
            unique.append(folder)
    return unique


def has_weights(folder) -> bool:
    """Weights in one file or in shards with their index (model_io writes either)."""
    folder = Path(folder)
    return (folder / WEIGHTS_FILE).is_file() or (folder / WEIGHTS_INDEX_FILE).is_file()


def is_model_folder(folder) -> bool:
    return (Path(folder) / CONFIG_FILE).is_file() and has_weights(folder)


def shipped_models(preference=PREFERRED_MODEL_NAMES, package_dir: Path = PACKAGE_DIR) -> list[Path]:
    """All model folders found, those named in ``preference`` first (in that order)."""
    found: dict[str, Path] = {}
    for models in models_dirs(package_dir):
        if models.is_dir():
            for config in sorted(models.glob(f"*/{CONFIG_FILE}")):
                if is_model_folder(config.parent):
                    found.setdefault(config.parent.name, config.parent)
    preferred = [found.pop(name) for name in preference if name in found]
    return preferred + sorted(found.values())


def default_model_dir(preference=PREFERRED_MODEL_NAMES, package_dir: Path = PACKAGE_DIR) -> Path:
    """The first model found in ``preference`` order."""
    for name in preference:
        for models in models_dirs(package_dir):
            if is_model_folder(models / name):
                return models / name
    searched = ", ".join(map(str, models_dirs(package_dir)))
    raise ModelFormatError(f"no shipped model ({', '.join(preference)}) in {searched}")
