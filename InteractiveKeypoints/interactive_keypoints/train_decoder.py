"""Train a model folder's click decoder (:mod:`.click_decoder`) in CPU-minutes.

    interactive-keypoints train-decoder --model models/aasce-spine-68 --dataset aasce \\
        --data-root ../shared/data/boostnet_labeldata --drop-disordered-labels --group 4 \\
        --out runs/aasce-decoder

1. States, cached: on every training and validation image the model folder's network runs
   under the simulated user (:class:`.clicks.SimulatedUser`: the worst point not yet clicked,
   judged on what the session shows, i.e. with the model's correction field) for ``--clicks``
   clicks; the network's own points after each click go to ``OUT/cache/`` (derived from the
   data: never commit it). A re-run with the same model, clicks and images reuses them: the
   network's passes are the only slow part.
2. The decoder trains on the training states (L1 on the points that are not fixed, in
   landmark-extent units) for ``--epochs`` (seconds to minutes), then reports on validation
   the MRE per click count with the field alone and with the decoder. ``OUT`` is a copy of
   the model folder with the decoder declared in its ``model.json``; ``OUT/decoder_log.csv``
   has the per-epoch losses and the validation curves.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .click_decoder import ClickDecoderConfig, ClickDecoderNet, add_click_decoder, decoder_features
from .clicks import SimulatedUser
from .config import ModelFormatError
from .conventions import write_text_atomic
from .correction_field import apply_correction_field
from .data import DatasetSplit, add_dataset_arguments
from .data.common import load_grey_image
from .errors import UsageError
from .imaging import Radiograph
from .inference import Predictor
from .model_io import KeypointModel, copy_model_folder
from .session import KeypointSession
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
    decoder = parser.add_argument_group("the decoder (click_decoder.ClickDecoderConfig)")
    decoder.add_argument("--group", type=int, default=1, help="landmarks per token (AASCE: 4, a vertebra)")
    decoder.add_argument("--width", type=int, default=64)
    decoder.add_argument("--layers", type=int, default=3)
    decoder.add_argument("--heads", type=int, default=4)
    decoder.add_argument(
        "--members", type=int, default=1, help="decoders trained apart (seeds), their offsets averaged"
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
) -> ClickStates:
    """Every image's states, cached by id (a cache of another model, click count or policy is not reused)."""
    cache_file = cache / f"click_states_{split.split}.json"
    key = {"model": str(model.folder), "clicks": clicks} | ({"on_policy": True} if on_policy else {})
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


# ------------------------------------------------------------------ decoder inputs and training


@dataclass
class DecoderBatch:
    """One row per (image, click count 1..C): the decoder's input and what it should give."""

    features: torch.Tensor  # (M, K, FEATURES)
    shown: np.ndarray  # (M, K, 2) the field's points, fixed ones where the user put them
    truth: np.ndarray  # (M, K, 2)
    fixed: np.ndarray  # (M, K) bool
    extent: np.ndarray  # (M,)
    clicks: np.ndarray  # (M,)

    def targets(self) -> torch.Tensor:
        """(M, K, 2) truth minus shown, in extent units."""
        return torch.tensor((self.truth - self.shown) / self.extent[:, None, None], dtype=torch.float32)


def decoder_batch(states: ClickStates, correction_length: float, correction_noise: float) -> DecoderBatch:
    """The states as the session hands them to the decoder (the same field, the same features)."""
    rows: dict[str, list] = {"raw": [], "raw0": [], "shown": [], "truth": [], "fixed": [], "clicks": []}
    for raw, order, truth in zip(states.raw, states.order, states.truth):
        for count in range(1, len(order) + 1):
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
        torch.from_numpy(features), arrays["shown"], arrays["truth"], arrays["fixed"], extent, arrays["clicks"]
    )


def fit(network: nn.Module, batch: DecoderBatch, epochs: int, batch_size: int, lr: float, weight_decay: float, seed: int):  # fmt: skip
    """AdamW with a cosine schedule; L1 on the free points. Yields (epoch, mean loss)."""
    generator = torch.Generator().manual_seed(seed)
    targets, free = batch.targets(), torch.from_numpy(~batch.fixed).float()
    optimizer = torch.optim.AdamW(network.parameters(), lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(epochs, 1))
    network.train()
    for epoch in range(epochs):
        order, total = torch.randperm(len(targets), generator=generator), 0.0
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            error = (network(batch.features[rows]) - targets[rows]).abs().sum(-1) * free[rows]
            loss = error.sum() / free[rows].sum().clamp(min=1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(rows)
        schedule.step()
        yield epoch + 1, total / len(targets)
    network.eval()


def train_members(network: ClickDecoderNet, batch: DecoderBatch, args) -> list[tuple[int, float]]:
    """Each member trained on its own (seed ``args.seed + i``); (epoch, mean loss over members)."""
    per_member = [
        list(fit(member, batch, args.epochs, args.batch_size, args.lr, args.weight_decay, args.seed + i))
        for i, member in enumerate(network.members)
    ]
    return [(epoch, float(np.mean([losses[epoch - 1][1] for losses in per_member]))) for epoch, _ in per_member[0]]


@torch.inference_mode()
def curves(network: ClickDecoderNet, batch: DecoderBatch) -> dict[int, tuple[float, float]]:
    """{click count: (MRE with the field alone, MRE with the decoder)} in px, fixed points at 0."""
    was_training = network.training
    network.eval()
    offsets = network(batch.features).double().numpy() * batch.extent[:, None, None]
    network.train(was_training)
    decoded = np.where(batch.fixed[..., None], batch.shown, batch.shown + offsets)
    result = {}
    for count in np.unique(batch.clicks):
        rows = batch.clicks == count
        field_mre = np.linalg.norm(batch.shown[rows] - batch.truth[rows], axis=-1).mean()
        decoder_mre = np.linalg.norm(decoded[rows] - batch.truth[rows], axis=-1).mean()
        result[int(count)] = (float(field_mre), float(decoder_mre))
    return result


# ------------------------------------------------------------------ the command


def decoder_config(args, num_keypoints: int) -> ClickDecoderConfig:
    if args.clicks < 1 or args.epochs < 0:
        raise UsageError(f"--clicks must be >= 1 and --epochs >= 0, got {args.clicks} and {args.epochs}")
    try:
        return ClickDecoderConfig(
            num_keypoints, args.group, args.width, args.layers, args.heads, args.clicks, args.members
        )
    except ModelFormatError as e:
        raise UsageError(str(e)) from None


def write_log(out: Path, losses: list[tuple[int, float]], val: dict[int, tuple[float, float]]) -> None:
    with (out / LOG_FILE).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "train_loss"])
        writer.writerows([(epoch, f"{loss:.6f}") for epoch, loss in losses])
        writer.writerow([])
        writer.writerow(["clicks", "val_mre_field_px", "val_mre_decoder_px"])
        writer.writerows([(c, f"{a:.2f}", f"{b:.2f}") for c, (a, b) in val.items()])


def train_decoder(args) -> Path:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model, train_split, val_split = model_and_splits(args)
    config = decoder_config(args, model.config.num_keypoints)
    if args.on_policy and model.click_decoder is None:
        raise UsageError(f"--on-policy needs a model folder with a click decoder; {args.model} has none")
    predictor, cache = Predictor(model, "cpu"), args.cache or Path(args.out) / "cache"
    field = (model.config.correction_length, model.config.correction_noise)
    states = [
        load_states(split, model, predictor, args.clicks, cache, args.quiet, args.on_policy)
        for split in (train_split, val_split)
    ]
    train, val = (decoder_batch(split_states, *field) for split_states in states)
    network, started = ClickDecoderNet(config), time.process_time()
    losses = train_members(network, train, args)
    val_curves = curves(network, val)
    network.config.trained = {
        "epochs": args.epochs, "train_states": len(train.clicks), "cpu_s": round(time.process_time() - started, 1),
        "val_mre_px_field_vs_decoder": {str(c): [round(a, 2), round(b, 2)] for c, (a, b) in val_curves.items()},
    }  # fmt: skip
    out = Path(args.out)
    copy_model_folder(Path(args.model), out)
    add_click_decoder(out, network)
    write_log(out, losses, val_curves)
    if not args.quiet:
        for count, (field_mre, decoder_mre) in val_curves.items():
            print(f"val after {count} click(s): field {field_mre:.2f} px, decoder {decoder_mre:.2f} px")
    return out


def run(args) -> int:
    print(f"model folder: {train_decoder(args)}")
    return 0
