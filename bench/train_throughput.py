"""Training throughput: plain fp32 eager vs. the trainer's fast path, one run, same device.

    python bench/train_throughput.py                        # paper config: W32 full depth, 512 x 256, batch 4
    python bench/train_throughput.py --device cuda --steps 20
    python bench/train_throughput.py --steps 2 --width 8 --input 256x128   # a quick check on a CPU

Prints ONE JSON object. A benchmark, not a test: figures depend on the machine and its load.

Both paths run ``train.training_step`` (random initial clicks, 0..2 no-grad click passes
adding the worst point, one graded pass, BCE + morphology loss) followed by backward and an
Adam step, on the same phantom batch from the same initial weights, with the same click
draws per step. ``fp32_eager``: float32, contiguous tensors, the default Adam. ``fast``:
what ``interactive-keypoints train`` does (``train.setup_fast_path``, ``make_optimizer``,
``to_device``): bf16 autocast where the device has it (CUDA with bf16, CPUs with
AVX512-BF16/AMX), channels_last, cuDNN autotuning and fused Adam on CUDA. Images/s counts
``--steps`` steps after ``--warmup`` untimed ones, the device synchronised around them.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import sys
import time
from contextlib import nullcontext

import numpy as np
import torch

from interactive_keypoints import train
from interactive_keypoints.config import paper_config
from interactive_keypoints.data import get_dataset
from interactive_keypoints.data.training import KeypointTrainingDataset
from interactive_keypoints.inference import cpu_description, cpu_has_native_bf16, pick_device
from interactive_keypoints.model_io import build_model
from interactive_keypoints.morphology import select_morphology
from interactive_keypoints.recipe import InteractionSection, LossSection, OptimisationSection, parse_size


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, ...")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per path (default 10)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1; cuDNN tunes here)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--width", type=int, default=32, help="HRNet width (paper: 32)")
    parser.add_argument("--input", type=parse_size, default=(512, 256), help="input HxW (paper: 512x256)")
    parser.add_argument("--iterative-max", type=int, default=2, help="no-grad click passes, 0..N (train default)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU torch threads")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def phantom_batch(config, batch_size: int, seed: int):
    """One augmented batch of generated spines at the input size, and their morphology selection."""
    split = get_dataset("phantom", None, "train", num_images=batch_size, seed=seed)
    data = KeypointTrainingDataset(split, config.input_size, config.intensity, augment=True, seed=seed)
    batch = torch.utils.data.default_collate([data.item(i, 0) for i in range(batch_size)])
    selection = select_morphology(split.points_array(), split.image_sizes(), "low", 70, 70)
    return batch, selection


def run_path(fast: bool, network, batch, selection, config, recipe, device, warmup: int, steps: int):
    """(seconds of the timed steps, first loss, peak GiB or None, autocast dtype); ``recipe``:
    (optimisation, interaction, loss) sections."""
    options, interaction, loss_term = recipe
    network = copy.deepcopy(network).to(device).train()
    if fast:
        network, autocast, dtype = train.setup_fast_path(network, device, True)
        optimizer = train.make_optimizer(network, options.lr, device)
        if device.type == "cuda":
            batch = {k: v.pin_memory() if torch.is_tensor(v) else v for k, v in batch.items()}
    else:
        autocast, dtype = nullcontext, None
        optimizer = torch.optim.Adam(network.parameters(), lr=options.lr)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    first_loss, seconds = None, 0.0
    for step in range(warmup + steps):
        if step == warmup:
            synchronize(device)
            start = time.perf_counter()
        rng = np.random.default_rng([options.seed, step])  # the same clicks for both paths
        on_device = train.to_device(batch, device) if fast else batch
        loss_h, loss_m = train.training_step(
            network, on_device, rng, config, selection, interaction, loss_term, device, autocast, channels_last=fast
        )
        loss = loss_h + loss_m
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if first_loss is None:
            first_loss = float(loss.detach())
    synchronize(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return seconds, first_loss, peak, dtype


def device_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return cpu_description()
    return device.type


def main(argv=None) -> int:
    bench = parse_args(argv)
    torch.set_num_threads(bench.threads)
    device = pick_device(bench.device)
    # the trainer's own defaults, with this run's sizes: training_step reads its options from them
    args = (
        OptimisationSection(batch_size=bench.batch_size, seed=bench.seed),
        InteractionSection(iterative_max=bench.iterative_max),
        LossSection(),
    )
    config = paper_config(68, width=bench.width, input_size=bench.input, sigma=7.5 * bench.input[0] / 512)
    torch.manual_seed(bench.seed)
    network = build_model(config).network
    batch, selection = phantom_batch(config, bench.batch_size, bench.seed)

    steps = (bench.warmup, bench.steps)
    plain_s, plain_loss, plain_peak, _ = run_path(False, network, batch, selection, config, args, device, *steps)
    fast_s, fast_loss, fast_peak, dtype = run_path(True, network, batch, selection, config, args, device, *steps)
    images = bench.steps * bench.batch_size
    report = {
        "fp32_eager_images_per_s": round(images / plain_s, 3),
        "fast_images_per_s": round(images / fast_s, 3),
        "speedup": round(plain_s / fast_s, 2),
        "fast_autocast": str(dtype) if dtype is not None else "off (float32)",
        "fast_channels_last": True,
        "fused_adam": device.type == "cuda",
        "first_loss": {"fp32_eager": round(plain_loss, 5), "fast": round(fast_loss, 5)},
        "peak_memory_gib": None
        if plain_peak is None
        else {"fp32_eager": round(plain_peak, 2), "fast": round(fast_peak, 2)},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "device": str(device),
        "device_name": device_name(device),
        "cpu_bf16": cpu_has_native_bf16(),
        "threads": torch.get_num_threads(),
        "steps_timed": bench.steps,
        "warmup_steps": bench.warmup,
        "config": {
            "num_keypoints": config.num_keypoints,
            "input_size": list(config.input_size),
            "width": config.width,
            "stage_modules": list(config.stage_modules),
            "batch_size": bench.batch_size,
            "iterative_max": bench.iterative_max,
            "parameters": sum(p.numel() for p in network.parameters()),
        },
        "torch": torch.__version__,
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
