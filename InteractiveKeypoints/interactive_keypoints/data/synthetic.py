"""An in-memory dataset of spine phantoms (68 landmarks, AASCE order): no files needed.

Each split uses its own range of phantom seeds, so splits never share an image.
"""

from __future__ import annotations

from .common import DatasetSplit, KeypointSample, keep_valid

SPLIT_SEED_OFFSETS = {"train": 0, "val": 100_000, "test": 200_000}


def split_ids(num_images: int = 16, seed: int = 0) -> dict[str, list[str]]:
    return {split: [f"phantom_{seed + offset + i:06d}" for i in range(num_images)] for split, offset in SPLIT_SEED_OFFSETS.items()}


def load(split: str = "train", num_images: int = 16, seed: int = 0, height: int = 512, width: int = 256) -> DatasetSplit:
    from ..phantom import SPINE_FLIP_PAIRS, SPINE_LANDMARK_NAMES, make_spine_phantom  # needs scipy: only here

    if split not in SPLIT_SEED_OFFSETS:
        raise ValueError(f"phantom data has splits {sorted(SPLIT_SEED_OFFSETS)}, not {split!r}")
    samples = []
    for i in range(num_images):
        phantom_seed = seed + SPLIT_SEED_OFFSETS[split] + i
        p = make_spine_phantom(phantom_seed, height=height, width=width)
        samples.append(KeypointSample(id=f"phantom_{phantom_seed:06d}", points=p.points, image=p.image,
                                      spacing=p.spacing, spacing_known=True))
    valid, skipped = keep_valid(samples, len(SPINE_LANDMARK_NAMES), "phantom")
    return DatasetSplit(name="phantom", split=split, samples=valid, landmark_names=list(SPINE_LANDMARK_NAMES),
                        flip_pairs=list(SPINE_FLIP_PAIRS), flip_allowed=True, skipped=skipped)
