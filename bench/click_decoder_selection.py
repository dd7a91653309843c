"""How train-decoder's settings are chosen without the validation images: train on four fifths
of the training images' cached states, report the gain over the correction field on the fifth
held out (px, per click count and the mean), for a few settings.

    python bench/click_decoder_selection.py --cache runs/aasce-decoder10-wd/cache \\
        --data-root ../shared/data/boostnet_labeldata --drop-disordered-labels --group 4

``--cache``: a train-decoder cache folder (``click_states_train.json``) of the same model; the
states must cover the dataset's training split (the same ``--drop-disordered-labels``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from interactive_keypoints.click_decoder import ClickDecoderConfig, ClickDecoderNet
from interactive_keypoints.config import ModelConfig
from interactive_keypoints.data import get_dataset
from interactive_keypoints.train_decoder import ClickStates, curves, decoder_batch, fit, mirrored

# (name, epochs, weight decay, mirrored states too): the default, more decay, fewer epochs, mirrored
SETTINGS = [
    ("wd 1e-3, 40 epochs", 40, 1e-3, False),
    ("wd 0.05, 40 epochs", 40, 0.05, False),
    ("wd 1e-3, 20 epochs", 20, 1e-3, False),
    ("wd 0.05, 40 epochs, --mirror", 40, 0.05, True),
]


def cached_states(cache: Path, samples) -> ClickStates:
    stored = json.loads((cache / "click_states_train.json").read_text())["states"]
    raw = np.stack([np.asarray(stored[s.id]["raw"]) for s in samples])
    order = np.stack([np.asarray(stored[s.id]["order"]) for s in samples])
    return ClickStates(raw, order, np.stack([s.points for s in samples]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--model", type=Path, default=Path("models/aasce-spine-68"), help="for the field's settings")
    parser.add_argument("--dataset", default="aasce")
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--drop-disordered-labels", action="store_true")
    parser.add_argument("--group", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    options = {"seed": 0} | ({"drop_disordered": True} if args.drop_disordered_labels else {})
    samples = get_dataset(args.dataset, args.data_root, "train", **options).samples
    states = cached_states(args.cache, samples)
    held = np.random.default_rng(args.seed).permutation(len(samples))[: len(samples) // 5]
    kept = np.setdiff1d(np.arange(len(samples)), held)
    config = ModelConfig.load(args.model / "model.json")
    field = (config.correction_length, config.correction_noise)

    def part(rows):
        return decoder_batch(ClickStates(states.raw[rows], states.order[rows], states.truth[rows]), *field)

    train, held_out = part(kept), part(held)
    clicks = states.order.shape[1]
    for name, epochs, weight_decay, mirror in SETTINGS:
        torch.manual_seed(args.seed)
        network = ClickDecoderNet(ClickDecoderConfig(config.num_keypoints, group=args.group, max_clicks=clicks))
        states_seen = mirrored(train, config.flip_pairs) if mirror else train
        training = fit(network, states_seen.features, states_seen.targets(), ~states_seen.fixed, epochs, 64, 1e-3,
                       weight_decay, args.seed)  # fmt: skip
        for _ in training:
            pass
        gains = [field_mre - decoder_mre for field_mre, decoder_mre in curves(network, held_out).values()]
        print(f"{name}: gain over the field on held-out training images, 1..{clicks} clicks (px):",
              " ".join(f"{g:.2f}" for g in gains), f"| mean {np.mean(gains):.2f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
