"""Training with simulated clicks (paper sec. 2.1, RITM iterative training).

    interactive-keypoints train --dataset aasce --data-root .../boostnet_labeldata \
        --width 18 --input 256x128 --out runs/aasce
    torchrun --nproc_per_node 2 -m interactive_keypoints.train ...   # DistributedDataParallel

Writes a model folder (fp16 weights, sharded above 15 MB, + model.json + morphology.json +
split.json + train_config.json + val_metrics.json), a CSV log, and a checkpoint
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
import shlex
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from .clicks import SimulatedUser, previous_input, sample_click_mask
from .config import ModelConfig, compact_config
from .conventions import write_text_atomic
from .data import KeypointTrainingDataset, add_dataset_arguments, training_splits
from .data.training import EpochBatchSampler, EpochItems
from .errors import UsageError
from .heatmaps import decode_heatmaps, gaussian_heatmaps
from .inference import cpu_info, fast_dtype, pick_device
from .losses import heatmap_loss, morphology_term
from .model_card import write_card
from .model_io import MAX_SHARD_BYTES, build_model, load_model, save_model
from .morphology import select_morphology

CHECKPOINT_WEIGHTS = "checkpoint.safetensors"
CHECKPOINT_STATE = "checkpoint.json"
LOG_FILE = "training_log.csv"
TRAIN_CONFIG_FILE = "train_config.json"
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
]
VALIDATION_CLICKS = 3


# ------------------------------------------------------------------ arguments
def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 256x128, got {text!r}") from None
    return h, w


def add_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    source = data.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--pack",
        type=Path,
        help="a training pack (interactive-keypoints pack) instead of --dataset; "
        "--split-seed and --drop-disordered-labels must be the pack's",
    )
    add_dataset_arguments(data, phantom_images=64, dataset_group=source)  # --dataset beside --pack: one of the two
    model = parser.add_argument_group("model")
    model.add_argument("--width", type=int, default=18, help="HRNet width (18, 32, ...)")
    model.add_argument(
        "--depth",
        choices=["compact", "full"],
        default="compact",
        help="compact: HRNet-small stages; full: the paper's HRNetV2 (1/4/3 modules)",
    )
    model.add_argument("--input", type=parse_size, default=(256, 128), help="network input HxW")
    model.add_argument(
        "--ocr-channels",
        type=int,
        nargs=2,
        default=(256, 128),
        metavar=("MID", "KEY"),
        help="OCR head sizes (the paper's 256 128; smaller for tiny test models)",
    )
    model.add_argument(
        "--sigma", type=float, default=None, help="heatmap sigma in input px (default: 7.5 at 512 px high, scaled)"
    )
    model.add_argument("--no-gating", action="store_true", help="ablation: no interaction-guided gating")
    model.add_argument("--gating-pool", choices=["max", "avg"], default="max")
    model.add_argument("--gate-channels", type=int, default=256, help="the gating network's width (paper: 256)")
    model.add_argument("--morphology", choices=["low", "high", "adjacent", "off"], default="low")
    model.add_argument("--n-pairs", type=int, default=70)
    model.add_argument("--n-triplets", type=int, default=70)
    model.add_argument("--morphology-weight", type=float, default=0.01)
    run = parser.add_argument_group("optimisation")
    run.add_argument("--epochs", type=int, default=300)
    run.add_argument("--batch-size", type=int, default=4, help="per process")
    run.add_argument("--lr", type=float, default=1e-3)
    run.add_argument(
        "--lr-schedule",
        choices=["constant", "cosine"],
        default="constant",
        help="cosine: decay from --lr to --min-lr over --epochs",
    )
    run.add_argument("--min-lr", type=float, default=1e-5)
    run.add_argument("--patience", type=int, default=50, help="early stopping on validation MRE (epochs)")
    run.add_argument("--iterative-max", type=int, default=2, help="extra no-grad click passes (0..N, uniform)")
    clicks = parser.add_argument_group("interaction (how simulated clicks teach the hint path)")
    clicks.add_argument(
        "--click-pass-bn",
        choices=["eval", "train"],
        default="eval",
        help="BatchNorm mode of the no-grad click passes: eval (as the paper's and RITM's code; "
        "running statistics see only graded passes) or train",
    )
    clicks.add_argument(
        "--train-prev",
        choices=["all", "clicked"],
        default="all",
        help="previous prediction fed in training: all channels (paper) or only clicked ones "
        "(the paper's inference rule)",
    )
    clicks.add_argument(
        "--clicked-loss-weight",
        type=float,
        default=1.0,
        help="heatmap-loss weight of clicked keypoints relative to unclicked ones",
    )
    clicks.add_argument(
        "--hint-scale-init",
        type=float,
        default=None,
        help="set the hint-fusion scale |s| before training (RITM's 0.05 suits a pretrained "
        "backbone; from scratch the hints then stay too faint to learn from); default: keep",
    )
    clicks.add_argument(
        "--occlusion-prob",
        type=float,
        default=0.0,
        help="probability of blanking a square around a random keypoint (clicks become informative)",
    )
    run.add_argument("--max-steps", type=int, default=None, help="stop after this many optimiser steps (tests)")
    run.add_argument("--max-minutes", type=float, default=None, help="stop (with a checkpoint) after this long")
    run.add_argument(
        "--budget-clock",
        choices=["wall", "cpu"],
        default="wall",
        help="what --max-minutes counts: wall-clock time, or this process's CPU time (a shared machine)",
    )
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--device", default="auto")
    run.add_argument(
        "--threads", type=int, default=None, help="CPU threads (default: all cores, shared between torchrun processes)"
    )
    run.add_argument("--no-fast", action="store_true", help="disable bf16 autocast / channels_last")
    run.add_argument("--save-dtype", choices=["float32", "float16"], default="float16")
    parser.add_argument("--out", type=Path, required=True, help="model folder to write")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.*")
    start = parser.add_mutually_exclusive_group()
    start.add_argument(
        "--init-from",
        type=Path,
        default=None,
        help="start from the weights of this model folder: the same landmarks and architecture (fine-tuning), "
        "or other landmarks (transfer: the landmark-sized layers start new)",
    )
    start.add_argument(
        "--transfer-from",
        type=Path,
        default=None,
        help="start from the tensors of this model folder whose name and shape match "
        "(another dataset's model: backbone yes, K-sized hint and head layers no)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_throughput_arguments(parser)


def add_throughput_arguments(parser: argparse.ArgumentParser) -> None:
    speed = parser.add_argument_group("throughput, validation and output")
    speed.add_argument(
        "--workers",
        type=int,
        default=0,
        help="DataLoader worker processes (persistent); results do not depend on the number",
    )
    speed.add_argument("--val-every", type=int, default=1, help="validate every N epochs (and after the last)")
    speed.add_argument(
        "--select-on",
        choices=["mre0", "mre3"],
        default="mre0",
        help=f"keep the weights with the best val MRE at 0 clicks or after {VALIDATION_CLICKS}",
    )
    speed.add_argument(
        "--checkpoint-every",
        type=int,
        default=1,
        help="write the resumable checkpoint every N epochs; 0: only at the end",
    )
    speed.add_argument(
        "--max-shard-mb",
        type=float,
        default=MAX_SHARD_BYTES / 1e6,
        help="split the model weights into files of at most this many MB",
    )


# ------------------------------------------------------------------ the configuration as data
def _config_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.dest != argparse.SUPPRESS and a.dest != "help"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="interactive-keypoints train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    return parser


# One field per argument of the parser, with its default: the parser stays the one place an
# option is declared (and documented), the config is what is saved and passed around.
TrainConfig = dataclasses.make_dataclass(
    "TrainConfig", [(a.dest, object, dataclasses.field(default=a.default)) for a in _config_actions(build_parser())]
)
TrainConfig.__doc__ = "Every argument of ``interactive-keypoints train``, as data (see ``build_parser``)."


def train_config(args) -> TrainConfig:
    """A TrainConfig from parsed arguments (extra attributes, e.g. the CLI's, are ignored)."""
    if isinstance(args, TrainConfig):
        return args
    return TrainConfig(**{f.name: getattr(args, f.name, f.default) for f in dataclasses.fields(TrainConfig)})


def config_to_json(config: TrainConfig) -> dict:
    def plain(value):
        return str(value) if isinstance(value, Path) else list(value) if isinstance(value, tuple) else value

    return {f.name: plain(getattr(config, f.name)) for f in dataclasses.fields(config)}


def config_from_json(data: dict) -> TrainConfig:
    """The inverse of :func:`config_to_json`; fields added since the file was written get their default."""
    actions = {a.dest: a for a in _config_actions(build_parser())}
    unknown = sorted(set(data) - set(actions))
    if unknown:
        raise ValueError(f"{TRAIN_CONFIG_FILE}: unknown options {', '.join(unknown)} (written by another version?)")

    def typed(action, value):
        if value is None:
            return None
        if action.type is Path or isinstance(action.default, Path):
            return Path(value)
        return tuple(value) if isinstance(value, list) else value

    return TrainConfig(**{name: typed(actions[name], value) for name, value in data.items()})


def config_arguments(config: TrainConfig) -> list[str]:
    """The command-line arguments that give ``config``: required ones and those off their default."""
    arguments = []
    for action in _config_actions(build_parser()):
        value = getattr(config, action.dest)
        if value == action.default and not action.required:
            continue
        flag = max(action.option_strings, key=len)
        if isinstance(action, argparse._StoreTrueAction):
            arguments.append(flag)
        elif action.nargs not in (None, "?") and isinstance(value, (list, tuple)):  # --ocr-channels MID KEY
            arguments += [flag, *(str(v) for v in value)]
        else:
            text = "x".join(str(v) for v in value) if action.type is parse_size else str(value)
            arguments += [flag, text]
    return arguments


def command_line(config: TrainConfig) -> str:
    """The shell command that trains with ``config`` (for model cards)."""
    return shlex.join(["interactive-keypoints", "train", *config_arguments(config)])


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
def load_splits(args):
    if args.pack is None:
        return training_splits(
            args.dataset, args.data_root, args.split_seed, args.phantom_images, args.drop_disordered_labels
        )
    from .data.pack import load_pack_splits

    if args.data_root is not None:
        raise UsageError("--pack holds the data: give --pack or --data-root, not both")
    train, val, split_record = load_pack_splits(args.pack, args.input, args.split_seed, args.drop_disordered_labels)
    args.dataset = split_record["dataset"]  # the model is named after it
    return train, val, split_record


def used_ids(split_record: dict) -> dict[str, list[str]]:
    """The ids each split trains or validates on: its ids less the skipped ones."""
    skipped = {part: {sample_id for sample_id, _ in pairs} for part, pairs in split_record.get("skipped", {}).items()}
    return {part: [i for i in ids if i not in skipped.get(part, ())] for part, ids in split_record["ids"].items()}


# the measurement set of each dataset's landmarks (the phantoms use the AASCE corner order)
DATASET_MEASUREMENTS = {"aasce": "aasce-cobb", "phantom": "aasce-cobb", "isbi": "isbi-ceph"}


def dataset_name(args) -> str:
    """What the model is named after: the dataset, or a landmark folder's own name."""
    return Path(args.data_root).resolve().name if args.dataset == "folder" and args.data_root else args.dataset


def make_config(args, train) -> ModelConfig:
    sigma = args.sigma if args.sigma is not None else 7.5 * args.input[0] / 512
    depth = {} if args.depth == "compact" else dict(stage_modules=(1, 4, 3), stage_blocks=4, stem_blocks=4)
    return compact_config(
        train.num_keypoints,
        input_size=args.input,
        width=args.width,
        landmark_names=list(train.landmark_names),
        flip_pairs=[tuple(p) for p in train.flip_pairs] if train.flip_allowed else [],
        gating=not args.no_gating,
        gating_pool=args.gating_pool,
        gate_channels=args.gate_channels,
        sigma=sigma,
        ocr_mid_channels=args.ocr_channels[0],
        ocr_key_channels=args.ocr_channels[1],
        name=f"{dataset_name(args)}-{train.num_keypoints}",
        description=f"trained with interactive-keypoints train on {dataset_name(args)}",
        measurements=DATASET_MEASUREMENTS.get(args.dataset, ""),
        **depth,
    )


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
def training_step(network, batch, rng, config, selection, args, device, autocast, graded_network=None):
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
    partial = labelled is not None and not bool(labelled.all())
    if partial:
        labelled = labelled.to(device)
        visible = visible & labelled  # for clicks and the morphology term; the loss masks by label
    size = config.input_size
    if not args.no_fast:
        images = images.contiguous(memory_format=torch.channels_last)
    b, k = points.shape[:2]
    user = SimulatedUser()  # exact clicks: the hints are the true positions of the clicked points
    clicked = torch.from_numpy(np.stack([sample_click_mask(rng, k) for _ in range(b)])).to(device) & visible
    prev = torch.zeros(b, k, *size, device=device)
    passes = int(rng.integers(0, args.iterative_max + 1))
    if passes and args.click_pass_bn == "eval":
        network.eval()  # the simulated user's passes must not move the BatchNorm running statistics
    try:
        for _ in range(passes):
            with torch.no_grad(), autocast():
                out = network(
                    images,
                    gaussian_heatmaps(points, size, config.sigma, clicked),
                    previous_input(prev, clicked, args.train_prev),
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
            previous_input(prev, clicked, args.train_prev),
        )
    target = gaussian_heatmaps(points, size, config.sigma, visible)
    weight = None
    if args.clicked_loss_weight != 1.0:
        weight = torch.where(clicked, args.clicked_loss_weight, 1.0).to(torch.float32)
    if partial:
        weight = labelled.to(torch.float32) * (1.0 if weight is None else weight)
    loss_heatmap = heatmap_loss(out, target, channel_weight=weight)
    loss_morph = morphology_term(
        out["logits"], points, visible, selection, args.morphology_weight, args.morphology_weight
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
    """
    network.eval()
    k, size = config.num_keypoints, config.input_size
    clicks = min(clicks, k)
    user = SimulatedUser()
    totals, images_seen = torch.zeros(3, device=device), 0
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
                start_errors = errors
            if step < clicks:
                user.click(points, truth, clicked)
        # the manual user sets the `clicks` largest errors of the start to zero
        manual = start_errors.sum(1) - start_errors.topk(clicks, dim=1).values.sum(1)
        totals += torch.stack([start_errors.mean(1).sum(), errors.mean(1).sum(), (manual / k).sum()])
        images_seen += b
    network.train()
    mre0, mre3, manual3 = (totals / max(images_seen, 1)).tolist()  # the one sync
    return {
        "mre0_px": mre0,
        "mre3_px": mre3,
        "manual3_px": manual3,
        "propagation_gain_px": manual3 - mre3,
        "clicks": clicks,
        "images": images_seen,
    }


def learning_rate(args, epoch: int, elapsed_s: float | None = None) -> float:
    """The rate of one epoch; a function of the epoch alone, so resuming keeps the schedule.

    With --max-minutes the cosine runs over the time budget instead: progress = elapsed / budget
    (``elapsed_s``; resuming keeps it too, the elapsed time is in the checkpoint)."""
    if args.lr_schedule == "constant":
        return args.lr
    budget_s = 60 * args.max_minutes if getattr(args, "max_minutes", None) else None
    if budget_s and elapsed_s is not None:
        progress = min(elapsed_s / budget_s, 1.0)
    else:
        progress = min(epoch / max(args.epochs, 1), 1.0)
    return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1 + math.cos(math.pi * progress))


# ModelConfig fields a fine-tuning may change: names, heatmap target, intensity handling, and
# what runs after the network (the correction field, a local stage: neither is in its weights)
NOT_ARCHITECTURE = {
    "landmark_names", "sigma", "intensity", "flip_pairs", "name", "description", "measurements", "format_version",
    "correction_length", "correction_noise", "local_stage",
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


def make_optimizer(network, args, device):
    # the fused kernel updates all parameters in a few launches instead of several per tensor
    return torch.optim.Adam(network.parameters(), lr=args.lr, fused=device.type == "cuda")


def epoch_batches(args, epoch: int, num_items: int, rank: int, world: int) -> list[list[tuple[int, int]]]:
    """The (epoch, index) keys of this rank's batches: one shared permutation per (seed, epoch),
    an equal share per rank (DDP needs equal step counts), incomplete batches dropped."""
    order = np.random.default_rng([args.seed, epoch]).permutation(num_items)
    share = len(order) // world
    order = order[rank::world][:share]
    return [
        [(epoch, int(i)) for i in order[i : i + args.batch_size]]
        for i in range(0, share - args.batch_size + 1, args.batch_size)
    ]


def make_loaders(train_data, val_data, args, device):
    """Training and validation loaders; workers persist over epochs, their own RNG unused
    (the augmentation is seeded per item) and the global torch RNG left alone."""
    workers = max(0, args.workers)
    common = dict(
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(args.seed),
    )
    sampler = EpochBatchSampler()
    train_loader = torch.utils.data.DataLoader(EpochItems(train_data), batch_sampler=sampler, **common)
    val_loader = torch.utils.data.DataLoader(val_data, batch_size=args.batch_size, shuffle=False, **common)
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

    def __init__(self, out: Path, budget_s: float | None, args, train_images: int, val_images: int):
        self.path, self.budget_s, self.args = out / PROGRESS_FILE, budget_s, args
        self.fixed = {
            "pid": os.getpid(),
            "budget_s": budget_s,
            "budget_clock": args.budget_clock,
            "epochs": args.epochs,
            "train_images": train_images,
            "val_images": val_images,
        }
        total = round(budget_s) if budget_s else args.epochs
        of = f"s of the {args.budget_clock}-clock budget" if budget_s else "epochs"
        self.bar = tqdm(
            total=total,
            desc="training",
            disable=args.quiet,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n}/{total} " + of + " [{elapsed}{postfix}]",
        )

    def fraction(self, state: dict) -> float:
        done = [state["elapsed_s"] / self.budget_s] if self.budget_s else [state["epoch"] / max(self.args.epochs, 1)]
        if self.args.max_steps:
            done.append(state["step"] / self.args.max_steps)
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
    kept = [rows[0]] + [row for row in rows[1:] if row and int(row[0]) < epoch]
    if len(kept) != len(rows):
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
    return f"epoch {epoch}: {images_per_s:.1f} img/s loss {loss:.4f} {val} {elapsed_s:.0f} s"


# ------------------------------------------------------------------ main loop
def train(args) -> Path:
    args = train_config(args)
    rank, world, device = setup_distributed(args.device)
    if args.threads:  # e.g. two runs side by side: oversubscribed OpenMP threads spin and crawl
        torch.set_num_threads(args.threads)
    is_main = rank == 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)

    train_split, val_split, split_record = load_splits(args)
    if len(train_split) == 0 or len(val_split) == 0:
        raise UsageError(f"empty split: {len(train_split)} train / {len(val_split)} val images")
    config = make_config(args, train_split)
    # relations are chosen on whole labels (a partly reviewed image holds stand-ins)
    complete = train_split.complete()
    labels, variant = (complete, args.morphology) if len(complete) >= 2 else (train_split, "off")
    selection = select_morphology(labels.points_array(), labels.image_sizes(), variant, args.n_pairs, args.n_triplets)
    model = build_model(config)
    if args.init_from is not None and not args.resume:
        model.network.load_state_dict(initial_weights(args.init_from, config, model.network))
    if args.transfer_from is not None and not args.resume:
        fits, fresh = transferable_weights(args.transfer_from, model.network)
        model.network.load_state_dict(fits, strict=False)
        if is_main:
            print(
                f"transferred {len(fits)} tensors from {args.transfer_from}; {len(fresh)} start fresh "
                f"(first: {', '.join(fresh[:4])})",
                flush=True,
            )
    if args.hint_scale_init is not None and not args.resume:
        with torch.no_grad():
            model.network.hint_fusion.scale.fill_(args.hint_scale_init)
    fast = not args.no_fast
    network, autocast, dtype = setup_fast_path(model.network.to(device), device, fast)
    optimizer = make_optimizer(network, args, device)

    state = {
        "epoch": 0,
        "step": 0,
        "best_mre": math.inf,
        "best_epoch": -1,
        "epochs_without_improvement": 0,
        "split": split_record,
        "seed": args.seed,
        "elapsed_s": 0.0,
        "select_on": args.select_on,
        "init_from": str(args.init_from) if args.init_from else None,
        "transfer_from": str(args.transfer_from) if args.transfer_from else None,
        "start": start_description(args.init_from, config),
    }
    if args.resume and has_checkpoint(out):
        state = load_checkpoint(out, network, optimizer)
        if used_ids(state["split"]) != used_ids(split_record):
            raise UsageError(
                "the checkpoint was trained on a different split; resume with the same --split-seed, "
                "data and --drop-disordered-labels"
            )
        if is_main:
            print(f"resumed from epoch {state['epoch']} (best val MRE {state['best_mre']:.2f} px)", flush=True)
    ddp = DistributedDataParallel(network) if world > 1 else network

    train_data = KeypointTrainingDataset(
        train_split,
        config.input_size,
        config.intensity,
        augment=True,
        seed=args.seed,
        occlusion_prob=args.occlusion_prob,
    )
    val_data = KeypointTrainingDataset(val_split, config.input_size, config.intensity, augment=False)
    train_data.preload()  # before the workers fork: they share the decoded images
    val_data.preload()
    train_loader, sampler, val_loader = make_loaders(train_data, val_data, args, device)
    max_shard_bytes = int(args.max_shard_mb * 1e6)
    if is_main:
        config.save(out / "model.json")
        selection.save(out / "morphology.json")
        (out / "split.json").write_text(json.dumps(split_record, indent=1))
        (out / TRAIN_CONFIG_FILE).write_text(json.dumps(config_to_json(args), indent=1) + "\n")

    log_path = out / LOG_FILE
    if is_main:
        if args.resume and log_path.exists():
            keep_log_rows_before(log_path, state["epoch"])
        else:
            with open(log_path, "w", newline="") as f:
                csv.writer(f).writerow(LOG_COLUMNS)

    clock = time.process_time if args.budget_clock == "cpu" else time.time  # what the budget counts
    start_time = clock() - state["elapsed_s"]
    wall_start, cpu_start = time.time() - state.get("wall_s", 0.0), time.process_time() - state.get("cpu_s", 0.0)
    budget_s = 60 * args.max_minutes if args.max_minutes is not None else None
    by_time = budget_s is not None and args.lr_schedule == "cosine"
    val_s = 0.0  # the last validation's duration: part of what another epoch costs
    stop, first_epoch = False, True
    progress = Progress(out, budget_s, args, len(train_split), len(val_split)) if is_main else None
    if progress is not None:
        progress.update(state)
    while state["epoch"] < args.epochs and not stop:
        epoch = state["epoch"]
        # everything random in an epoch derives from (seed, epoch, rank): resuming is exact
        rng = np.random.default_rng([args.seed, epoch, rank])
        sampler.batches = epoch_batches(args, epoch, len(train_data), rank, world)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(args, epoch, clock() - start_time if by_time else None)
        network.train()
        sums = torch.zeros(3, device=device)  # loss, heatmap, morphology: summed on the device, no sync per step
        seen, steps, epoch_start, epoch_wall = 0, 0, clock(), time.time()
        for batch in tqdm(
            train_loader, desc=f"epoch {epoch}", disable=args.quiet or not is_main, leave=False, position=1
        ):
            if by_time:
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(args, epoch, clock() - start_time)
            loss_h, loss_m = training_step(
                network, to_device(batch, device), rng, config, selection, args, device, autocast, ddp
            )
            loss = loss_h + loss_m
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sums += torch.stack([t.detach().float() for t in (loss, loss_h, loss_m)])
            seen += len(batch["id"])
            steps += 1
            state["step"] += 1
            if args.max_steps is not None and state["step"] >= args.max_steps:
                stop = True
                break
        mean_losses = (sums / max(steps, 1)).tolist()  # the epoch's one sync with the device
        train_s = clock() - epoch_start
        images_per_s = seen * world / max(time.time() - epoch_wall, 1e-9)
        state["epoch"] = epoch + 1
        elapsed = clock() - start_time
        # the last epoch: by count, by steps, or because another one (with validation) would overrun the budget
        final = (
            stop or state["epoch"] >= args.epochs or (budget_s is not None and elapsed + train_s + 2 * val_s > budget_s)
        )
        final = broadcast_flag(final, world, device)

        metrics = None
        if is_main and (final or state["epoch"] % max(args.val_every, 1) == 0):
            val_start = clock()
            metrics = validation_metrics(network, val_loader, config, device, autocast, channels_last=fast)
            val_s = clock() - val_start
            score = metrics["mre0_px" if args.select_on == "mre0" else "mre3_px"]
            if score < state["best_mre"]:
                state.update(best_mre=score, best_epoch=epoch, epochs_without_improvement=0)
                save_model(out, model, dtype=getattr(torch, args.save_dtype), max_shard_bytes=max_shard_bytes)
                (out / VAL_METRICS_FILE).write_text(
                    json.dumps({"epoch": epoch, "select_on": args.select_on, **metrics}, indent=1) + "\n"
                )
            else:
                state["epochs_without_improvement"] = epoch - state["best_epoch"]
        out_of_patience = state["epochs_without_improvement"] >= args.patience
        stop = broadcast_flag(final or out_of_patience, world, device)
        state["elapsed_s"] = clock() - start_time
        state["wall_s"], state["cpu_s"] = time.time() - wall_start, time.process_time() - cpu_start
        if is_main:
            m = metrics or {}
            nan = math.nan
            with open(log_path, "a", newline="") as f:
                csv.writer(f).writerow(
                    [
                        epoch,
                        state["step"],
                        *np.round(mean_losses, 6),
                        round(m.get("mre0_px", nan), 3),
                        round(state["best_mre"], 3),
                        optimizer.param_groups[0]["lr"],
                        round(images_per_s, 2),
                        round(state["elapsed_s"], 1),
                        *(round(m.get(key, nan), 3) for key in ("mre3_px", "manual3_px", "propagation_gain_px")),
                    ]
                )
            print(epoch_line(epoch, images_per_s, mean_losses[0], metrics, state["elapsed_s"]), flush=True)
            if first_epoch:
                peak = (
                    f", peak memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"
                    if device.type == "cuda"
                    else ""
                )
                print(
                    f"device {device_description(device)}, torch {torch.__version__}, "
                    f"autocast {dtype or 'off (float32)'}{peak}",
                    flush=True,
                )
            if stop or (args.checkpoint_every > 0 and state["epoch"] % args.checkpoint_every == 0):
                save_checkpoint(out, network, optimizer, state)
            progress.update(state)
        first_epoch = False

    summary = {
        "epochs": state["epoch"],
        "steps": state["step"],
        "best_val_mre_px": state["best_mre"],
        "best_epoch": state["best_epoch"],
        "select_on": args.select_on,
        "init_from": state.get("init_from"),
        "transfer_from": state.get("transfer_from"),
        "elapsed_s": round(state["elapsed_s"], 1),
        "wall_s": round(state.get("wall_s", 0.0), 1),
        "cpu_s": round(state.get("cpu_s", 0.0), 1),
        "budget_minutes": args.max_minutes,
        "budget_clock": args.budget_clock,
        "start": state.get("start"),
        "world_size": world,
        "device": str(device),
        "device_name": device_description(device),
        "torch": torch.__version__,
        "fast_path": dtype is not None and str(dtype),
        "workers": args.workers,
        "command": command_line(args),
    }
    if device.type == "cuda":
        summary["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    if world > 1:
        fingerprints = [None] * world
        dist.all_gather_object(fingerprints, parameter_fingerprint(network))
        summary["replica_fingerprints"] = fingerprints
    if is_main:
        (out / "train_summary.json").write_text(json.dumps(summary, indent=1))
        if args.dataset == "folder":  # a user's own landmarks: the card says what the model is
            metrics = json.loads((out / VAL_METRICS_FILE).read_text()) if (out / VAL_METRICS_FILE).is_file() else None
            partial = sum(sample.labelled is not None for sample in train_split)
            write_card(out, config, summary, dict(split_record, root=str(args.data_root)), metrics, partial)
        progress.close(state)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return out


def run(args) -> int:
    out = train(args)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"model folder: {out}")
    return 0


def main(argv=None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
