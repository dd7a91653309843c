"""How a model's ``propagation_limit`` is chosen without the validation images: the network's
largest 0-click error of any point per image, as a fraction of its points' extent (the unit of
the limit), on a split's images. A correction beyond the limit moves no other point
(``session.py``), so the limit must lie above what right labels ever need.

    python bench/propagation_limit.py --model models/aasce-spine-68 --dataset aasce \\
        --data-root ../shared/data/boostnet_labeldata --split train

Prints ONE JSON object: quantiles of the per-image largest error / extent, the images above
``--gap`` (wrong labels or a failed detection: listed by id) and the largest of the others.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from interactive_keypoints.correction_field import landmark_extent
from interactive_keypoints.data import dataset_options, get_dataset
from interactive_keypoints.evaluate.simulate import sample_radiograph
from interactive_keypoints.inference import Predictor, cpu_description
from interactive_keypoints.model_io import load_model
from interactive_keypoints.session import KeypointSession


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model folder")
    parser.add_argument("--dataset", required=True, choices=["aasce", "isbi", "phantom"])
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--split", default="train")
    parser.add_argument("--gap", type=float, default=0.5, help="report the images above this fraction apart")
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args(argv)


def largest_relative_errors(model, samples) -> np.ndarray:
    """(N,) per image: max over points of |network's 0-click point - label| / extent of its points."""
    predictor = Predictor(model, "cpu")
    largest = []
    for sample in samples:
        session = KeypointSession(model, sample_radiograph(sample), predictor=predictor, local_stage=False)
        session.predict()
        first = session.network_points
        largest.append(np.linalg.norm(first - sample.points, axis=1).max() / landmark_extent(first))
    return np.array(largest)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    split = get_dataset(args.dataset, args.data_root, args.split, **dataset_options(args.dataset, 0, 16))
    largest = largest_relative_errors(model, split.samples)
    above = largest > args.gap
    report = {
        "model": args.model,
        "split": f"{args.dataset} {args.split}",
        "images": len(largest),
        "quantiles_50_90_99_100": np.quantile(largest, [0.5, 0.9, 0.99, 1.0]).round(3).tolist(),
        "largest_below_gap": round(float(largest[~above].max()), 3) if (~above).any() else None,
        "above_gap": {s.id: round(float(v), 3) for s, v, a in zip(split.samples, largest, above) if a},
        "model_limit": model.config.propagation_limit,
        "cpu": cpu_description(),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
