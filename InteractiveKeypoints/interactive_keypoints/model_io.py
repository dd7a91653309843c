"""A model is a folder: ``model.safetensors`` (weights) + ``model.json`` (ModelConfig).

No pickle anywhere: weights are safetensors, everything else is JSON. Weights may be
stored in fp16/bf16 to keep git small; loading upcasts them to fp32.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import ModelConfig, ModelFormatError
from .model import InteractiveKeypointNet

# model discovery lives in model_folders (no torch); re-exported for existing callers
from .model_folders import (  # noqa: F401
    CONFIG_FILE,
    DEFAULT_MODEL_NAME,
    MODELS_ENV,
    PHANTOM_MODEL_NAME,
    REPO_MODELS_DIR,
    WEIGHTS_FILE,
    default_model_dir,
    models_dirs,
    shipped_models,
)


@dataclass
class KeypointModel:
    config: ModelConfig
    network: InteractiveKeypointNet
    folder: Path | None = None

    @property
    def landmark_names(self) -> list[str]:
        return self.config.landmark_names


def build_model(config: ModelConfig) -> KeypointModel:
    """A freshly initialised (untrained) model."""
    return KeypointModel(config, InteractiveKeypointNet(config))


def save_model(folder: str | Path, model: KeypointModel, dtype: torch.dtype = torch.float32, extra_files: dict | None = None):
    """Write the model folder. ``extra_files`` maps file names to JSON-able objects."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {
        name: (t.to(dtype) if t.is_floating_point() else t).detach().cpu().contiguous()
        for name, t in model.network.state_dict().items()
    }
    save_file(state, folder / WEIGHTS_FILE, metadata={"format": "interactive-keypoints", "format_version": str(model.config.format_version)})
    model.config.save(folder / CONFIG_FILE)
    for name, content in (extra_files or {}).items():
        (folder / name).write_text(json.dumps(content, indent=2) + "\n")
    return folder


def load_model(folder: str | Path, device: str | torch.device | None = "cpu") -> KeypointModel:
    """Load a model folder, checking that weights and config describe the same network."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFormatError(f"model folder {folder} does not exist")
    config = ModelConfig.load(folder / CONFIG_FILE)
    weights_path = folder / WEIGHTS_FILE
    if not weights_path.is_file():
        raise ModelFormatError(f"model folder {folder} has no {WEIGHTS_FILE}")
    try:
        state = load_file(weights_path, device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelFormatError(f"{weights_path} is not a readable safetensors file: {e}") from None

    network = InteractiveKeypointNet(config)
    expected = network.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [
        f"{name}: file {tuple(state[name].shape)} vs config {tuple(t.shape)}"
        for name, t in expected.items()
        if name in state and state[name].shape != t.shape
    ]
    if missing or unexpected or wrong_shape:
        details = []
        if wrong_shape:
            details.append(f"{len(wrong_shape)} tensors differ in shape (first: {wrong_shape[0]})")
        if missing:
            details.append(f"{len(missing)} tensors missing (first: {missing[0]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected tensors (first: {unexpected[0]})")
        raise ModelFormatError(
            f"weights in {weights_path} do not match {folder / CONFIG_FILE} "
            f"(K={config.num_keypoints}, width={config.width}): " + "; ".join(details)
        )
    network.load_state_dict({name: t.to(expected[name].dtype) for name, t in state.items()})
    network.eval()
    if device is not None:
        network.to(device)
    return KeypointModel(config, network, folder)

