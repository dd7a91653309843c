"""Train a model folder's click decoder (:mod:`.click_decoder`) in CPU-minutes.

    interactive-keypoints train-decoder --model models/aasce-spine-68 --dataset aasce \\
        --data-root ../shared/data/boostnet_labeldata --drop-disordered-labels --group 4 \\
        --out runs/aasce-decoder

1. States, cached: on every training and validation image the model folder's network runs
   under the simulated user (:class:`.clicks.SimulatedUser`: the worst point not yet clicked,
   judged on what the session shows, i.e. with the model's correction field) for ``--clicks``
   clicks; the network's own points after each click go to ``OUT/cache/`` (derived from the
   data: never commit it). A re-run with the same model (its weights and field, and under
   ``--on-policy`` its decoder: :func:`states_fingerprint`), clicks and images reuses them: the
   network's passes are the only slow part.
2. The decoder trains on the training states (L1 on the points that are not fixed, in
   landmark-extent units) for ``--epochs`` (seconds to minutes), then reports on validation
   the MRE per click count with the field alone and with the decoder. ``OUT`` is a copy of
   the model folder with the decoder declared in its ``model.json``; ``OUT/decoder_log.csv``
   has the per-epoch losses and the validation curves.
   ``--mirror`` adds every state turned over left-right (the model's ``flip_pairs``): twice the
   states for the same network passes.
   ``--fold-models DIR ...`` (cross-fitting, #25): the training states come from networks
   trained with ``train --hold-out-fold I/K``, each image's from the fold that left it out, run
   with ``--model``'s field (and, under ``--on-policy``, its decoder): a network errs on the
   images it trained on less, and otherwise, than on new ones, and the decoder must learn the
   errors of new images. Validation's states stay ``--model``'s own. ``--with-own-states``
   adds ``--model``'s own training states beside them (the own ones teach the first click).
3. With ``--review-members N`` the decoder also gets a check-next head (N members): trained
   on the states with 0..C clicks to give each point's error after the decoder (log of the
   error in 1 % of the landmarks' extent); reported as the error of the head's first pick vs
   the worst point's. ``--review-only`` keeps the folder's decoder and trains only the head.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .click_decoder import (
    ClickDecoderConfig,
    ClickDecoderNet,
    add_click_decoder,
    decoder_features,
    log_error_target,
)
from .clicks import SimulatedUser
from .config import ModelFormatError
from .conventions import write_text_atomic
from .correction_field import apply_correction_field
from .data import DatasetSplit, add_dataset_arguments
from .data.common import load_grey_image
from .errors import UsageError
from .imaging import Radiograph
from .inference import Predictor
from .model_io import KeypointModel, copy_model_folder, load_model
from .session import KeypointSession
from .train import HELD_OUT
from .train_local import model_and_splits

LOG_FILE = "decoder_log.csv"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument("--model", type=Path, required=True, help="the model folder whose clicks this decodes")
    add_dataset_arguments(data, phantom_images=64)
    data.add_argument("--clicks", type=int, default=4, help="simulated clicks per image (and the decoder's max_clicks)")
    data.add_argument(
        "--on-policy",
        action="store_true",
        help="the user clicks what the model folder's own decoder shows (its click order; the new decoder replaces it)",
    )
    data.add_argument(
        "--fold-models",
        type=Path,
        nargs="+",
        default=None,
        metavar="DIR",
        help="cross-fitting: model folders trained with train --hold-out-fold; each training image's states "
        "come from the one that did not train on it (with --model's field, and its decoder under --on-policy); "
        "validation's from --model",
    )
    data.add_argument(
        "--with-own-states",
        action="store_true",
        help="with --fold-models: train on --model's own states of the training images as well (twice the states)",
    )
    decoder = parser.add_argument_group("the decoder (click_decoder.ClickDecoderConfig)")
    decoder.add_argument("--group", type=int, default=1, help="landmarks per token (AASCE: 4, a vertebra)")
    decoder.add_argument("--width", type=int, default=64)
    decoder.add_argument("--layers", type=int, default=3)
    decoder.add_argument("--heads", type=int, default=4)
    decoder.add_argument(
        "--members", type=int, default=1, help="decoders trained apart (seeds), their offsets averaged"
    )
    decoder.add_argument(
        "--review-members",
        type=int,
        default=0,
        help="members of a check-next head (expected error per point, the 'decoder' review score); 0: none",
    )
    decoder.add_argument(
        "--review-only",
        action="store_true",
        help="keep the model folder's decoder and train only its check-next head (--review-members)",
    )
    decoder.add_argument(
        "--mirror",
        action="store_true",
        help="also train on every state mirrored left-right (the model's flip_pairs swapped): twice the states",
    )
    run = parser.add_argument_group("optimisation")
    run.add_argument("--epochs", type=int, default=40)
    run.add_argument("--batch-size", type=int, default=64)
    run.add_argument("--lr", type=float, default=1e-3)
    run.add_argument("--weight-decay", type=float, default=1e-3)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, required=True, help="the model folder to write (a copy with the decoder)")
    parser.add_argument(
        "--cache", type=Path, default=None, help="where the simulated states are kept (default OUT/cache)"
    )
    parser.add_argument("--quiet", action="store_true")


# ------------------------------------------------------------------ the network's states under clicks


@dataclass
class ClickStates:
    """The network's own points on each image after 0..C simulated clicks, and the truth."""

    raw: np.ndarray  # (N, C + 1, K, 2): after 0, 1, .., C clicks
    order: np.ndarray  # (N, C): the landmark clicked at each click
    truth: np.ndarray  # (N, K, 2)

    def __add__(self, other: ClickStates) -> ClickStates:
        """Both sets of states, one after the other."""
        return ClickStates(
            *(np.concatenate(pair) for pair in zip(dataclasses.astuple(self), dataclasses.astuple(other)))
        )


def simulate_clicks(
    model: KeypointModel, predictor: Predictor, radiograph: Radiograph, truth, clicks: int, on_policy: bool = False
):
    """(C + 1, K, 2) network points and (C,) clicked landmarks: the oracle user on the session's
    points with the field, without the local stage, and with the folder's decoder if ``on_policy``."""
    session = KeypointSession(model, radiograph, predictor=predictor, local_stage=False, click_decoder=on_policy)
    user, shown = SimulatedUser(), session.predict()

    def network_points() -> np.ndarray:
        points = session.network_points
        assert points is not None  # after predict
        return points

    raw, order = [network_points()], []
    for _ in range(clicks):
        index = int(user.click(shown.points[None], truth[None], shown.fixed[None].copy())[0])
        shown = session.refine({index: truth[index]})
        raw.append(network_points())
        order.append(index)
    return np.stack(raw), np.array(order, dtype=np.int64)


def load_states(
    split: DatasetSplit,
    model: KeypointModel,
    predictor: Predictor,
    clicks: int,
    cache: Path,
    quiet: bool,
    on_policy: bool = False,
    name: str | None = None,
) -> ClickStates:
    """Every image's states, cached by id (a cache of another model, other weights, click count or
    policy is not reused); ``name``: the cache file's (default: the split's)."""
    cache_file = cache / f"click_states_{name or split.split}.json"
    key = {"model": str(model.folder), "states_of": states_fingerprint(model, on_policy), "clicks": clicks}
    key |= {"on_policy": True} if on_policy else {}
    stored = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    cached = stored.get("states", {}) if stored.get("key") == key else {}
    raw, order, known = [], [], len(cached)
    for sample in tqdm(split.samples, desc=f"{split.split}: simulated clicks", disable=quiet):
        if sample.id not in cached:
            radiograph = Radiograph(load_grey_image(sample), sample.spacing, sample.spacing_known)
            points, clicked = simulate_clicks(model, predictor, radiograph, sample.points, clicks, on_policy)
            cached[sample.id] = {"raw": points.tolist(), "order": clicked.tolist()}
        raw.append(np.asarray(cached[sample.id]["raw"], np.float64))
        order.append(np.asarray(cached[sample.id]["order"], np.int64))
    if len(cached) > known:  # a re-run on the same states reads them and writes nothing
        cache.mkdir(parents=True, exist_ok=True)
        write_text_atomic(cache_file, json.dumps({"key": key, "states": cached}))
    return ClickStates(np.stack(raw), np.stack(order), split.points_array())


def states_fingerprint(model: KeypointModel, on_policy: bool) -> str:
    """What the simulated states depend on besides the images: the network's weights, the
    correction field, the propagation limit and, under ``on_policy``, the decoder whose points
    the user clicks (a folder retrained in place, or given another decoder, gets new states).
    sha256, 16 digits."""
    config = model.config
    digest = hashlib.sha256(
        json.dumps([config.correction_length, config.correction_noise, config.propagation_limit]).encode()
    )
    modules = [model.network] + ([model.click_decoder] if on_policy and model.click_decoder is not None else [])
    for module in modules:
        for name, tensor in module.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def held_out_images(folder: Path) -> set[str]:
    """The training images a model folder's run left out (train --hold-out-fold; its split.json)."""
    split_file = folder / "split.json"
    if not split_file.is_file():
        raise UsageError(f"--fold-models: {folder} has no split.json (a model folder that train wrote)")
    skipped = json.loads(split_file.read_text()).get("skipped", {}).get("train", [])
    held = {sample_id for sample_id, reason in skipped if reason.startswith(HELD_OUT)}
    if not held:
        raise UsageError(f"--fold-models: {folder} held no training images out (train it with --hold-out-fold I/K)")
    return held


def cross_fitted_states(
    split: DatasetSplit, model: KeypointModel, folders: list[Path], clicks: int, cache: Path, args
) -> ClickStates:
    """The training states, each image's from the fold model that did not train on it: what the
    network does on images it has not fitted, in the target model's field (and decoder)."""
    held = [held_out_images(folder) for folder in folders]
    fold_of = {}
    for sample in split.samples:
        folds = [i for i, ids in enumerate(held) if sample.id in ids]
        if len(folds) != 1:
            raise UsageError(
                f"--fold-models: training image {sample.id} is held out by {len(folds)} of the folders, not 1; "
                "give the folds of one --hold-out-fold I/K series, trained on this split"
            )
        fold_of[sample.id] = folds[0]
    by_id: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for i, folder in enumerate(folders):
        fold_model = load_model(folder)
        if fold_model.config.num_keypoints != model.config.num_keypoints:
            raise UsageError(
                f"--fold-models: {folder} has {fold_model.config.num_keypoints} landmarks, not {model.config.num_keypoints}"
            )
        # the session the user sees: the target model's field, and its decoder for the click order
        fold_model.config = dataclasses.replace(
            fold_model.config,
            correction_length=model.config.correction_length,
            correction_noise=model.config.correction_noise,
            click_decoder=model.config.click_decoder if args.on_policy else {},
        )
        fold_model.click_decoder = model.click_decoder if args.on_policy else None
        fold_split = dataclasses.replace(split, samples=[s for s in split.samples if fold_of[s.id] == i])
        predictor = Predictor(fold_model, "cpu")
        states = load_states(
            fold_split, fold_model, predictor, clicks, cache, args.quiet, args.on_policy, f"{split.split}_fold{i + 1}"
        )
        by_id.update(zip(fold_split.ids, zip(states.raw, states.order)))
    raw, order = zip(*(by_id[sample.id] for sample in split.samples))  # the split's own order
    return ClickStates(np.stack(raw), np.stack(order), split.points_array())


# ------------------------------------------------------------------ decoder inputs and training


@dataclass
class DecoderBatch:
    """One row per (image, click count): the decoder's input and what it should give."""

    features: torch.Tensor  # (M, K, FEATURES)
    raw: np.ndarray  # (M, K, 2) the network's points at this click count
    raw0: np.ndarray  # (M, K, 2) and before any click
    shown: np.ndarray  # (M, K, 2) the field's points, fixed ones where the user put them
    truth: np.ndarray  # (M, K, 2)
    fixed: np.ndarray  # (M, K) bool
    extent: np.ndarray  # (M,)
    clicks: np.ndarray  # (M,)

    def targets(self) -> torch.Tensor:
        """(M, K, 2) truth minus shown, in extent units."""
        return torch.tensor((self.truth - self.shown) / self.extent[:, None, None], dtype=torch.float32)


def decoder_batch(
    states: ClickStates, correction_length: float, correction_noise: float, first_count: int = 1
) -> DecoderBatch:
    """The states as the session hands them to the decoder (the same field, the same features),
    click counts ``first_count``..C (the offsets learn from 1, the check-next head from 0)."""
    rows: dict[str, list] = {"raw": [], "raw0": [], "shown": [], "truth": [], "fixed": [], "clicks": []}
    for raw, order, truth in zip(states.raw, states.order, states.truth):
        for count in range(first_count, len(order) + 1):
            fixed = {int(k): truth[k] for k in order[:count]}
            shown = apply_correction_field(raw[count], fixed, correction_length, correction_noise)
            mask = np.zeros(len(truth), dtype=bool)
            mask[order[:count]] = True
            shown[mask] = truth[mask]
            for name, value in zip(rows, (raw[count], raw[0], shown, truth, mask, count)):
                rows[name].append(value)
    arrays = {name: np.stack(values) if name != "clicks" else np.array(values) for name, values in rows.items()}
    features, extent = decoder_features(
        arrays["raw"], arrays["raw0"], arrays["shown"], arrays["fixed"], arrays["clicks"]
    )
    return DecoderBatch(
        torch.from_numpy(features),
        arrays["raw"],
        arrays["raw0"],
        arrays["shown"],
        arrays["truth"],
        arrays["fixed"],
        extent,
        arrays["clicks"],
    )


def mirrored(batch: DecoderBatch, flip_pairs) -> DecoderBatch:
    """``batch`` and its left-right mirror image, stacked: x negated about the image's centre
    line, each landmark swapped with its ``flip_pairs`` partner. The decoder's input is
    centred and scaled per image, so mirroring is exact in its features as in its targets."""
    swap = np.arange(batch.fixed.shape[1])
    for a, b in flip_pairs:
        swap[a], swap[b] = b, a

    def flipped_points(points: np.ndarray) -> np.ndarray:
        points = points[:, swap].copy()
        points[..., 0] = -points[..., 0]  # about x = 0; the features are centred, so any line will do
        return points

    pointed = ("raw", "raw0", "shown", "truth")
    mirror = {name: flipped_points(getattr(batch, name)) for name in pointed}
    fixed = batch.fixed[:, swap]
    features, extent = decoder_features(mirror["raw"], mirror["raw0"], mirror["shown"], fixed, batch.clicks)
    stacked = {name: np.concatenate([getattr(batch, name), mirror[name]]) for name in pointed}
    return DecoderBatch(
        torch.cat([batch.features, torch.from_numpy(features)]),
        stacked["raw"],
        stacked["raw0"],
        stacked["shown"],
        stacked["truth"],
        np.concatenate([batch.fixed, fixed]),
        np.concatenate([batch.extent, extent]),
        np.concatenate([batch.clicks, batch.clicks]),
    )


def fit(
    network: nn.Module, features, targets, free, epochs: int, batch_size: int, lr: float, weight_decay: float, seed: int
):  # fmt: skip
    """AdamW with a cosine schedule; L1 (summed over the last axis) on the ``free`` (M, K)
    points. ``network`` maps ``features`` (M, K, FEATURES) to what ``targets`` holds, (M, K, D).
    Yields (epoch, mean loss)."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.from_numpy(free).float()
    optimizer = torch.optim.AdamW(network.parameters(), lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(epochs, 1))
    network.train()
    for epoch in range(epochs):
        order, total = torch.randperm(len(targets), generator=generator), 0.0
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            error = (network(features[rows]) - targets[rows]).abs().sum(-1) * weight[rows]
            loss = error.sum() / weight[rows].sum().clamp(min=1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(rows)
        schedule.step()
        yield epoch + 1, total / len(targets)
    network.eval()


def train_members(members: nn.ModuleList, features, targets, free, args) -> list[tuple[int, float]]:
    """Each member trained on its own (seed ``args.seed + i``); (epoch, mean loss over members)."""
    options = (args.epochs, args.batch_size, args.lr, args.weight_decay)
    per_member = [
        list(fit(member, features, targets, free, *options, args.seed + i)) for i, member in enumerate(members)
    ]
    return [(epoch, float(np.mean([losses[epoch - 1][1] for losses in per_member]))) for epoch, _ in per_member[0]]


@torch.inference_mode()
def decoded_points(network: ClickDecoderNet, batch: DecoderBatch) -> np.ndarray:
    """(M, K, 2) what the session shows with this decoder: the field's points moved by its
    offsets where it applies (1..max_clicks), fixed points where the user put them."""
    was_training = network.training
    network.eval()
    offsets = network(batch.features).double().numpy() * batch.extent[:, None, None]
    network.train(was_training)
    applies = (batch.clicks >= 1) & (batch.clicks <= network.config.max_clicks)
    moved = applies[:, None] & ~batch.fixed
    return np.where(moved[..., None], batch.shown + offsets, batch.shown)


def curves(network: ClickDecoderNet, batch: DecoderBatch) -> dict[int, tuple[float, float]]:
    """{click count: (MRE with the field alone, MRE with the decoder)} in px, fixed points at 0."""
    decoded = decoded_points(network, batch)
    result = {}
    for count in np.unique(batch.clicks):
        rows = batch.clicks == count
        field_mre = np.linalg.norm(batch.shown[rows] - batch.truth[rows], axis=-1).mean()
        decoder_mre = np.linalg.norm(decoded[rows] - batch.truth[rows], axis=-1).mean()
        result[int(count)] = (float(field_mre), float(decoder_mre))
    return result


# ------------------------------------------------------------------ the check-next head


def review_batch(network: ClickDecoderNet, batch: DecoderBatch) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """The head's input (features of the decoded points), the decoded points' errors (px) and
    the landmark extents, for every row of ``batch`` (0..C clicks)."""
    decoded = decoded_points(network, batch)
    raw, raw0 = batch.raw, batch.raw0
    features, extent = decoder_features(raw, raw0, decoded, batch.fixed, batch.clicks)
    error = np.linalg.norm(decoded - batch.truth, axis=-1)
    return torch.from_numpy(features), error, extent


def first_picks(network: ClickDecoderNet, batch: DecoderBatch) -> dict[int, tuple[float, float]]:
    """{click count: (error px of the head's first-ranked free point, of the worst free point)},
    means over the images: how close the head's pick comes to the oracle's."""
    features, error, _ = review_batch(network, batch)
    with torch.inference_mode():
        score = network.log_error(features).numpy()
    score = np.where(batch.fixed, -np.inf, score)
    picked = error[np.arange(len(error)), score.argmax(1)]
    worst = np.where(batch.fixed, -np.inf, error).max(1)
    return {
        int(c): (float(picked[batch.clicks == c].mean()), float(worst[batch.clicks == c].mean()))
        for c in np.unique(batch.clicks)
    }


def train_review_head(network: ClickDecoderNet, batch: DecoderBatch, args) -> list[tuple[int, float]]:
    """Fit the head's members on the decoded points' log errors (0..C clicks)."""
    features, error, extent = review_batch(network, batch)
    targets = log_error_target(error, extent)[..., None]
    return train_members(network.review, features, targets, ~batch.fixed, args)


# ------------------------------------------------------------------ the command


def decoder_config(args, model: KeypointModel) -> ClickDecoderConfig:
    """The new decoder's config: from the options, or with ``--review-only`` the folder's
    decoder's with ``--review-members``."""
    if args.clicks < 1 or args.epochs < 0:
        raise UsageError(f"--clicks must be >= 1 and --epochs >= 0, got {args.clicks} and {args.epochs}")
    if args.review_only:
        kept = model.click_decoder_config
        if kept is None or args.review_members < 1:
            raise UsageError("--review-only needs a model folder with a click decoder and --review-members >= 1")
        if kept.max_clicks != args.clicks:
            raise UsageError(
                f"--review-only: the folder's decoder is for {kept.max_clicks} clicks, --clicks is {args.clicks}"
            )
        return dataclasses.replace(kept, review_members=args.review_members, trained=dict(kept.trained))
    try:
        return ClickDecoderConfig(
            model.config.num_keypoints, args.group, args.width, args.layers, args.heads, args.clicks,
            args.members, review_members=args.review_members,
        )  # fmt: skip
    except ModelFormatError as e:
        raise UsageError(str(e)) from None


def write_log(out: Path, losses: dict[str, list], val: dict[int, tuple[float, float]], picks: dict) -> None:
    """The per-epoch losses of what was trained (offsets, check-next head), the validation curves."""
    trained = {name: dict(values) for name, values in losses.items() if values}
    epochs = sorted(set().union(*trained.values())) if trained else []
    with (out / LOG_FILE).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", *trained])
        writer.writerows([(epoch, *(f"{by_epoch[epoch]:.6f}" for by_epoch in trained.values())) for epoch in epochs])
        writer.writerow([])
        writer.writerow(["clicks", "val_mre_field_px", "val_mre_decoder_px"])
        writer.writerows([(c, f"{a:.2f}", f"{b:.2f}") for c, (a, b) in val.items()])
        if picks:
            writer.writerow([])
            writer.writerow(["clicks", "val_head_pick_error_px", "val_worst_error_px"])
            writer.writerows([(c, f"{a:.2f}", f"{b:.2f}") for c, (a, b) in picks.items()])


def new_decoder(model: KeypointModel, config: ClickDecoderConfig, train: DecoderBatch, args):
    """The decoder network with its offsets trained (or, ``--review-only``, the folder's) and the losses."""
    network = ClickDecoderNet(config)
    if not args.review_only:
        return network, train_members(network.members, train.features, train.targets(), ~train.fixed, args)
    assert model.click_decoder is not None
    network.members.load_state_dict(model.click_decoder.members.state_dict())
    return network, []


def train_decoder(args) -> Path:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model, train_split, val_split = model_and_splits(args)
    config = decoder_config(args, model)
    if args.on_policy and model.click_decoder is None:
        raise UsageError(f"--on-policy needs a model folder with a click decoder; {args.model} has none")
    if args.mirror and not model.config.flip_pairs:
        raise UsageError(f"--mirror needs the model's flip_pairs (left/right landmarks); {args.model} has none")
    predictor, cache = Predictor(model, "cpu"), args.cache or Path(args.out) / "cache"
    field = (model.config.correction_length, model.config.correction_noise)
    if args.with_own_states and not args.fold_models:
        raise UsageError("--with-own-states adds the model's own states to cross-fitted ones: give --fold-models")
    own_states = functools.partial(
        load_states, train_split, model, predictor, args.clicks, cache, args.quiet, args.on_policy
    )
    if args.fold_models:
        train_states = cross_fitted_states(train_split, model, args.fold_models, args.clicks, cache, args)
    else:
        train_states = own_states()
    if args.with_own_states:
        train_states = train_states + own_states()
    val_states = load_states(val_split, model, predictor, args.clicks, cache, args.quiet, args.on_policy)
    states = [train_states, val_states]
    train, val = (decoder_batch(split_states, *field) for split_states in states)
    if args.mirror:
        train = mirrored(train, model.config.flip_pairs)
    started = time.process_time()
    network, losses = new_decoder(model, config, train, args)
    val_curves = curves(network, val)
    if not args.review_only:
        network.config.trained = {
            "epochs": args.epochs, "train_states": len(train.clicks), "mirrored": args.mirror,
            "fold_models": [str(f) for f in args.fold_models or []], "with_own_states": args.with_own_states,
            "cpu_s": round(time.process_time() - started, 1),
            "val_mre_px_field_vs_decoder": {str(c): [round(a, 2), round(b, 2)] for c, (a, b) in val_curves.items()},
        }  # fmt: skip
    review_losses, picks = [], {}
    if config.review_members:
        started = time.process_time()
        train_all, val_all = (decoder_batch(split_states, *field, first_count=0) for split_states in states)
        if args.mirror:
            train_all = mirrored(train_all, model.config.flip_pairs)
        review_losses = train_review_head(network, train_all, args)
        picks = first_picks(network, val_all)
        network.config.trained["review"] = {
            "epochs": args.epochs, "cpu_s": round(time.process_time() - started, 1),
            "val_head_pick_vs_worst_error_px": {str(c): [round(a, 2), round(b, 2)] for c, (a, b) in picks.items()},
        }  # fmt: skip
    out = Path(args.out)
    copy_model_folder(Path(args.model), out)
    add_click_decoder(out, network)
    write_log(out, {"train_loss": losses, "review_loss": review_losses}, val_curves, picks)
    if not args.quiet:
        for count, (field_mre, decoder_mre) in val_curves.items():
            print(f"val after {count} click(s): field {field_mre:.2f} px, decoder {decoder_mre:.2f} px")
        for count, (picked, worst) in picks.items():
            print(
                f"val check-next after {count} click(s): the head's pick is {picked:.1f} px off, the worst {worst:.1f} px"
            )
    return out


def run(args) -> int:
    print(f"model folder: {train_decoder(args)}")
    return 0
