"""Per-click latency: a plain fp32 eager PyTorch loop vs. the optimized KeypointSession.

    python bench/latency.py                      # paper config (W32, K 68, 512 x 256), random weights
    python bench/latency.py --model models/X     # a trained model folder (its own architecture)
    python bench/latency.py --model models/isbi-ceph-19 --image CEPH.jpg   # any landmark set, a real image

Where the model folder has a local stage (local_stage.py), the JSON's ``local_stage`` compares
the optimized session's clicks with and without it (same clicks, same image).

Prints ONE JSON object. A benchmark, not a test: figures depend on the machine and its load.

Both paths see the same image, weights and click sequence: an initial prediction, then one
click per step, each click fixing one more landmark at its true phantom position (as a user
does; with ``--image``, at the first prediction's position moved by a seeded 20 px). Each timed click is the median over ``--clicks`` steps after ``--warmup`` steps.

The plain baseline is what a straightforward implementation does per click: dense K-channel
click/prev heatmaps, ``network(image, clicks, prev)`` (stem included), logits upsampled to
the full input, sigmoid, ``decode_heatmaps``. The optimized path is ``KeypointSession.refine``:
stem once per image, sparse hint channels, BN folded, bf16/fp16 + channels_last where the
device has them, and decoding on the low-resolution logits.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from interactive_keypoints import inference
from interactive_keypoints.click_decoder import decoder_features
from interactive_keypoints.config import paper_config
from interactive_keypoints.correction_field import apply_correction_field
from interactive_keypoints.heatmaps import decode_heatmaps, gaussian_heatmaps
from interactive_keypoints.imaging import CoordinateMap, Radiograph, load_radiograph, preprocess
from interactive_keypoints.inference import cpu_description
from interactive_keypoints.model_io import build_model, load_model
from interactive_keypoints.phantom import make_spine_phantom
from interactive_keypoints.session import KeypointSession

CONFIDENT = 0.5  # keypoints compared between the paths: fp32 confidence above this


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", type=Path, default=None, help="trained model folder (default: paper config, random weights)"
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all CPUs)")
    parser.add_argument("--clicks", type=int, default=10, help="timed clicks per path (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed clicks first (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="phantom and weight seed")
    parser.add_argument(
        "--image", type=Path, default=None, help="time on this radiograph instead of the spine phantom (any model)"
    )
    parser.add_argument(
        "--fp32", action="store_true", help="on a CPU with native bf16, time the fp32 path an AVX2-only CPU takes"
    )
    return parser.parse_args(argv)


class PlainFp32:
    """The straightforward per-click loop: full network, dense hints, full-resolution decode."""

    def __init__(self, model, radiograph: Radiograph):
        self.network = model.network.float().eval()
        self.config = model.config
        self.coords = CoordinateMap(radiograph.size, self.config.input_size)
        image = preprocess(radiograph, self.config.input_size, self.config.intensity)
        self.image = image.expand(self.config.in_channels, -1, -1)[None]
        self.probs = None  # (1, K, H, W) of the previous pass

    @torch.no_grad()
    def step(self, fixed: dict[int, np.ndarray]):
        """One pass with ``fixed`` {index: (x, y) original px} -> points (K, 2) original px, confidence (K,)."""
        k, size = self.config.num_keypoints, self.config.input_size
        mask = torch.zeros(1, k, dtype=torch.bool)
        positions = torch.zeros(1, k, 2)
        for index, xy in fixed.items():
            mask[0, index] = True
            positions[0, index] = torch.from_numpy(self.coords.to_input(xy)).float()
        clicks = gaussian_heatmaps(positions, size, self.config.sigma, mask)
        # paper test-time rule: the previous output only in the channels of fixed points
        prev = torch.zeros_like(clicks) if self.probs is None else self.probs * mask[..., None, None]
        self.probs = torch.sigmoid(self.network(self.image, clicks, prev)["logits"])
        points, confidence = decode_heatmaps(self.probs)
        points = self.coords.to_original(points[0].numpy().astype(np.float64))
        for index, xy in fixed.items():
            points[index] = xy
        return points, confidence[0].numpy().astype(np.float64)


def click_order(num_keypoints: int, steps: int, seed: int) -> list[int]:
    return [int(i) for i in np.random.default_rng(seed).permutation(num_keypoints)[:steps]]


def run_plain(model, radiograph, truth, order):
    """Returns per-step (points, confidence, fixed mask) and per-click seconds (step 0 = predict)."""
    plain = PlainFp32(model, radiograph)
    results, seconds, fixed = [], [], {}
    results.append((*plain.step(fixed), np.zeros(len(truth), bool)))
    for index in order:
        fixed[index] = truth[index]
        start = time.perf_counter()
        points, confidence = plain.step(dict(fixed))
        seconds.append(time.perf_counter() - start)
        mask = np.zeros(len(truth), bool)
        mask[list(fixed)] = True
        results.append((points, confidence, mask))
    return results, seconds


def run_session(model, radiograph, truth, order, local_stage: bool = False):
    # the network alone: the plain loop has no correction field or click decoder, and the points are compared
    session = KeypointSession(
        model,
        radiograph,
        device="cpu",
        optimized=True,
        correction_length=0,
        local_stage=local_stage,
        click_decoder=False,
    )
    first = session.predict()
    results, seconds = [(first.points, first.confidence, first.fixed)], []
    for index in order:
        start = time.perf_counter()
        p = session.refine({index: tuple(truth[index])})
        seconds.append(time.perf_counter() - start)
        results.append((p.points, p.confidence, p.fixed))
    return session, results, seconds


def stand_in_truth(model, radiograph: Radiograph, seed: int, shift_px: float = 20.0) -> np.ndarray:
    """Where the clicks go on a real image without labels: the first prediction moved by a seeded
    ``shift_px`` in a random direction (a user's correction of about that size)."""
    first = KeypointSession(model, radiograph, device="cpu", local_stage=False).predict().points
    angles = np.random.default_rng(seed).uniform(0, 2 * np.pi, len(first))
    moved = first + shift_px * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    h, w = radiograph.size
    return np.clip(moved, 0, [w - 1, h - 1])


def encode_once_saving_ms(session, repeats: int = 5) -> float:
    """What the per-image cache saves per click: one ``encode_image`` on the optimized path."""
    config = session.config
    image = preprocess(session.radiograph, config.input_size, config.intensity)
    image = image.expand(config.in_channels, -1, -1)[None]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.predictor.encode_image(image)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def correction_field_ms(points, fixed: dict, config, repeats: int = 200) -> float:
    """What the correction field adds to a click (it runs after the network; the timed session has
    it off so that both paths compare the network alone). Length: the model's, else 0.1."""
    length = config.correction_length or 0.1
    start = time.perf_counter()
    for _ in range(repeats):
        apply_correction_field(points, fixed, length, config.correction_noise)
    return 1000 * (time.perf_counter() - start) / repeats


def rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def click_decoder_ms(decoder, points, fixed: dict, repeats: int = 200) -> dict[str, float | None]:
    """What the model's click decoder (the session's predictor holds it; the timed session has it
    off) adds to a click: its offsets as a session runs them (members stacked), the same offsets
    from each member's module in turn (the training network's forward), and its check-next head;
    None: the folder has none. Timed on the run's last points with its clicks, as many as it is
    used for, interleaved so that both offset paths see the same machine. The stacked figure is
    a whole ``correct`` call (the features too), the members' the forward alone."""
    if decoder is None:
        return {"stacked": None, "members": None, "review_head": None}
    is_fixed = np.zeros(len(points), dtype=bool)
    is_fixed[list(fixed)[: decoder.config.max_clicks]] = True
    features = torch.from_numpy(decoder_features(points, points, points, is_fixed, np.array(is_fixed.sum()))[0])[None]

    def members():
        with torch.inference_mode():
            decoder.network(features)

    timed = {"stacked": lambda: decoder.correct(points, points, points, is_fixed), "members": members}
    if decoder.has_review_head:
        timed["review_head"] = lambda: decoder.expected_error(points, points, points, is_fixed)
    seconds = {name: 0.0 for name in timed}
    for _ in range(repeats):
        for name, call in timed.items():
            start = time.perf_counter()
            call()
            seconds[name] += time.perf_counter() - start
    return {"review_head": None} | {name: 1000 * total / repeats for name, total in seconds.items()}


def keypoint_difference(plain_results, session_results):
    """Max |difference| (original px) over free keypoints the fp32 path is confident about."""
    diffs = []
    for (p_points, p_conf, fixed), (s_points, _, _) in zip(plain_results, session_results):
        compared = (~fixed) & (p_conf > CONFIDENT)
        diffs.append(np.abs(p_points[compared] - s_points[compared]).reshape(-1))
    diffs = np.concatenate(diffs)
    return (float(diffs.max()) if diffs.size else None), int(diffs.size // 2)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.fp32:  # the optimized path asks inference whether the CPU has bf16: answer no
        inference.cpu_has_native_bf16 = lambda: False
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.model is not None:
        model, weights = load_model(args.model), str(args.model)
    else:
        model, weights = build_model(paper_config(68)), "random"
        model.network.eval()
    config = model.config

    if args.image is not None:
        radiograph = load_radiograph(args.image)
        truth = stand_in_truth(model, radiograph, args.seed)
    else:
        sample = make_spine_phantom(args.seed)
        if len(sample.points) != config.num_keypoints:
            sys.exit(
                f"error: the phantom has {len(sample.points)} landmarks, the model {config.num_keypoints}: give --image"
            )
        radiograph, truth = Radiograph(sample.image, sample.spacing, spacing_known=True), sample.points
    clicks = min(args.warmup + args.clicks, config.num_keypoints)
    order = click_order(config.num_keypoints, clicks, args.seed)

    stage = None
    if model.local_stage is not None:  # the same clicks with the stage: what it adds per click
        _, _, staged_s = run_session(model, radiograph, truth, order, local_stage=True)
        stage = 1000 * statistics.median(staged_s[args.warmup :])
    session, session_results, session_s = run_session(model, radiograph, truth, order)
    saving_ms = encode_once_saving_ms(session)
    field_ms = correction_field_ms(session_results[-1][0], {k: truth[k] for k in order}, config)
    decoder_ms = click_decoder_ms(session.predictor.click_decoder, session_results[-1][0], {k: truth[k] for k in order})
    del session
    plain_results, plain_s = run_plain(model, radiograph, truth, order)

    fp32_ms = 1000 * statistics.median(plain_s[args.warmup :])
    optimized_ms = 1000 * statistics.median(session_s[args.warmup :])
    max_diff, compared = keypoint_difference(plain_results, session_results)
    report = {
        "fp32_eager_ms": round(fp32_ms, 1),
        "optimized_ms": round(optimized_ms, 1),
        "speedup": round(fp32_ms / optimized_ms, 2),
        "max_keypoint_diff_px": None if max_diff is None else round(max_diff, 3),
        "keypoints_compared": compared,
        # the same difference in network-input pixels (original / input scale, the larger axis)
        "max_keypoint_diff_input_px": None
        if max_diff is None
        else round(max_diff * max(i / o for i, o in zip(config.input_size, radiograph.size)), 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "encode_once_saving_ms": round(saving_ms, 1),
        "correction_field_ms": round(field_ms, 2),  # with all the run's clicks
        # null: the folder has none; _members_ms: the same offsets one member module at a time
        "click_decoder_ms": rounded(decoder_ms["stacked"], 2),
        "click_decoder_members_ms": rounded(decoder_ms["members"], 2),
        "review_head_ms": rounded(decoder_ms["review_head"], 2),  # null: no check-next head
        # per click with the model's local stage, the same clicks (null: the folder has none)
        "local_stage": None
        if stage is None
        else {
            "with_ms": round(stage, 1),
            "without_ms": round(optimized_ms, 1),
            "stage_ms": round(stage - optimized_ms, 1),
        },
        "threads": torch.get_num_threads(),
        "bf16": inference.cpu_has_native_bf16(),
        "cpu": cpu_description(),
        "weights": weights,
        "note": (
            "random weights give flat heatmaps whose argmax is arbitrary: max_keypoint_diff_px is "
            "meaningful only with --model (trained weights)"
            if weights == "random"
            else ""
        ),
        "clicks_timed": args.clicks,
        "warmup_clicks": args.warmup,
        "image_size": list(radiograph.size),
        "fp32_eager_ms_all": [round(1000 * s, 1) for s in plain_s],
        "optimized_ms_all": [round(1000 * s, 1) for s in session_s],
        "config": {
            "num_keypoints": config.num_keypoints,
            "input_size": list(config.input_size),
            "width": config.width,
            "stage_modules": list(config.stage_modules),
            "gating": config.gating,
        },
        "torch": torch.__version__,
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
