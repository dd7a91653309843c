"""Training with simulated clicks (paper sec. 2.1, RITM iterative training).

    interactive-keypoints train --dataset aasce --data-root .../boostnet_labeldata \
        --width 18 --input 256x128 --out runs/aasce
    interactive-keypoints train --config models/phantom-spine-68/recipe-1-scratch.json --out runs/phantom
    torchrun --nproc_per_node 2 -m interactive_keypoints.train ...   # DistributedDataParallel

The settings are a :class:`.recipe.Recipe` (typed sections: data, model, loss, interaction,
optimisation, validation, start, runtime, output); the options are generated from it, and
``--config FILE`` reads one from a JSON file that the options given beside it override.

Writes a model folder (fp16 weights, sharded above 15 MB, + model.json + morphology.json +
split.json + train_config.json (the recipe) + val_metrics.json), a CSV log, and a checkpoint
(safetensors + JSON, no pickle) that resumes exactly at an epoch boundary: weights,
optimiser, epoch, best score, RNG seeds and the split.

Everything random derives from (seed, epoch, ...): augmentation from (seed, epoch, sample
index), so any --workers count gives the same batches; clicks from (seed, epoch, rank).

On CUDA the fast path (off with --no-fast) autocasts to bf16, uses channels_last, cuDNN
autotuning, fused Adam, pinned memory and asynchronous copies, and syncs with the GPU
once per epoch. On CPU it is bf16 only where the CPU has native bf16, else fp32.

--max-minutes is a wall-clock budget that counts validation and checkpoints: training stops
after the last epoch that fits (validated, best weights written), and a cosine schedule
then decays over the budget (progress = elapsed / budget) instead of over --epochs.
--budget-clock cpu counts this process's CPU time instead (fair on a machine shared with
other jobs). OUT/progress.json says how far a run is (read by the Slicer module); a landmark
folder's model gets a card (README.md: images, held-back error, time, CPU).

--init-from a model of other landmarks transfers it: every tensor that does not depend on
the number of landmarks (backbone, OCR, gating) comes from it, the gate's weights on the
backbone features too; the landmark-sized layers start new.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from . import recipe as recipes
from .clicks import SimulatedUser, previous_input, sample_click_mask
from .config import ModelConfig, compact_config
from .conventions import write_text_atomic
from .data import DatasetSplit, KeypointTrainingDataset, training_splits
from .data.folder import hash_order
from .data.training import EpochBatchSampler, EpochItems
from .errors import KeypointsError, UsageError
from .heatmaps import decode_heatmaps, gaussian_heatmaps
from .inference import cpu_info, fast_dtype, pick_device
from .losses import heatmap_loss, morphology_term
from .measurements import cobb_angles
from .metrics import cobb_smape_per_image
from .model_card import write_card
from .model_io import build_model, copy_model_folder, load_model, save_model
from .morphology import MorphologySelection, select_morphology
from .recipe import (
    DataSection,
    InteractionSection,
    LossSection,
    ModelSection,
    OptimisationSection,
    Recipe,
    parse_fold,
)

CHECKPOINT_WEIGHTS = "checkpoint.safetensors"
CHECKPOINT_STATE = "checkpoint.json"
LOG_FILE = "training_log.csv"
TRAIN_CONFIG_FILE = "train_config.json"  # the run's recipe (recipe.to_json)
VAL_METRICS_FILE = "val_metrics.json"
PROGRESS_FILE = "progress.json"
LOG_COLUMNS = [
    "epoch",
    "step",
    "loss",
    "loss_heatmap",
    "loss_morphology",
    "val_mre_px",
    "best_val_mre_px",
    "lr",
    "images_per_s",
    "elapsed_s",
    "val_mre3_px",
    "val_manual3_px",
    "propagation_gain_px",
    "val_cobb0_smape",
    "val_cobb3_smape",
]
VALIDATION_CLICKS = 3
SELECTION_METRIC = {"mre0": "mre0_px", "mre3": "mre3_px", "cobb3": "cobb3_smape"}


# ------------------------------------------------------------------ arguments
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="a recipe file (JSON: models/*/recipe-*.json, a model folder's train_config.json); "
        "the options given beside it override it",
    )
    recipes.add_arguments(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="interactive-keypoints train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    return parser


def train_config(args: Recipe | argparse.Namespace) -> Recipe:
    """The recipe of parsed arguments: their --config file (or the defaults) with the options given."""
    if isinstance(args, Recipe):
        return args
    config = getattr(args, "config", None)
    return recipes.from_arguments(args, recipes.load(config) if config is not None else None)


# ------------------------------------------------------------------ distributed
def setup_distributed(device_pref: str):
    """(rank, world_size, device); torchrun sets RANK/WORLD_SIZE/LOCAL_RANK."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = pick_device(device_pref)
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cpu":  # share the cores between the processes
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    return rank, world, device


def broadcast_flag(flag: bool, world: int, device=None) -> bool:
    if world == 1:
        return flag
    # NCCL moves CUDA tensors only
    t = torch.tensor([int(flag)], device=device if dist.get_backend() == "nccl" else "cpu")
    dist.broadcast(t, src=0)
    return bool(t.item())


# ------------------------------------------------------------------ data & config
def load_splits(data: DataSection, input_size: tuple[int, int]) -> tuple[DatasetSplit, DatasetSplit, dict]:
    """(train, val, split record); the record names the dataset (a pack's too)."""
    if data.pack is None:
        if data.dataset is None:
            raise UsageError("no data: give --dataset or --pack")
        splits = training_splits(
            data.dataset, data.data_root, data.split_seed, data.phantom_images, data.drop_disordered_labels
        )
    else:
        from .data.pack import load_pack_splits

        if data.data_root is not None:
            raise UsageError("--pack holds the data: give --pack or --data-root, not both")
        splits = load_pack_splits(data.pack, input_size, data.split_seed, data.drop_disordered_labels)
    return splits if data.hold_out_fold is None else hold_out(*splits, data.hold_out_fold, data.split_seed)


# the reason split.json gives for a training image a fold left out (train-decoder --fold-models reads it)
HELD_OUT = "held out: fold"


def in_fold(sample_id: str, fold: str, seed: int) -> bool:
    """Whether an image is in fold ``I/K``: its hash decides, whatever other images the set has."""
    index, folds = (int(v) for v in parse_fold(fold).split("/"))
    return int(hash_order(sample_id, seed), 16) % folds == index - 1


def hold_out(train: DatasetSplit, val: DatasetSplit, record: dict, fold: str, seed: int):
    """The splits without the training images of ``fold``; the record lists them as skipped, so
    a resume with another fold is refused like one on other data."""
    held = {s.id for s in train.samples if in_fold(s.id, fold, seed)}
    kept = [s for s in train.samples if s.id not in held]
    if not held or not kept:
        raise UsageError(f"--hold-out-fold {fold} leaves {len(kept)} of {len(train.samples)} training images")
    reason = f"{HELD_OUT} {fold} (--hold-out-fold)"
    skipped = dict(record.get("skipped", {}))
    skipped["train"] = [*skipped.get("train", []), *((s.id, reason) for s in train.samples if s.id in held)]
    return dataclasses.replace(train, samples=kept), val, dict(record, skipped=skipped)


def used_ids(split_record: dict) -> dict[str, list[str]]:
    """The ids each split trains or validates on: its ids less the skipped ones."""
    skipped = {part: {sample_id for sample_id, _ in pairs} for part, pairs in split_record.get("skipped", {}).items()}
    return {part: [i for i in ids if i not in skipped.get(part, ())] for part, ids in split_record["ids"].items()}


# the measurement set of each dataset's landmarks (the phantoms use the AASCE corner order)
DATASET_MEASUREMENTS = {"aasce": "aasce-cobb", "phantom": "aasce-cobb", "isbi": "isbi-ceph"}


def dataset_name(dataset: str, data_root: Path | None) -> str:
    """What the model is named after: the dataset, or a landmark folder's own name."""
    return Path(data_root).resolve().name if dataset == "folder" and data_root else dataset


def make_config(model: ModelSection, train: DatasetSplit, dataset: str, name: str | None = None) -> ModelConfig:
    """The network of ``model`` for the landmarks of ``train``, from ``dataset`` (named ``name``)."""
    name = name or dataset
    sigma = model.sigma if model.sigma is not None else 7.5 * model.input[0] / 512
    depth: dict[str, Any] = (
        {} if model.depth == "compact" else dict(stage_modules=(1, 4, 3), stage_blocks=4, stem_blocks=4)
    )
    return compact_config(
        train.num_keypoints,
        input_size=model.input,
        width=model.width,
        landmark_names=list(train.landmark_names),
        flip_pairs=[tuple(p) for p in train.flip_pairs] if train.flip_allowed else [],
        gating=not model.no_gating,
        gating_pool=model.gating_pool,
        gate_channels=model.gate_channels,
        sigma=sigma,
        ocr_mid_channels=model.ocr_channels[0],
        ocr_key_channels=model.ocr_channels[1],
        name=f"{name}-{train.num_keypoints}",
        description=f"trained with interactive-keypoints train on {name}",
        measurements=DATASET_MEASUREMENTS.get(dataset, ""),
        **depth,
    )


def morphology_selection(train: DatasetSplit, loss: LossSection) -> MorphologySelection:
    # relations are chosen on whole labels (a partly reviewed image holds stand-ins)
    complete = train.complete()
    labels, variant = (complete, loss.morphology) if len(complete) >= 2 else (train, "off")
    return select_morphology(labels.points_array(), labels.image_sizes(), variant, loss.n_pairs, loss.n_triplets)


# ------------------------------------------------------------------ checkpoints
def save_checkpoint(folder: Path, network, optimizer, state: dict) -> None:
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    opt_state = optimizer.state_dict()
    for index, param_state in opt_state["state"].items():
        for name, value in param_state.items():
            tensors[f"optim.{index}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    state = dict(state, param_groups=opt_state["param_groups"])
    # the state travels inside the weights file: a run killed while writing leaves the last
    # whole checkpoint (os.replace is atomic), never weights of one epoch with another's state
    tmp = folder / (CHECKPOINT_WEIGHTS + ".tmp")
    save_file(tensors, tmp, metadata={"state": json.dumps(state)})
    os.replace(tmp, folder / CHECKPOINT_WEIGHTS)
    write_json_atomic(folder / CHECKPOINT_STATE, state)  # for reading by eye


def write_json_atomic(path: Path, content) -> None:
    write_text_atomic(path, json.dumps(content, indent=1) + "\n")


def has_checkpoint(folder: Path) -> bool:
    return (Path(folder) / CHECKPOINT_WEIGHTS).is_file()


def load_checkpoint(folder: Path, network, optimizer) -> dict:
    with safe_open(folder / CHECKPOINT_WEIGHTS, "pt") as f:
        metadata = f.metadata() or {}
    # checkpoints written before the state moved into the weights file have it beside them only
    state = (
        json.loads(metadata["state"]) if "state" in metadata else json.loads((folder / CHECKPOINT_STATE).read_text())
    )
    tensors = load_file(folder / CHECKPOINT_WEIGHTS)
    network.load_state_dict({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")})
    opt_state = {"state": {}, "param_groups": state.pop("param_groups")}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            opt_state["state"].setdefault(int(index), {})[name] = value
    optimizer.load_state_dict(opt_state)
    torch.set_rng_state(tensors["rng.torch"])
    return state


# ------------------------------------------------------------------ one step
def training_step(
    network,
    batch: dict,
    rng,
    config: ModelConfig,
    selection: MorphologySelection,
    interaction: InteractionSection,
    loss: LossSection,
    device: torch.device,
    autocast,
    channels_last: bool = True,
    graded_network=None,
):
    """One sample batch: random clicks, 0..N no-grad passes adding the worst point, one graded pass.

    ``graded_network`` (the DDP wrapper) runs the graded pass; the no-grad passes use the
    plain module, since their number differs between ranks and DDP's forward syncs buffers.
    """
    images = batch["image"].to(device)
    points = batch["points"].to(device)
    visible = batch["visible"].to(device)
    # points that are no labels (a partly reviewed image) are never clicked, graded or constrained;
    # the mask is checked on the host (no device sync): a batch of whole labels trains as before
    labelled = batch.get("labelled")
    if labelled is not None and bool(labelled.all()):
        labelled = None
    if labelled is not None:
        labelled = labelled.to(device)
        visible = visible & labelled  # for clicks and the morphology term; the loss masks by label
    size = config.input_size
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    b, k = points.shape[:2]
    user = SimulatedUser()  # exact clicks: the hints are the true positions of the clicked points
    clicked = torch.from_numpy(np.stack([sample_click_mask(rng, k) for _ in range(b)])).to(device) & visible
    prev = torch.zeros(b, k, *size, device=device)
    passes = int(rng.integers(0, interaction.iterative_max + 1))
    if passes and interaction.click_pass_bn == "eval":
        network.eval()  # the simulated user's passes must not move the BatchNorm running statistics
    try:
        for _ in range(passes):
            with torch.no_grad(), autocast():
                out = network(
                    images,
                    gaussian_heatmaps(points, size, config.sigma, clicked),
                    previous_input(prev, clicked, interaction.train_prev),
                )
            prev = torch.sigmoid(out["logits"].float())
            predicted, _ = decode_heatmaps(prev)
            user.click(predicted, points, clicked, clickable=visible)
    finally:
        network.train()
    with autocast():
        out = (graded_network or network)(
            images,
            gaussian_heatmaps(points, size, config.sigma, clicked),
            previous_input(prev, clicked, interaction.train_prev),
        )
    target = gaussian_heatmaps(points, size, config.sigma, visible)
    weight = None
    if interaction.clicked_loss_weight != 1.0:
        weight = torch.where(clicked, interaction.clicked_loss_weight, 1.0).to(torch.float32)
    if labelled is not None:
        weight = labelled.to(torch.float32) * (1.0 if weight is None else weight)
    loss_heatmap = heatmap_loss(out, target, channel_weight=weight)
    loss_morph = morphology_term(
        out["logits"], points, visible, selection, loss.morphology_weight, loss.morphology_weight
    )
    return loss_heatmap, loss_morph


@torch.no_grad()
def validation_metrics(
    network, loader, config, device, autocast=nullcontext, channels_last: bool = False, clicks: int = VALIDATION_CLICKS
) -> dict:
    """Mean radial errors in original pixels, eval mode (BN running stats), batched on the device.

    ``mre0_px``: no clicks. ``mre3_px``: model revision after ``clicks`` simulated clicks, as
    ``evaluate.simulate_revision`` with the session's test-time rule: each click, the
    :class:`.clicks.SimulatedUser` of evaluation (exact clicks) puts the worst
    not-yet-clicked keypoint at its true position, the model re-runs with the click heatmaps
    and its previous output in the clicked channels only, and clicked points count as exact.
    ``manual3_px``: the 0-click prediction with only the clicked points set to the truth.
    ``propagation_gain_px`` = manual - model: what re-running the model adds to the clicks.
    Spine models (``config.measurements`` "aasce-cobb") also get ``cobb0_smape`` and
    ``cobb3_smape``: the challenge's Cobb SMAPE (%) at 0 clicks and after ``clicks``
    (:func:`cobb_smape_of`), which MRE does not see (endplate slopes).
    """
    network.eval()
    k, size = config.num_keypoints, config.input_size
    clicks = min(clicks, k)
    user = SimulatedUser()
    totals, images_seen = torch.zeros(3, device=device), 0
    cobb = config.measurements == "aasce-cobb"
    spine_points: list[tuple[torch.Tensor, ...]] = []  # (start, after clicks, truth, image height) per batch
    for batch in loader:
        images = batch["image"].to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        truth_in = batch["points"].to(device, non_blocking=True)  # no augmentation: the labels in input px
        truth = batch["orig_points"].to(device, torch.float32, non_blocking=True)
        to_orig = torch.linalg.inv(batch["orig_to_input"]).to(device, torch.float32)  # (B, 3, 3)
        b = images.shape[0]
        clicked = torch.zeros(b, k, dtype=torch.bool, device=device)
        probs = torch.zeros(b, k, *size, device=device)
        for step in range(clicks + 1):
            hints = gaussian_heatmaps(truth_in, size, config.sigma, clicked)
            prev = previous_input(probs, clicked, "clicked")
            with autocast():
                logits = network(images, hints, prev)["logits"]
            probs = torch.sigmoid(logits.float())
            points_in, _ = decode_heatmaps(probs)
            points = points_in @ to_orig[:, :2, :2].transpose(1, 2) + to_orig[:, None, :2, 2]
            points = torch.where(clicked[..., None], truth, points)
            errors = torch.linalg.vector_norm(points - truth, dim=-1)  # (B, K)
            if step == 0:
                start_errors, start_points = errors, points
            if step < clicks:
                user.click(points, truth, clicked)
        # the manual user sets the `clicks` largest errors of the start to zero
        manual = start_errors.sum(1) - start_errors.topk(clicks, dim=1).values.sum(1)
        totals += torch.stack([start_errors.mean(1).sum(), errors.mean(1).sum(), (manual / k).sum()])
        images_seen += b
        if cobb:
            spine_points.append((start_points, points, truth, batch["orig_size"][:, 0]))
    network.train()
    mre0, mre3, manual3 = (totals / max(images_seen, 1)).tolist()  # the one sync
    metrics = {
        "mre0_px": mre0,
        "mre3_px": mre3,
        "manual3_px": manual3,
        "propagation_gain_px": manual3 - mre3,
        "clicks": clicks,
        "images": images_seen,
    }
    if spine_points:
        start, revised, truth, heights = (torch.cat(parts).cpu().numpy() for parts in zip(*spine_points))
        metrics["cobb0_smape"] = cobb_smape_of(start, truth, heights)
        metrics["cobb3_smape"] = cobb_smape_of(revised, truth, heights)
    return metrics


def cobb_smape_of(points: np.ndarray, truth: np.ndarray, heights: np.ndarray) -> float:
    """The AASCE challenge's Cobb SMAPE (%) of (N, 68, 2) points against the truth's angles
    (pixel geometry, as the challenge; ``heights`` for the curve rule). An image whose points
    give no angles (a vertebra of zero width, early in training) scores 100 %, the worst."""
    scores = []
    for predicted, true, height in zip(points, truth, heights):
        true_angles = [m.value for m in cobb_angles(true, image_height=float(height))]
        try:
            angles = [m.value for m in cobb_angles(predicted, image_height=float(height))]
        except ValueError:
            scores.append(100.0)
            continue
        scores.append(float(cobb_smape_per_image([angles], [true_angles])[0]))
    return float(np.mean(scores))


def learning_rate(schedule: OptimisationSection, epoch: int, elapsed_s: float | None = None) -> float:
    """The rate of one epoch; a function of the epoch alone, so resuming keeps the schedule.

    With --max-minutes the cosine runs over the time budget instead: progress = elapsed / budget
    (``elapsed_s``; resuming keeps it too, the elapsed time is in the checkpoint)."""
    if schedule.lr_schedule == "constant":
        return schedule.lr
    budget_s = 60 * schedule.max_minutes if schedule.max_minutes else None
    if budget_s and elapsed_s is not None:
        progress = min(elapsed_s / budget_s, 1.0)
    else:
        progress = min(epoch / max(schedule.epochs, 1), 1.0)
    return schedule.min_lr + 0.5 * (schedule.lr - schedule.min_lr) * (1 + math.cos(math.pi * progress))


# ModelConfig fields a fine-tuning may change: names, heatmap target, intensity handling, and
# what runs after the network (the correction field, a local stage: neither is in its weights)
NOT_ARCHITECTURE = {
    "landmark_names", "sigma", "intensity", "flip_pairs", "name", "description", "measurements", "format_version",
    "correction_length", "correction_noise", "propagation_limit", "local_stage", "click_decoder",
}  # fmt: skip


def initial_weights(folder: Path, config: ModelConfig, network=None) -> dict:
    """State dict of a trained model folder: the whole model when it places the landmarks being
    trained (refused unless it is the architecture being trained), else its transfer to
    ``network`` (:func:`landmark_transfer`)."""
    source = load_model(folder, device="cpu")
    if list(source.config.landmark_names) != list(config.landmark_names) and network is not None:
        return landmark_transfer(source, network, folder)
    mine, theirs = config.to_dict(), source.config.to_dict()
    differs = [key for key in mine if key not in NOT_ARCHITECTURE and mine[key] != theirs.get(key)]
    if differs:
        raise UsageError(
            f"--init-from {folder}: its model differs in {', '.join(differs)} "
            f"({', '.join(f'{k}={theirs.get(k)} vs {mine.get(k)}' for k in differs)})"
        )
    return source.network.state_dict()


def start_description(folder: Path | None, config: ModelConfig) -> str | None:
    """What --init-from does with ``folder`` (for the card)."""
    if folder is None:
        return None
    source = ModelConfig.load(Path(folder) / "model.json")
    if list(source.landmark_names) == list(config.landmark_names):
        return "fine-tuned: all its weights"
    return (
        f"transfer from {source.num_keypoints} other landmarks: backbone, OCR and gating; the layers "
        f"sized by the number of landmarks new"
    )


def landmark_dependent(config: ModelConfig) -> set[str]:
    """Names of the network's tensors whose shape depends on the number of landmarks (hint
    fusion's input, the gate's click channels, the heads), found by building it with one more."""
    from .model import InteractiveKeypointNet

    one_more = dataclasses.replace(
        config,
        num_keypoints=config.num_keypoints + 1,
        landmark_names=[],
        flip_pairs=[],
        measurements="",
        local_stage={},
    )
    mine = InteractiveKeypointNet(config).state_dict()
    return {n for n, t in InteractiveKeypointNet(one_more).state_dict().items() if t.shape != mine[n].shape}


def landmark_transfer(source, network, folder: Path) -> dict:
    """A model of other landmarks as the start of ``network``: every tensor that does not depend
    on the number of landmarks, and the gate's weights on the backbone features (its first conv
    sees the features, then one channel per landmark: network.InteractionGate); the rest stays
    as ``network`` was initialised. Refused when the rest of the architecture differs."""
    theirs, mine = source.network.state_dict(), network.state_dict()
    new = landmark_dependent(network.config)
    differ = [n for n in mine if n not in new and (n not in theirs or theirs[n].shape != mine[n].shape)]
    if differ:
        first = differ[0]
        raise UsageError(
            f"--init-from {folder}: its network differs from the one being trained in more than the landmarks "
            f"({len(differ)} tensors, first {first}: {tuple(theirs[first].shape) if first in theirs else 'absent'} "
            f"vs {tuple(mine[first].shape)}); train with its --width, --depth, --ocr-channels and --gate-channels"
        )
    state = {n: t for n, t in theirs.items() if n in mine and n not in new}
    gate = "gate.convs.0.weight"
    if gate in new and gate in theirs:
        features = network.gate.convs[0].in_channels - network.config.num_keypoints
        if theirs[gate].shape[1] - source.config.num_keypoints == features:
            state[gate] = mine[gate].clone()
            state[gate][:, :features] = theirs[gate][:, :features]
    fresh = sorted(n for n in mine if n not in state) + [f"{gate} (landmark channels)"] * (gate in state)
    print(
        f"transfer from {folder} ({source.config.num_keypoints} other landmarks): {len(state)} of {len(mine)} tensors; "
        f"new: {', '.join(fresh)}",
        flush=True,
    )
    return {**mine, **state}


def transferable_weights(folder: Path, network) -> tuple[dict, list[str]]:
    """(tensors of ``folder``'s model that fit ``network`` by name and shape, names left fresh)."""
    source = load_model(folder, device="cpu").network.state_dict()
    target = network.state_dict()
    fits = {name: t for name, t in source.items() if name in target and target[name].shape == t.shape}
    if not fits:
        raise UsageError(f"--transfer-from {folder}: no tensor matches this architecture by name and shape")
    return fits, sorted(set(target) - set(fits))


def parameter_fingerprint(network) -> float:
    return float(sum(p.detach().double().sum().item() for p in network.parameters()))


# ------------------------------------------------------------------ speed and bookkeeping
def setup_fast_path(network, device, fast: bool):
    """(network, autocast factory, dtype or None): bf16 autocast where the device has it,
    channels_last, cuDNN autotuning on CUDA (fixed input size: the tuned kernels are reused)."""
    dtype = fast_dtype(device, fast, training=True)
    if fast:
        network = network.to(memory_format=torch.channels_last)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype is not None else nullcontext
    return network, autocast, dtype


def make_optimizer(network, lr: float, device: torch.device) -> torch.optim.Optimizer:
    # the fused kernel updates all parameters in a few launches instead of several per tensor
    return torch.optim.Adam(network.parameters(), lr=lr, fused=device.type == "cuda")


def epoch_batches(
    optimisation: OptimisationSection, epoch: int, num_items: int, rank: int, world: int
) -> list[list[tuple[int, int]]]:
    """The (epoch, index) keys of this rank's batches: one shared permutation per (seed, epoch),
    an equal share per rank (DDP needs equal step counts), incomplete batches dropped."""
    order = np.random.default_rng([optimisation.seed, epoch]).permutation(num_items)
    share = len(order) // world
    order = order[rank::world][:share]
    size = optimisation.batch_size
    return [[(epoch, int(i)) for i in order[i : i + size]] for i in range(0, share - size + 1, size)]


def make_loaders(train_data, val_data, optimisation: OptimisationSection, workers: int, device: torch.device):
    """Training and validation loaders; workers persist over epochs, their own RNG unused
    (the augmentation is seeded per item) and the global torch RNG left alone."""
    workers = max(0, workers)
    common: dict[str, Any] = dict(
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(optimisation.seed),
    )
    sampler = EpochBatchSampler()
    train_loader = torch.utils.data.DataLoader(EpochItems(train_data), batch_sampler=sampler, **common)
    val_loader = torch.utils.data.DataLoader(val_data, batch_size=optimisation.batch_size, shuffle=False, **common)
    return train_loader, sampler, val_loader


def to_device(batch: dict, device) -> dict:
    """The training tensors of a batch on the device, copied asynchronously (pinned on CUDA)."""
    return {
        key: value.to(device, non_blocking=True) if key in ("image", "points", "visible") else value
        for key, value in batch.items()
    }


def device_description(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        info = cpu_info()
        return f"CPU {info[0] if info else 'unknown'}, {torch.get_num_threads()} threads"
    return device.type


class Progress:
    """How far a run is: OUT/progress.json after every epoch (the Slicer module reads it) and
    the command line's bar over the time budget (or the epochs)."""

    def __init__(
        self, out: Path, optimisation: OptimisationSection, quiet: bool, train_images: int, val_images: int
    ) -> None:
        budget_s = 60 * optimisation.max_minutes if optimisation.max_minutes is not None else None
        self.path, self.budget_s, self.optimisation = out / PROGRESS_FILE, budget_s, optimisation
        self.fixed = {
            "pid": os.getpid(),
            "budget_s": budget_s,
            "budget_clock": optimisation.budget_clock,
            "epochs": optimisation.epochs,
            "train_images": train_images,
            "val_images": val_images,
        }
        total = round(budget_s) if budget_s else optimisation.epochs
        of = f"s of the {optimisation.budget_clock}-clock budget" if budget_s else "epochs"
        self.bar = tqdm(
            total=total,
            desc="training",
            disable=quiet,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n}/{total} " + of + " [{elapsed}{postfix}]",
        )

    def fraction(self, state: dict) -> float:
        epochs, max_steps = self.optimisation.epochs, self.optimisation.max_steps
        done = [state["elapsed_s"] / self.budget_s] if self.budget_s else [state["epoch"] / max(epochs, 1)]
        if max_steps:
            done.append(state["step"] / max_steps)
        return min(1.0, max(done))

    def update(self, state: dict, status: str = "training") -> None:
        best = state["best_mre"] if math.isfinite(state["best_mre"]) else None
        write_json_atomic(
            self.path,
            self.fixed
            | {
                "status": status,
                "fraction": round(1.0 if status == "finished" else self.fraction(state), 4),
                "epoch": state["epoch"],
                "step": state["step"],
                "elapsed_s": round(state["elapsed_s"], 1),
                "best_val_mre_px": best,
                "best_epoch": state["best_epoch"],
                "time": time.time(),
            },
        )
        self.bar.n = min(self.bar.total, round(state["elapsed_s"]) if self.budget_s else state["epoch"])
        self.bar.set_postfix_str(f"best val MRE {best:.2f} px" if best is not None else "")
        self.bar.refresh()

    def close(self, state: dict) -> None:
        self.update(state, "finished")
        self.bar.close()


def keep_log_rows_before(log_path: Path, epoch: int) -> None:
    """On resume: drop the rows of epochs after the checkpoint (they will be trained again)."""
    with open(log_path, newline="") as f:
        rows = list(csv.reader(f))
    kept = [LOG_COLUMNS] + [row for row in rows[1:] if row and int(row[0]) < epoch]  # an older log gets the new head
    if kept != rows:
        with open(log_path, "w", newline="") as f:
            csv.writer(f).writerows(kept)


def epoch_line(epoch, images_per_s, loss, metrics, elapsed_s) -> str:
    if metrics is None:
        val = "val -"
    else:
        val = (
            f"val MRE {metrics['mre0_px']:.2f} px, {metrics['mre3_px']:.2f} after {metrics['clicks']} clicks "
            f"(gain {metrics['propagation_gain_px']:+.2f})"
        )
        if "cobb0_smape" in metrics:
            val += f", Cobb SMAPE {metrics['cobb0_smape']:.1f} %, {metrics['cobb3_smape']:.1f} after clicks"
    return f"epoch {epoch}: {images_per_s:.1f} img/s loss {loss:.4f} {val} {elapsed_s:.0f} s"


# ------------------------------------------------------------------ the run
@dataclass
class EpochResult:
    mean_losses: list[float]  # loss, heatmap, morphology
    train_s: float  # on the budget's clock
    images_per_s: float
    hit_max_steps: bool


class Trainer:
    """One training run of a recipe. The constructor sets it up (data, model, starting weights,
    optimiser, resumed state, the model folder's records); :meth:`run` trains epoch by epoch
    (:meth:`train_epoch`, :meth:`validate`, :meth:`record_epoch`) and :meth:`finish` writes the
    summary."""

    def __init__(self, recipe: Recipe) -> None:
        self.recipe = recipes.check(recipe)
        self.rank, self.world, self.device = setup_distributed(recipe.runtime.device)
        if recipe.runtime.threads:  # e.g. two runs side by side: oversubscribed OpenMP threads spin and crawl
            torch.set_num_threads(recipe.runtime.threads)
        self.is_main = self.rank == 0
        assert recipe.output.out is not None  # recipes.check
        self.out = Path(recipe.output.out)
        self.out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(recipe.optimisation.seed)

        self.train_split, self.val_split, self.split_record = load_splits(recipe.data, recipe.model.input)
        if len(self.train_split) == 0 or len(self.val_split) == 0:
            raise UsageError(f"empty split: {len(self.train_split)} train / {len(self.val_split)} val images")
        self.dataset: str = self.split_record["dataset"]  # a pack's too
        name = dataset_name(self.dataset, recipe.data.data_root)
        self.config = make_config(recipe.model, self.train_split, self.dataset, name)
        if recipe.validation.select_on == "cobb3" and self.config.measurements != "aasce-cobb":
            raise UsageError(f"--select-on cobb3 needs a spine model (Cobb angles); {self.dataset} has none")
        self.selection = morphology_selection(self.train_split, recipe.loss)
        self.model = build_model(self.config)
        if not recipe.output.resume:
            self.set_start_weights()
        self.fast = not recipe.runtime.no_fast
        self.network, self.autocast, self.dtype = setup_fast_path(
            self.model.network.to(self.device), self.device, self.fast
        )
        self.optimizer = make_optimizer(self.network, recipe.optimisation.lr, self.device)
        self.state = self.start_state()
        self.ddp = DistributedDataParallel(self.network) if self.world > 1 else self.network
        self.make_loaders()
        self.log_path = self.out / LOG_FILE
        if self.is_main:
            self.write_records()

    # -------------------------------------------------- set-up
    def set_start_weights(self) -> None:
        """--init-from, --transfer-from, --hint-scale-init: the weights before the first step."""
        start, network = self.recipe.start, self.model.network
        if start.init_from is not None:
            network.load_state_dict(initial_weights(start.init_from, self.config, network))
        if start.transfer_from is not None:
            fits, fresh = transferable_weights(start.transfer_from, network)
            network.load_state_dict(fits, strict=False)
            if self.is_main:
                print(
                    f"transferred {len(fits)} tensors from {start.transfer_from}; {len(fresh)} start fresh "
                    f"(first: {', '.join(fresh[:4])})",
                    flush=True,
                )
        if self.recipe.interaction.hint_scale_init is not None:
            with torch.no_grad():
                network.hint_fusion.scale.fill_(self.recipe.interaction.hint_scale_init)

    def start_state(self) -> dict:
        """The state of a new run, or the checkpoint's (--resume; refused on another split)."""
        recipe = self.recipe
        state: dict[str, Any] = {
            "epoch": 0,
            "step": 0,
            "best_mre": math.inf,
            "best_epoch": -1,
            "epochs_without_improvement": 0,
            "split": self.split_record,
            "seed": recipe.optimisation.seed,
            "elapsed_s": 0.0,
            "select_on": recipe.validation.select_on,
            "init_from": str(recipe.start.init_from) if recipe.start.init_from else None,
            "transfer_from": str(recipe.start.transfer_from) if recipe.start.transfer_from else None,
            "start": start_description(recipe.start.init_from, self.config),
        }
        if not (recipe.output.resume and has_checkpoint(self.out)):
            return state
        state = load_checkpoint(self.out, self.network, self.optimizer)
        if used_ids(state["split"]) != used_ids(self.split_record):
            raise UsageError(
                "the checkpoint was trained on a different split; resume with the same --split-seed, "
                "data, --drop-disordered-labels and --hold-out-fold"
            )
        if self.is_main:
            print(f"resumed from epoch {state['epoch']} (best val MRE {state['best_mre']:.2f} px)", flush=True)
        if state.get("select_on", "mre0") != recipe.validation.select_on:
            self.switch_selection(state)
        return state

    def switch_selection(self, state: dict) -> None:
        """A resume that selects on another score: the best so far by the old one stays as a model
        folder of its own (``OUT/best-<old>``), the new score starts without a best."""
        old, new = state.get("select_on", "mre0"), self.recipe.validation.select_on
        if self.is_main and (self.out / "model.json").is_file():
            copy_model_folder(self.out, self.out / f"best-{old}")
            for name in (VAL_METRICS_FILE, TRAIN_CONFIG_FILE):
                if (self.out / name).is_file():
                    shutil.copy2(self.out / name, self.out / f"best-{old}" / name)
            print(f"selection switched from {old} to {new}: the best by {old} is kept in {self.out / f'best-{old}'}")
        state.update(select_on=new, best_mre=math.inf, best_epoch=state["epoch"] - 1, epochs_without_improvement=0)

    def make_loaders(self) -> None:
        config, recipe = self.config, self.recipe
        self.train_data = KeypointTrainingDataset(
            self.train_split,
            config.input_size,
            config.intensity,
            augment=True,
            seed=recipe.optimisation.seed,
            occlusion_prob=recipe.interaction.occlusion_prob,
        )
        val_data = KeypointTrainingDataset(self.val_split, config.input_size, config.intensity, augment=False)
        self.train_data.preload()  # before the workers fork: they share the decoded images
        val_data.preload()
        self.train_loader, self.sampler, self.val_loader = make_loaders(
            self.train_data, val_data, recipe.optimisation, recipe.runtime.workers, self.device
        )

    def write_records(self) -> None:
        """The model folder's model.json, morphology.json, split.json, the recipe and the log's head."""
        self.config.save(self.out / "model.json")
        self.selection.save(self.out / "morphology.json")
        (self.out / "split.json").write_text(json.dumps(self.split_record, indent=1))
        recipes.save(self.recipe, self.out / TRAIN_CONFIG_FILE)
        if self.recipe.output.resume and self.log_path.exists():
            keep_log_rows_before(self.log_path, self.state["epoch"])
        else:
            with open(self.log_path, "w", newline="") as f:
                csv.writer(f).writerow(LOG_COLUMNS)

    # -------------------------------------------------- the loop
    def run(self) -> Path:
        optimisation = self.recipe.optimisation
        self.clock = time.process_time if optimisation.budget_clock == "cpu" else time.time  # what the budget counts
        self.start_time = self.clock() - self.state["elapsed_s"]
        self.wall_start = time.time() - self.state.get("wall_s", 0.0)
        self.cpu_start = time.process_time() - self.state.get("cpu_s", 0.0)
        self.budget_s = 60 * optimisation.max_minutes if optimisation.max_minutes is not None else None
        self.by_time = self.budget_s is not None and optimisation.lr_schedule == "cosine"
        self.val_s = 0.0  # the last validation's duration: part of what another epoch costs
        self.progress = None
        if self.is_main:
            self.progress = Progress(
                self.out, optimisation, self.recipe.output.quiet, len(self.train_split), len(self.val_split)
            )
            self.progress.update(self.state)
        stop, first_epoch = False, True
        while self.state["epoch"] < optimisation.epochs and not stop:
            stop = self.run_epoch(first_epoch)
            first_epoch = False
        self.finish()
        return self.out

    def run_epoch(self, first_epoch: bool) -> bool:
        """Train, validate when due, record; whether the run stops after it."""
        epoch = self.state["epoch"]
        result = self.train_epoch(epoch)
        self.state["epoch"] = epoch + 1
        elapsed = self.clock() - self.start_time
        # the last epoch: by count, by steps, or because another one (with validation) would overrun the budget
        final = (
            result.hit_max_steps
            or self.state["epoch"] >= self.recipe.optimisation.epochs
            or (self.budget_s is not None and elapsed + result.train_s + 2 * self.val_s > self.budget_s)
        )
        final = broadcast_flag(final, self.world, self.device)
        metrics = None
        if self.is_main and (final or self.state["epoch"] % max(self.recipe.validation.val_every, 1) == 0):
            metrics = self.validate(epoch)
        out_of_patience = self.state["epochs_without_improvement"] >= self.recipe.validation.patience
        stop = broadcast_flag(final or out_of_patience, self.world, self.device)
        self.state["elapsed_s"] = self.clock() - self.start_time
        self.state["wall_s"], self.state["cpu_s"] = time.time() - self.wall_start, time.process_time() - self.cpu_start
        if self.is_main:
            self.record_epoch(epoch, result, metrics, first_epoch, stop)
        return stop

    def set_learning_rate(self, epoch: int) -> None:
        elapsed = self.clock() - self.start_time if self.by_time else None
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.recipe.optimisation, epoch, elapsed)

    def train_epoch(self, epoch: int) -> EpochResult:
        recipe, device = self.recipe, self.device
        # everything random in an epoch derives from (seed, epoch, rank): resuming is exact
        rng = np.random.default_rng([recipe.optimisation.seed, epoch, self.rank])
        self.sampler.batches = epoch_batches(recipe.optimisation, epoch, len(self.train_data), self.rank, self.world)
        self.set_learning_rate(epoch)
        self.network.train()
        sums = torch.zeros(3, device=device)  # loss, heatmap, morphology: summed on the device, no sync per step
        seen, steps, epoch_start, epoch_wall = 0, 0, self.clock(), time.time()
        hit_max_steps = False
        quiet = recipe.output.quiet or not self.is_main
        for batch in tqdm(self.train_loader, desc=f"epoch {epoch}", disable=quiet, leave=False, position=1):
            if self.by_time:
                self.set_learning_rate(epoch)
            sums += self.optimizer_step(batch, rng)
            seen += len(batch["id"])
            steps += 1
            self.state["step"] += 1
            if recipe.optimisation.max_steps is not None and self.state["step"] >= recipe.optimisation.max_steps:
                hit_max_steps = True
                break
        mean_losses = (sums / max(steps, 1)).tolist()  # the epoch's one sync with the device
        train_s = self.clock() - epoch_start
        images_per_s = seen * self.world / max(time.time() - epoch_wall, 1e-9)
        return EpochResult(mean_losses, train_s, images_per_s, hit_max_steps)

    def optimizer_step(self, batch: dict, rng: np.random.Generator) -> torch.Tensor:
        """One step; the losses (total, heatmap, morphology) on the device."""
        loss_h, loss_m = training_step(
            self.network,
            to_device(batch, self.device),
            rng,
            self.config,
            self.selection,
            self.recipe.interaction,
            self.recipe.loss,
            self.device,
            self.autocast,
            channels_last=self.fast,
            graded_network=self.ddp,
        )
        loss = loss_h + loss_m
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return torch.stack([t.detach().float() for t in (loss, loss_h, loss_m)])

    def validate(self, epoch: int) -> dict:
        """The validation metrics; the weights written when they are the best so far."""
        select_on = self.recipe.validation.select_on
        val_start = self.clock()
        metrics = validation_metrics(
            self.network, self.val_loader, self.config, self.device, self.autocast, channels_last=self.fast
        )
        self.val_s = self.clock() - val_start
        score = metrics[SELECTION_METRIC[select_on]]
        if score < self.state["best_mre"]:
            self.state.update(best_mre=score, best_epoch=epoch, epochs_without_improvement=0)
            output = self.recipe.output
            save_model(
                self.out,
                self.model,
                dtype=getattr(torch, output.save_dtype),
                max_shard_bytes=int(output.max_shard_mb * 1e6),
            )
            (self.out / VAL_METRICS_FILE).write_text(
                json.dumps({"epoch": epoch, "select_on": select_on, **metrics}, indent=1) + "\n"
            )
        else:
            self.state["epochs_without_improvement"] = epoch - self.state["best_epoch"]
        return metrics

    def record_epoch(self, epoch: int, result: EpochResult, metrics: dict | None, first: bool, stop: bool) -> None:
        """The log's row, the epoch's line, the checkpoint when due, progress.json."""
        state, m, nan = self.state, metrics or {}, math.nan
        with open(self.log_path, "a", newline="") as f:
            csv.writer(f).writerow(
                [
                    epoch,
                    state["step"],
                    *np.round(result.mean_losses, 6),
                    round(m.get("mre0_px", nan), 3),
                    round(state["best_mre"], 3),
                    self.optimizer.param_groups[0]["lr"],
                    round(result.images_per_s, 2),
                    round(state["elapsed_s"], 1),
                    *(round(m.get(key, nan), 3) for key in ("mre3_px", "manual3_px", "propagation_gain_px")),
                    *(round(m.get(key, nan), 3) for key in ("cobb0_smape", "cobb3_smape")),
                ]
            )
        print(epoch_line(epoch, result.images_per_s, result.mean_losses[0], metrics, state["elapsed_s"]), flush=True)
        if first:
            cuda = self.device.type == "cuda"
            peak = f", peak memory {torch.cuda.max_memory_allocated(self.device) / 2**30:.2f} GiB" if cuda else ""
            print(
                f"device {device_description(self.device)}, torch {torch.__version__}, "
                f"autocast {self.dtype or 'off (float32)'}{peak}",
                flush=True,
            )
        every = self.recipe.output.checkpoint_every
        if stop or (every > 0 and state["epoch"] % every == 0):
            save_checkpoint(self.out, self.network, self.optimizer, state)
        if self.progress is not None:
            self.progress.update(state)

    # -------------------------------------------------- the end
    def summary(self) -> dict:
        state, recipe = self.state, self.recipe
        summary = {
            "epochs": state["epoch"],
            "steps": state["step"],
            "best_val_mre_px": state["best_mre"],
            "best_epoch": state["best_epoch"],
            "select_on": recipe.validation.select_on,
            "init_from": state.get("init_from"),
            "transfer_from": state.get("transfer_from"),
            "elapsed_s": round(state["elapsed_s"], 1),
            "wall_s": round(state.get("wall_s", 0.0), 1),
            "cpu_s": round(state.get("cpu_s", 0.0), 1),
            "budget_minutes": recipe.optimisation.max_minutes,
            "budget_clock": recipe.optimisation.budget_clock,
            "start": state.get("start"),
            "world_size": self.world,
            "device": str(self.device),
            "device_name": device_description(self.device),
            "torch": torch.__version__,
            "fast_path": self.dtype is not None and str(self.dtype),
            "workers": recipe.runtime.workers,
            "command": recipes.command_line(recipe),
        }
        if self.device.type == "cuda":
            summary["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(self.device) / 2**30, 3)
        if self.world > 1:
            fingerprints = [None] * self.world
            dist.all_gather_object(fingerprints, parameter_fingerprint(self.network))
            summary["replica_fingerprints"] = fingerprints
        return summary

    def finish(self) -> None:
        """train_summary.json, a landmark folder's card, progress.json; the process group ends."""
        summary = self.summary()
        if self.is_main:
            (self.out / "train_summary.json").write_text(json.dumps(summary, indent=1))
            if self.dataset == "folder":  # a user's own landmarks: the card says what the model is
                metrics_path = self.out / VAL_METRICS_FILE
                metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else None
                partial = sum(sample.labelled is not None for sample in self.train_split.samples)
                record = dict(self.split_record, root=str(self.recipe.data.data_root))
                write_card(self.out, self.config, summary, record, metrics, partial)
            if self.progress is not None:
                self.progress.close(self.state)
        if self.world > 1:
            dist.barrier()
            dist.destroy_process_group()


def train(args: Recipe | argparse.Namespace) -> Path:
    """Train with a recipe (or parsed arguments); the model folder."""
    return Trainer(train_config(args)).run()


def run(args: argparse.Namespace) -> int:
    out = train(args)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"model folder: {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Train from command-line arguments; errors are raised (:func:`command` reports them)."""
    return run(build_parser().parse_args(argv))


def command(argv: list[str] | None = None) -> int:
    """``python -m interactive_keypoints.train`` (torchrun, training_job): as the cli's train, an
    error the user can fix is one line and exit code 2, not a traceback (the Slicer extension
    ships this module without cli.py)."""
    try:
        return main(argv)
    except (KeypointsError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(command())
