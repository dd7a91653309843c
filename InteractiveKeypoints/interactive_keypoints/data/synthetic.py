"""In-memory phantom datasets (no files needed).

- ``phantom``: spine phantoms, 68 landmarks in AASCE order (``phantom.make_spine_phantom``);
- ``phantom-hidden``: the propagation task, a short stack of vertebrae one of which is
  hidden and displaced (``phantom.make_hidden_vertebra_phantom``): clicks are informative.

Each split uses its own range of phantom seeds, so splits never share an image.
"""

from __future__ import annotations

from ..conventions import SPINE
from ..errors import UsageError
from .common import DatasetSplit, KeypointSample, keep_valid

SPLIT_SEED_OFFSETS = {"train": 0, "val": 100_000, "test": 200_000}
TASKS = ("phantom", "phantom-hidden")


def split_ids(num_images: int = 16, seed: int = 0) -> dict[str, list[str]]:
    return {
        split: [f"phantom_{seed + offset + i:06d}" for i in range(num_images)]
        for split, offset in SPLIT_SEED_OFFSETS.items()
    }


def load(
    split: str = "train",
    num_images: int = 16,
    seed: int = 0,
    height: int = 512,
    width: int = 256,
    task: str = "phantom",
) -> DatasetSplit:
    from ..phantom import (  # needs scipy: only here
        hidden_vertebra_names,
        make_hidden_vertebra_phantom,
        make_spine_phantom,
    )

    if split not in SPLIT_SEED_OFFSETS:
        raise UsageError(f"phantom data has splits {sorted(SPLIT_SEED_OFFSETS)}, not {split!r}")
    if task not in TASKS:
        raise UsageError(f"unknown phantom task {task!r}; expected one of {TASKS}")
    samples = []
    for i in range(num_images):
        phantom_seed = seed + SPLIT_SEED_OFFSETS[split] + i
        if task == "phantom":
            p = make_spine_phantom(phantom_seed, height=height, width=width)
        else:
            p = make_hidden_vertebra_phantom(phantom_seed, size=height // 4)
        samples.append(
            KeypointSample(
                id=f"phantom_{phantom_seed:06d}", points=p.points, image=p.image, spacing=p.spacing, spacing_known=True
            )
        )
    names = list(SPINE.names) if task == "phantom" else hidden_vertebra_names()
    # mirroring a hidden-vertebra phantom is valid, but left/right pairs are not needed to learn the task
    flip_pairs = list(SPINE.flip_pairs) if task == "phantom" else []
    valid, skipped = keep_valid(samples, len(names), task)
    return DatasetSplit(
        name=task,
        split=split,
        samples=valid,
        landmark_names=names,
        flip_pairs=flip_pairs,
        flip_allowed=bool(flip_pairs),
        skipped=skipped,
    )
