"""The local stage's cost per variant: a training step and an inference call, per landmark set.

    python bench/local_stage.py [--keypoints 19] [--threads 2] [--repeats 5]

Prints ONE JSON object: for each variant of ``local_stage.LocalStageConfig`` that issue #24
compared (landmark identity as K output channels or as K one-hot input planes; heatmap or
integral head), the median seconds of one training step (a batch of ``--batch`` 64 x 64 patches,
forward + backward, bf16 autocast where the CPU has native bf16, as ``train-local`` runs it) and
of one inference call on K patches (in float32, and in bf16 where the CPU has it: the session
runs the stage in the first stage's dtype). A benchmark, not
a test: figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import nullcontext

import torch

from interactive_keypoints.inference import cpu_description, cpu_has_native_bf16
from interactive_keypoints.local_stage import LocalStage, LocalStageConfig, LocalStageNet, decode_patch_logits
from interactive_keypoints.train_local import patch_loss

VARIANTS = {
    "identity output, heatmap": {"identity": "output", "head": "heatmap"},
    "identity input, heatmap": {"identity": "input", "head": "heatmap"},
    "identity input, integral": {"identity": "input", "head": "integral"},
}


def median_seconds(function, repeats: int) -> float:
    function()  # warm-up: oneDNN picks its kernels on the first call
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(config: LocalStageConfig, args, bf16: bool) -> dict:
    """Median seconds of one training step and one inference call of ``config``'s stage."""
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else nullcontext
    network = LocalStageNet(config)
    patches = torch.randn(args.batch, 2, config.patch_size, config.patch_size)
    landmarks = torch.randint(0, config.num_keypoints, (args.batch,))
    targets = torch.rand(args.batch, 2) * (config.patch_size - 1)

    def step():
        with autocast():
            logits = network(patches, landmarks)
        patch_loss(logits, targets, config).backward()

    report = {"train_step_s": round(median_seconds(step, args.repeats), 4)}
    for dtype in (torch.float32, torch.bfloat16) if bf16 else (torch.float32,):
        stage = LocalStage(config, LocalStageNet(config), dtype=dtype)
        k = config.num_keypoints

        @torch.inference_mode()
        def infer(stage=stage, k=k):
            logits = stage.network(patches[:k].to(stage.dtype), torch.arange(k))
            decode_patch_logits(logits.float(), config.head)

        report[f"inference_ms_{str(dtype).removeprefix('torch.')}"] = round(
            1000 * median_seconds(infer, args.repeats), 2
        )
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keypoints", type=int, default=19)
    parser.add_argument("--batch", type=int, default=64, help="patches per training step")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    bf16 = cpu_has_native_bf16()
    report = {
        name: measure(LocalStageConfig(args.keypoints, **settings), args, bf16) for name, settings in VARIANTS.items()
    }
    print(json.dumps({"keypoints": args.keypoints, "batch": args.batch, "threads": args.threads,
                      "bf16": bf16, "cpu": cpu_description(), "variants": report}))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
