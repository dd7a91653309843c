"""Reading one safetensors weights file of a model folder (the network's, a shard, a part's).

Its own module so that model_io.py and the parts it loads (local_stage.py, click_decoder.py)
share it without importing each other.
"""

from __future__ import annotations

from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file

from .errors import ModelFormatError


def read_safetensors(path: Path) -> dict:
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelFormatError(f"{path} is not a readable safetensors file: {e}") from None
