"""One safetensors weights file of a model folder (the network's, a shard, a part's).

Its own module so that model_io.py and the parts it loads (local_stage.py, click_decoder.py)
share it without importing each other.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import ModelConfig
from .errors import ModelFormatError
from .part_configs import ClickDecoderConfig, LocalStageConfig


def read_safetensors(path: Path) -> dict:
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelFormatError(f"{path} is not a readable safetensors file: {e}") from None


def save_part_weights(path: Path, network: torch.nn.Module, kind: str, dtype: torch.dtype | None = None) -> Path:
    """Write a model part's weights (floating tensors in ``dtype``, None: as they are) to
    ``path`` atomically (a killed run leaves the old file), tagged with its ``kind``."""
    state = {
        name: (t.to(dtype) if dtype is not None and t.is_floating_point() else t).detach().cpu().contiguous()
        for name, t in network.state_dict().items()
    }
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, tmp, metadata={"format": f"interactive-keypoints-{kind}"})
    tmp.replace(path)
    return path


def load_part_weights(network: torch.nn.Module, path: Path, described: str, entry: str) -> torch.nn.Module:
    """``network`` (in eval mode) with the weights of ``path``, checked: a missing file, names or
    shapes that differ are a ModelFormatError naming the ``model.json`` ``entry`` and the part
    as ``described`` (its size in words). Stored fp16 weights are upcast to the network's dtype."""
    if not path.is_file():
        raise ModelFormatError(f"model.json declares a {entry.replace('_', ' ')} but {path} is missing")
    state = read_safetensors(path)
    expected = network.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [n for n in expected if n in state and state[n].shape != expected[n].shape]
    if missing or unexpected or wrong:
        raise ModelFormatError(
            f"{path} does not match model.json's {entry} ({described}): "
            f"{len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} of another shape "
            f"(first: {(missing + unexpected + wrong)[0]})"
        )
    network.load_state_dict({n: t.to(expected[n].dtype) for n, t in state.items()})
    return network.eval()


def add_model_part(folder: str | Path, entry: str, network: torch.nn.Module, kind: str, dtype=None) -> Path:
    """Give an existing model folder a part (``entry``: ``local_stage``, ``click_decoder``): its
    weights (``network.config.weights``) and its config under ``entry`` in ``model.json``,
    validated before anything is written."""
    folder, part = Path(folder), cast(LocalStageConfig | ClickDecoderConfig, network.config)
    config = ModelConfig.load(folder / "model.json")
    setattr(config, entry, part.to_dict())
    config.validate()
    path = save_part_weights(folder / part.weights, network, kind, dtype)
    config.save(folder / "model.json")
    return path
