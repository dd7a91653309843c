"""A model is a folder: ``model.safetensors`` (weights) + ``model.json`` (ModelConfig).

No pickle anywhere: weights are safetensors, everything else is JSON. Weights may be
stored in fp16/bf16 to keep git small; loading upcasts them to fp32.

Weights larger than ``max_shard_bytes`` are split into ``model-00001-of-0000N.safetensors``
shards plus ``model.safetensors.index.json`` (tensor name -> shard file, the Hugging Face
layout), so that no file in git exceeds the limit. ``load_model`` reads either form.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from .click_decoder import ClickDecoderConfig, ClickDecoderNet, load_click_decoder_network, save_click_decoder_weights
from .config import ModelConfig, ModelFormatError
from .conventions import write_text_atomic
from .local_stage import LocalStageConfig, LocalStageNet, load_local_stage_network, save_local_stage_weights
from .model import InteractiveKeypointNet

# model discovery lives in model_folders (no torch); default_model_dir is re-exported
# because the README's Python example imports it from here
from .model_folders import CONFIG_FILE, WEIGHTS_FILE, WEIGHTS_INDEX_FILE, default_model_dir  # noqa: F401
from .weights_file import read_safetensors  # re-exported: it used to live here

SHARD_PATTERN = "model-{:05d}-of-{:05d}.safetensors"
MAX_SHARD_BYTES = 15_000_000  # 15 MB per file: small enough for any git host without LFS


@dataclass
class KeypointModel:
    config: ModelConfig
    network: InteractiveKeypointNet
    folder: Path | None = None
    # the full-resolution local stage (local_stage.py), when model.json declares one
    local_stage: LocalStageNet | None = None
    # the click decoder (click_decoder.py), when model.json declares one
    click_decoder: ClickDecoderNet | None = None

    @property
    def landmark_names(self) -> list[str]:
        return self.config.landmark_names

    @property
    def local_stage_config(self) -> LocalStageConfig | None:
        return LocalStageConfig.from_dict(self.config.local_stage) if self.config.local_stage else None

    @property
    def click_decoder_config(self) -> ClickDecoderConfig | None:
        return ClickDecoderConfig.from_dict(self.config.click_decoder) if self.config.click_decoder else None


def build_model(config: ModelConfig) -> KeypointModel:
    """A freshly initialised (untrained) model."""
    return KeypointModel(config, InteractiveKeypointNet(config))


def save_model(
    folder: str | Path,
    model: KeypointModel,
    dtype: torch.dtype = torch.float32,
    extra_files: dict | None = None,
    max_shard_bytes: int | None = MAX_SHARD_BYTES,
):
    """Write the model folder. ``extra_files`` maps file names to JSON-able objects.

    Weights above ``max_shard_bytes`` (None: no limit) go into shards plus an index."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {
        name: (t.to(dtype) if t.is_floating_point() else t).detach().cpu().contiguous()
        for name, t in model.network.state_dict().items()
    }
    save_weights(
        folder,
        state,
        {"format": "interactive-keypoints", "format_version": str(model.config.format_version)},
        max_shard_bytes,
    )
    if model.local_stage is not None:
        save_local_stage_weights(folder, model.local_stage)
    if model.click_decoder is not None:
        save_click_decoder_weights(folder, model.click_decoder)
    model.config.save(folder / CONFIG_FILE)
    for name, content in (extra_files or {}).items():
        write_text_atomic(folder / name, json.dumps(content, indent=2) + "\n")
    return folder


def _file_bytes(tensors: dict) -> int:
    """Size of a safetensors file holding ``tensors``, header included (bounded from above)."""
    header = sum(len(name) + 128 for name in tensors) + 256  # dtype, shape and offsets per entry; metadata
    return header + sum(t.numel() * t.element_size() for t in tensors.values())


def shard_groups(state: dict, max_shard_bytes: int | None) -> list[dict]:
    """``state`` split in order into groups whose files stay under ``max_shard_bytes``
    (a single tensor larger than that gets a shard of its own)."""
    if max_shard_bytes is None or _file_bytes(state) <= max_shard_bytes:
        return [state]
    groups: list[dict[str, torch.Tensor]] = []
    current: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if current and _file_bytes({**current, name: tensor}) > max_shard_bytes:
            groups.append(current)
            current = {}
        current[name] = tensor
    return groups + [current]


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a model folder as they are on disk: the single file or the shards + index."""
    return sorted(folder.glob("model-*-of-*.safetensors")) + [
        p for p in (folder / WEIGHTS_FILE, folder / WEIGHTS_INDEX_FILE) if p.is_file()
    ]


def copy_model_folder(source: Path, out: Path) -> None:
    """OUT as a copy of the model folder (weights, config, morphology, split, the weights of the
    parts its model.json declares): a new part is then added to the copy."""
    out.mkdir(parents=True, exist_ok=True)
    config = ModelConfig.load(source / CONFIG_FILE)
    parts = [source / part["weights"] for part in (config.local_stage, config.click_decoder) if part]
    for path in (
        weight_files(source) + parts + [source / name for name in (CONFIG_FILE, "morphology.json", "split.json")]
    ):
        if path.is_file():
            shutil.copy2(path, out / path.name)


def save_weights(
    folder: Path, state: dict, metadata: dict, max_shard_bytes: int | None = MAX_SHARD_BYTES
) -> list[Path]:
    """Write ``state`` as one file or as shards + index; files of the other layout are removed."""
    groups = shard_groups(state, max_shard_bytes)
    names = (
        [WEIGHTS_FILE] if len(groups) == 1 else [SHARD_PATTERN.format(i + 1, len(groups)) for i in range(len(groups))]
    )
    for name, group in zip(names, groups):
        tmp = folder / (name + ".tmp")
        save_file(group, tmp, metadata=metadata)
        os.replace(tmp, folder / name)
    written = [folder / name for name in names]
    if len(groups) > 1:
        index = {
            "metadata": {**metadata, "total_size": sum(t.numel() * t.element_size() for t in state.values())},
            "weight_map": {tensor: name for name, group in zip(names, groups) for tensor in group},
        }
        write_text_atomic(folder / WEIGHTS_INDEX_FILE, json.dumps(index, indent=1) + "\n")
        written.append(folder / WEIGHTS_INDEX_FILE)
    for stale in set(weight_files(folder)) - set(written):  # e.g. a single file after training wrote shards
        stale.unlink()
    return written


def load_weights(folder: Path) -> tuple[dict, Path]:
    """(state dict, the file that names the weights) from the single file or the shards + index."""
    single, index_path = folder / WEIGHTS_FILE, folder / WEIGHTS_INDEX_FILE
    if single.is_file():
        return read_safetensors(single), single
    if not index_path.is_file():
        raise ModelFormatError(f"model folder {folder} has no {WEIGHTS_FILE} (nor {WEIGHTS_INDEX_FILE} and its shards)")
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (ValueError, KeyError, TypeError) as e:
        raise ModelFormatError(f"{index_path} is not a valid weight index: {e!r}") from None
    shards = sorted(set(weight_map.values()))
    for shard in shards:
        if Path(shard).name != shard or not (folder / shard).is_file():
            raise ModelFormatError(f"{index_path} names the shard {shard!r}, which is not in {folder}")
    state = {}
    for shard in shards:
        tensors = read_safetensors(folder / shard)
        listed = {name for name, file in weight_map.items() if file == shard}
        if set(tensors) != listed:
            raise ModelFormatError(
                f"{folder / shard} holds other tensors than {index_path} lists for it ({len(tensors)} vs {len(listed)})"
            )
        state.update(tensors)
    return state, index_path


def load_model(folder: str | Path, device: str | torch.device | None = "cpu") -> KeypointModel:
    """Load a model folder, checking that weights and config describe the same network."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFormatError(f"model folder {folder} does not exist")
    config = ModelConfig.load(folder / CONFIG_FILE)
    state, weights_path = load_weights(folder)

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
    local_stage = (
        load_local_stage_network(folder, LocalStageConfig.from_dict(config.local_stage)) if config.local_stage else None
    )
    click_decoder = (
        load_click_decoder_network(folder, ClickDecoderConfig.from_dict(config.click_decoder))
        if config.click_decoder
        else None
    )
    if device is not None:
        network.to(device)
    return KeypointModel(config, network, folder, local_stage, click_decoder)
