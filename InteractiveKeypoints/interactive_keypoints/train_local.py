"""Train a model folder's local stage (:mod:`.local_stage`) in CPU-minutes.

    interactive-keypoints train-local --model models/isbi-ceph-19 --dataset isbi \\
        --data-root ../shared/data/ISBI2015 --max-minutes 60 --out runs/isbi-ceph-19-local

1. The first stage's own errors, measured: the model folder's network runs on every training
   and validation image with no clicks (the correction field and any stage it has off). The
   points go to ``OUT/cache/`` (derived from the data: never commit it); per-landmark
   statistics of the errors to ``OUT/first_stage_errors.json``.
2. Training patches: a landmark's true position shifted by one of *that landmark's* measured
   training errors (from a random training image), times a factor drawn from
   U(``--offset-scale``): a first stage errs more on new images than on those it was trained
   on (the JSON says by how much on this data), so the factor widens the measured shape.
   Then the first stage's augmentation family about the patch centre (rotation, zoom, a flip
   that swaps left/right landmarks where the anatomy allows it; brightness/contrast).
3. Validation: patches at the first stage's real 0-click points on the validation images;
   MRE before and after the stage. The best weights go into ``OUT``, a copy of the model
   folder with the stage declared in its ``model.json``; ``OUT/checkpoint.*`` resumes
   (``--resume``; everything random in a step derives from (seed, step): resuming is exact).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import Compose
from tqdm import tqdm

from .augment import flip_permutation, intensity_augmentations, plain_tensor
from .data import DatasetSplit, add_dataset_arguments, training_splits
from .data.common import load_grey_image
from .errors import UsageError
from .heatmaps import gaussian_heatmaps
from .imaging import Radiograph
from .inference import Predictor, pick_device
from .local_stage import (
    HEADS,
    IDENTITIES,
    LocalStageConfig,
    LocalStageNet,
    PatchSource,
    add_local_stage,
    cut_patches,
    decode_patch_logits,
    from_patch,
    patch_matrices,
    to_patch,
)
from .model_io import KeypointModel, copy_model_folder, load_model
from .session import KeypointSession
from .train import device_description, learning_rate, load_checkpoint, save_checkpoint, setup_fast_path

CHECKPOINT_STATE = "checkpoint.json"
LOG_FILE = "local_stage_log.csv"
ERRORS_FILE = "first_stage_errors.json"
LOG_COLUMNS = ["epoch", "step", "loss", "val_mre_before_px", "val_mre_px", "best_val_mre_px", "lr", "patches_per_s", "elapsed_s"]  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument("--model", type=Path, required=True, help="the model folder whose first stage this refines")
    add_dataset_arguments(data, phantom_images=64)
    stage = parser.add_argument_group("the stage (local_stage.LocalStageConfig)")
    stage.add_argument("--patch-size", type=int, default=64, help="P: patches are P x P fine pixels")
    stage.add_argument("--pixels-per-height", type=float, default=1200.0, help="the image height in fine patch pixels")
    stage.add_argument("--context", type=float, default=4.0, help="the context channel's pixel, in fine pixels")
    stage.add_argument("--identity", choices=IDENTITIES, default="output", help="landmark identity: output or input")
    stage.add_argument("--head", choices=HEADS, default="heatmap")
    stage.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64, 128], help="U-Net widths")
    stage.add_argument("--sigma", type=float, default=2.0, help="heatmap Gaussian, fine pixels")
    stage.add_argument("--passes", type=int, default=1, help="refine, re-centre and refine again: passes in all")
    run = parser.add_argument_group("optimisation")
    run.add_argument(
        "--offset-scale", type=float, nargs=2, default=[0.75, 1.75], metavar=("LOW", "HIGH"),
        help="measured first-stage errors are scaled by U(LOW, HIGH) to place training patches",
    )  # fmt: skip
    run.add_argument("--patches-per-image", type=int, default=8)
    run.add_argument("--images-per-step", type=int, default=8)
    run.add_argument("--steps-per-epoch", type=int, default=100, help="an epoch: this many steps, then validation")
    run.add_argument("--epochs", type=int, default=60)
    run.add_argument("--lr", type=float, default=1e-3)
    run.add_argument("--min-lr", type=float, default=1e-5)
    run.add_argument("--lr-schedule", choices=["cosine", "constant"], default="cosine")
    run.add_argument("--max-minutes", type=float, default=None, help="stop (with a checkpoint) after this long")
    run.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (tests)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--device", default="auto")
    run.add_argument("--threads", type=int, default=None)
    run.add_argument("--no-fast", action="store_true", help="fp32 even where the CPU has bf16")
    parser.add_argument("--out", type=Path, required=True, help="the model folder to write (a copy with the stage)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.*")
    parser.add_argument(
        "--cache", type=Path, default=None, help="where the first stage's points are kept (default OUT/cache)"
    )
    parser.add_argument("--quiet", action="store_true")


def stage_config(args, num_keypoints: int) -> LocalStageConfig:
    return LocalStageConfig(
        num_keypoints=num_keypoints,
        patch_size=args.patch_size,
        pixels_per_height=args.pixels_per_height,
        context=args.context,
        identity=args.identity,
        head=args.head,
        channels=tuple(args.channels),
        sigma=args.sigma,
        passes=args.passes,
    )


# ------------------------------------------------------------------ the first stage's errors


@dataclass
class StageImages:
    """One split as the local stage trains on it: each image ready for patches, the truth and
    the first stage's 0-click points (original pixels)."""

    split: DatasetSplit
    sources: list[PatchSource]
    truth: np.ndarray  # (N, K, 2)
    first_stage: np.ndarray  # (N, K, 2)

    @property
    def residuals(self) -> np.ndarray:
        """(N, K, 2) first stage minus truth."""
        return self.first_stage - self.truth


def first_stage_points(model: KeypointModel, predictor: Predictor, radiograph: Radiograph) -> np.ndarray:
    """The first stage's 0-click points: the network alone (no correction field, no local stage)."""
    session = KeypointSession(model, radiograph, predictor=predictor, correction_length=0.0, local_stage=False)
    return session.predict().points


def load_stage_images(
    split: DatasetSplit, model: KeypointModel, predictor: Predictor, cache: Path, quiet: bool
) -> StageImages:
    """Every image of ``split`` normalised for patches, with the first stage's points (cached by id)."""
    cache_file = cache / f"first_stage_{split.split}.json"
    cached = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    sources, points = [], []
    for sample in tqdm(split.samples, desc=f"{split.split}: first stage", disable=quiet):
        radiograph = Radiograph(load_grey_image(sample), sample.spacing, sample.spacing_known)
        if sample.id not in cached:
            cached[sample.id] = first_stage_points(model, predictor, radiograph).tolist()
        points.append(np.asarray(cached[sample.id], dtype=np.float64))
        sources.append(PatchSource.from_image(radiograph, model.config.intensity))
    cache.mkdir(parents=True, exist_ok=True)
    cache_file.write_text(json.dumps(cached))
    return StageImages(split, sources, split.points_array(), np.stack(points))


def error_statistics(images: StageImages) -> dict:
    """Per-landmark radial error of the first stage (original px, and mm where known)."""
    errors = np.linalg.norm(images.residuals, axis=-1)  # (N, K)
    spacing = np.array([s.spacing[0] for s in images.split.samples])[:, None]
    quantiles = (50, 90, 97, 99)
    entry = {
        "images": len(errors),
        "mre_px": float(errors.mean()),
        "sd_xy_px": images.residuals.reshape(-1, 2).std(0).round(3).tolist(),
        "percentiles_px": dict(zip(map(str, quantiles), np.percentile(errors, quantiles).round(2).tolist())),
        "per_landmark_mre_px": errors.mean(0).round(2).tolist(),
    }
    if all(s.spacing_known for s in images.split.samples):
        entry["mre_mm"] = float((errors * spacing).mean())
    return entry


# ------------------------------------------------------------------ patches for one step


def training_patches(images: StageImages, config: LocalStageConfig, args, rng: np.random.Generator):
    """(patches (B, 2, P, P), landmark ids (B,), targets (B, 2) patch pixels) for one step."""
    n, k = images.truth.shape[:2]
    split = images.split
    flip_perm = flip_permutation(k, split.flip_pairs)
    patches, landmarks, targets = [], [], []
    for i in rng.choice(n, size=args.images_per_step, replace=n < args.images_per_step):
        ks = rng.choice(k, size=args.patches_per_image, replace=k < args.patches_per_image)
        donors = rng.integers(0, n, size=len(ks))  # whose measured error this patch's start repeats
        low, high = args.offset_scale
        scale = rng.uniform(low, high, size=(len(ks), 1))
        centres = images.truth[i, ks] + scale * images.residuals[donors, ks]
        # the first stage's augmentation family, each with probability 0.5, about the patch centre
        rotation = np.where(rng.random(len(ks)) < 0.5, rng.uniform(-15, 15, len(ks)), 0.0)
        zoom = np.where(rng.random(len(ks)) < 0.5, rng.uniform(0.9, 1.2, len(ks)), 1.0)
        source = images.sources[i]
        matrices = patch_matrices(centres, config.patch_size, config.fine_pixel(source.height), rotation, zoom)
        identity = ks.copy()
        if split.flip_allowed and split.flip_pairs:
            flipped = rng.random(len(ks)) < 0.5
            mirror = np.diag([-1.0, 1.0, 1.0])
            mirror[0, 2] = config.patch_size - 1  # x -> P - 1 - x: about the patch's middle
            matrices[flipped] = mirror @ matrices[flipped]
            identity[flipped] = flip_perm[ks[flipped]]  # a mirrored left corner is a right corner
        patches.append(cut_patches(source, matrices, config.patch_size, config.context))
        landmarks.append(identity)
        targets.append(to_patch(images.truth[i, ks], matrices))
    return torch.cat(patches), torch.as_tensor(np.concatenate(landmarks)), torch.as_tensor(np.concatenate(targets))


def augment_intensity(patches: torch.Tensor, pipeline: Compose, seed: int) -> torch.Tensor:
    """The first stage's brightness/contrast augmentation (MONAI), per patch, both channels alike."""
    pipeline.set_random_state(seed=seed)
    return torch.stack([plain_tensor(pipeline({"image": p})["image"]) for p in patches])


def patch_loss(logits: torch.Tensor, targets: torch.Tensor, config: LocalStageConfig) -> torch.Tensor:
    """BCE against a Gaussian at the target (``heatmap``) or L1 of the softmax expectation (``integral``)."""
    p = config.patch_size
    if config.head == "integral":
        return F.l1_loss(decode_patch_logits(logits.float(), "integral"), targets.float())
    heatmaps = gaussian_heatmaps(targets[:, None].float(), (p, p), config.sigma)
    return F.binary_cross_entropy_with_logits(logits.float(), heatmaps)


# ------------------------------------------------------------------ validation


@dataclass
class ValidationPatches:
    """Patches at the first stage's 0-click points of every validation image, cut once."""

    patches: torch.Tensor  # (N * K, 2, P, P)
    landmarks: torch.Tensor  # (N * K,)
    matrices: np.ndarray  # (N * K, 3, 3)
    truth: np.ndarray  # (N * K, 2)
    start: np.ndarray  # (N * K, 2)
    mm_per_px: np.ndarray  # (N * K,) 1.0 where the spacing is unknown

    @classmethod
    def cut(cls, images: StageImages, config: LocalStageConfig) -> ValidationPatches:
        n, k = images.truth.shape[:2]
        patches, matrices = [], []
        for source, start in zip(images.sources, images.first_stage):
            m = patch_matrices(start, config.patch_size, config.fine_pixel(source.height))
            patches.append(cut_patches(source, m, config.patch_size, config.context))
            matrices.append(m)
        spacing = np.repeat([s.spacing[0] for s in images.split.samples], k)
        return cls(
            torch.cat(patches),
            torch.as_tensor(np.tile(np.arange(k), n)),
            np.concatenate(matrices),
            images.truth.reshape(-1, 2),
            images.first_stage.reshape(-1, 2),
            spacing,
        )


@torch.no_grad()
def validate(
    network: LocalStageNet, val: ValidationPatches, config: LocalStageConfig, autocast, batch: int = 256
) -> dict:
    network.eval()
    found = []
    for i in range(0, len(val.patches), batch):
        with autocast():
            logits = network(val.patches[i : i + batch], val.landmarks[i : i + batch])
        found.append(decode_patch_logits(logits.float(), config.head))
    refined = from_patch(torch.cat(found).numpy().astype(np.float64), val.matrices)
    before = np.linalg.norm(val.start - val.truth, axis=1)
    after = np.linalg.norm(refined - val.truth, axis=1)
    return {
        "mre_before_px": float(before.mean()),
        "mre_px": float(after.mean()),
        "mre_before_mm": float((before * val.mm_per_px).mean()),
        "mre_mm": float((after * val.mm_per_px).mean()),
        "sdr2mm_before": float((before * val.mm_per_px <= 2.0).mean()),
        "sdr2mm": float((after * val.mm_per_px <= 2.0).mean()),
    }


# ------------------------------------------------------------------ the run


def model_and_splits(args) -> tuple[KeypointModel, DatasetSplit, DatasetSplit]:
    """The model folder a part is trained for and the dataset's train / val splits (train-local,
    train-decoder), refused when their landmark counts differ."""
    model = load_model(args.model)
    train_split, val_split, _ = training_splits(
        args.dataset, args.data_root, args.split_seed, args.phantom_images, args.drop_disordered_labels
    )
    if train_split.num_keypoints != model.config.num_keypoints:
        raise UsageError(
            f"{args.model} has {model.config.num_keypoints} landmarks, the dataset {train_split.num_keypoints}"
        )
    return model, train_split, val_split


def train_local(args) -> Path:
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    device = pick_device(args.device)
    model, train_split, val_split = model_and_splits(args)
    config = stage_config(args, model.config.num_keypoints)
    if not args.resume or not (out / "model.json").is_file():
        copy_model_folder(Path(args.model), out)
    predictor = Predictor(model, device)
    cache = args.cache or out / "cache"
    # validation first: its patches are all it keeps, so its images are freed before training's are read
    val_images = load_stage_images(val_split, model, predictor, cache, args.quiet)
    val = ValidationPatches.cut(val_images, config)
    errors = {"val": error_statistics(val_images)}
    del val_images
    train_images = load_stage_images(train_split, model, predictor, cache, args.quiet)
    errors["train"] = error_statistics(train_images)
    errors["val_over_train_mre"] = errors["val"]["mre_px"] / max(errors["train"]["mre_px"], 1e-9)
    (out / ERRORS_FILE).write_text(json.dumps(errors, indent=1) + "\n")

    torch.manual_seed(args.seed)
    network = LocalStageNet(config).to(device)
    network, autocast, dtype = setup_fast_path(network, device, not args.no_fast)
    optimizer = torch.optim.Adam(network.parameters(), lr=args.lr)
    state = {"epoch": 0, "step": 0, "best_mre": math.inf, "best_epoch": -1, "elapsed_s": 0.0, "seed": args.seed}
    if args.resume and (out / CHECKPOINT_STATE).is_file():
        state = load_checkpoint(out, network, optimizer)
        print(f"resumed at epoch {state['epoch']} (best val MRE {state['best_mre']:.2f} px)", flush=True)
    log_path = out / LOG_FILE
    if not (args.resume and log_path.is_file()):
        with open(log_path, "w", newline="") as f:
            csv.writer(f).writerow(LOG_COLUMNS)

    intensity = Compose(intensity_augmentations())
    start = time.time() - state["elapsed_s"]
    budget_s = 60 * args.max_minutes if args.max_minutes else None
    by_time = budget_s is not None and args.lr_schedule == "cosine"
    stop = False
    while state["epoch"] < args.epochs and not stop:
        epoch, network_losses, epoch_start = state["epoch"], [], time.time()
        network.train()
        for _ in tqdm(range(args.steps_per_epoch), desc=f"epoch {epoch}", disable=args.quiet, leave=False):
            lr = learning_rate(args, epoch, time.time() - start if by_time else None)
            for group in optimizer.param_groups:
                group["lr"] = lr
            rng = np.random.default_rng([args.seed, state["step"]])
            patches, landmarks, targets = training_patches(train_images, config, args, rng)
            patches = augment_intensity(patches, intensity, int(rng.integers(2**31)))
            with autocast():
                logits = network(patches.to(device), landmarks.to(device))
            loss = patch_loss(logits, targets.to(device), config)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            network_losses.append(float(loss.detach()))
            state["step"] += 1
            if args.max_steps is not None and state["step"] >= args.max_steps:
                stop = True
                break
        train_s = time.time() - epoch_start
        state["epoch"] = epoch + 1
        metrics = validate(network, val, config, autocast)
        if metrics["mre_px"] < state["best_mre"]:
            state.update(best_mre=metrics["mre_px"], best_epoch=epoch)
            network.config.trained = trained_record(args, state, metrics, errors, device, dtype)
            add_local_stage(out, network)
        state["elapsed_s"] = time.time() - start
        stop = stop or (budget_s is not None and state["elapsed_s"] + train_s > budget_s)
        save_checkpoint(out, network, optimizer, state)
        patches_per_s = len(network_losses) * args.images_per_step * args.patches_per_image / max(train_s, 1e-9)
        with open(log_path, "a", newline="") as f:
            csv.writer(f).writerow(
                [epoch, state["step"], round(float(np.mean(network_losses or [math.nan])), 5)]
                + [round(metrics["mre_before_px"], 3), round(metrics["mre_px"], 3), round(state["best_mre"], 3)]
                + [f"{lr:.3g}", round(patches_per_s, 1), round(state["elapsed_s"], 1)]
            )
        print(
            f"epoch {epoch}: loss {np.mean(network_losses or [math.nan]):.4f}, val MRE {metrics['mre_before_px']:.2f} -> "
            f"{metrics['mre_px']:.2f} px ({metrics['mre_before_mm']:.3f} -> {metrics['mre_mm']:.3f} mm, SDR 2 mm "
            f"{100 * metrics['sdr2mm_before']:.1f} -> {100 * metrics['sdr2mm']:.1f} %), {patches_per_s:.0f} patches/s, "
            f"{state['elapsed_s'] / 60:.1f} min",
            flush=True,
        )
    return out


def trained_record(args, state: dict, metrics: dict, errors: dict, device, dtype) -> dict:
    """What the stage's ``trained`` entry in model.json says of how it was made."""
    return {
        "dataset": args.dataset,
        "epoch": state["epoch"] - 1,
        "steps": state["step"],
        "minutes": round(state["elapsed_s"] / 60, 1),
        "device": device_description(device),
        "autocast": str(dtype) if dtype is not None else "float32",
        "offset_scale": list(args.offset_scale),
        "val": {key: round(value, 4) for key, value in metrics.items()},
        "first_stage_train_mre_px": round(errors["train"]["mre_px"], 3),
        "first_stage_val_mre_px": round(errors["val"]["mre_px"], 3),
    }


def run(args) -> int:
    print(f"model folder: {train_local(args)}")
    return 0
