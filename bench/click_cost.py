"""Issue #25's "per click no slower": a click now against a click before the click decoder.

    python bench/click_cost.py --model models/aasce-spine-68 --image IMG [--threads 2] [--sessions 4]

Prints ONE JSON object. Two sessions on the same image, the same inference copy of the network
and the same clicks (each a landmark put 20 px from the first prediction, seeded), timed
alternately, click by click, so that the machine's drift falls on both alike:

- ``before``: the model as it ran before the click decoder: decoder off, and the interaction
  gate as it was until 2026-12-07 (``dense_gate_forward`` below: the clicked maps resized and
  scattered into K zero maps made in NCHW order, concatenated with the channels_last features,
  so the gate's first conv ran outside channels_last, over every zero map);
- ``now``: the model folder as shipped (decoder on where it has one, the sparse gate).

``refine`` is timed whole (network, correction field, decoder, local stage, review score).
``difference_ms`` is before - now per click: its mean and standard error over the clicks.
A benchmark, not a test: figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from interactive_keypoints.imaging import load_radiograph
from interactive_keypoints.inference import Predictor, cpu_description
from interactive_keypoints.model_io import load_model
from interactive_keypoints.session import KeypointSession


def dense_gate_forward(self, features, clicks, channels=None):
    """``InteractionGate.forward`` as it was until 2026-12-07 (the reference of ``before``)."""
    size = features.shape[-2:]
    if channels is None:
        clicks = F.interpolate(clicks, size=size, mode="bilinear", align_corners=False)
    else:
        k = self.convs[0].in_channels - features.shape[1]
        dense = features.new_zeros(features.shape[0], k, *size)
        if len(channels):
            dense[:, channels] = F.interpolate(clicks, size=size, mode="bilinear", align_corners=False)
        clicks = dense
    return self.excite(self.pool(self.convs(torch.cat([features, clicks], dim=1))))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="trained model folder")
    parser.add_argument("--image", type=Path, required=True, help="a radiograph of the model's kind")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all CPUs)")
    parser.add_argument("--sessions", type=int, default=4, help="sessions per path, each with its own clicks")
    parser.add_argument("--clicks", type=int, default=10, help="clicks per session (the decoder's 10 by default)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed clicks of the first session")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    radiograph = load_radiograph(args.image)
    now_predictor, before_predictor = Predictor(model), Predictor(model)  # each its own inference copy
    gate = before_predictor.network.gate
    if gate is not None:
        gate.forward = types.MethodType(dense_gate_forward, gate)
    rng = np.random.default_rng(args.seed)
    timed: dict[str, list[float]] = {"before": [], "now": []}
    for session_index in range(args.sessions):
        sessions = {
            "before": KeypointSession(model, radiograph, predictor=before_predictor, click_decoder=False),
            "now": KeypointSession(model, radiograph, predictor=now_predictor),
        }
        start = sessions["before"].predict().points
        sessions["now"].predict()
        for step, k in enumerate(rng.permutation(len(start))[: args.clicks]):
            angle = rng.uniform(0, 2 * np.pi)
            xy = start[k] + 20.0 * np.array([np.cos(angle), np.sin(angle)])
            order = ("before", "now") if step % 2 else ("now", "before")
            for name in order:
                begin = time.perf_counter()
                sessions[name].refine({int(k): xy})
                seconds = time.perf_counter() - begin
                if session_index or step >= args.warmup:
                    timed[name].append(seconds)
    before, now = (1000 * np.array(timed[name]) for name in ("before", "now"))
    difference = before - now
    report = {
        "before_ms": {"mean": round(float(before.mean()), 1), "median": round(float(np.median(before)), 1)},
        "now_ms": {"mean": round(float(now.mean()), 1), "median": round(float(np.median(now)), 1)},
        "difference_ms": {
            "mean": round(float(difference.mean()), 2),
            "standard_error": round(float(difference.std(ddof=1) / np.sqrt(len(difference))), 2),
        },
        "clicks_timed": len(difference),
        "click_decoder": model.click_decoder is not None,
        "threads": torch.get_num_threads(),
        "cpu": cpu_description(),
        "model": str(args.model),
        "torch": torch.__version__,
    }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
