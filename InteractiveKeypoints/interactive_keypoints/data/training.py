"""Torch ``Dataset`` of augmented samples at the network input size.

Decoding a 3755-px JPEG every epoch on two cores is slow, so each image is decoded once,
normalised and downscaled to about the input size with the same MONAI pipeline inference
uses (``imaging.preprocess_transform``), and kept in memory. The resize is the
align_corners=False pixel-edge mapping, so coordinates stay exact through the cache:
original -> cache -> input composes to the original -> input mapping of ``imaging.to_input``.

Augmentation randomness is a function of (seed, epoch, index) alone (:meth:`item`): an
item comes out the same whichever DataLoader worker makes it, however many workers there
are, and after a resume. ``dataset[i]`` is ``item(i, dataset.epoch)``. Call :meth:`preload`
before starting workers so that forked workers share one cache instead of each decoding again.

A sample that carries a ``cache_image`` (read from a training pack, see ``pack.py``) is
used as it is: the pack holds exactly this cache, made once where the image files are.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from ..augment import training_transforms, transform_points
from ..imaging import preprocess_transform, resize_matrix
from .common import DatasetSplit, load_grey_image

DEFAULT_INTENSITY = {"mode": "minmax", "range": [-1.0, 1.0]}


class KeypointTrainingDataset(Dataset):
    """Items: dict with

    - ``image`` (1, H, W) float32, normalised as ``intensity`` says (as at inference);
    - ``points`` (K, 2) float32 input pixels after augmentation (indices swapped on a flip);
    - ``visible`` (K,) bool: the point lies inside the input image;
    - ``labelled`` (K,) bool: the point is a label (a partly reviewed image: not all), indices
      swapped with the points on a flip;
    - ``orig_points`` (K, 2) float64 labels in original pixels, original index order;
    - ``orig_to_input`` (3, 3) float64: original (x, y, 1) -> ``points`` (before the swap);
    - ``scale`` (2,) input pixels per original pixel (x, y), without augmentation;
    - ``orig_size`` (2,) (H, W); ``spacing`` (2,) (sx, sy); ``flipped`` bool; ``id`` str.
    """

    def __init__(
        self,
        data: DatasetSplit,
        input_size,
        intensity: dict | None = None,
        augment: bool = True,
        cache: bool = True,
        cache_scale: float = 1.0,
        seed: int | None = 0,
        occlusion_prob: float = 0.0,
    ):
        self.data = data
        self.input_size = tuple(int(v) for v in input_size)
        self.intensity = dict(intensity or DEFAULT_INTENSITY)
        self.cache_size = tuple(max(1, round(v * cache_scale)) for v in self.input_size)
        self.use_cache = cache
        self.seed = seed
        self.epoch = 0  # the epoch ``dataset[i]`` augments for
        self._cache: dict[int, torch.Tensor] = {}
        low = float(self.intensity.get("range", (-1.0, 1.0))[0])
        # outside the source image reads as the black level of the normalised range
        self.transform = training_transforms(
            self.input_size,
            data.flip_pairs,
            data.flip_allowed,
            augment=augment,
            fill=low,
            seed=seed,
            occlusion_prob=occlusion_prob,
        )

    def __len__(self) -> int:
        return len(self.data)

    def cached_image(self, index: int) -> torch.Tensor:
        """(1, h, w) normalised image at ``cache_size`` (or a packed sample's own cache)."""
        if index in self._cache:
            return self._cache[index]
        sample = self.data[index]
        if sample.cache_image is not None:  # made once by ``pack``: nothing to decode
            if sample.cache_intensity != self.intensity:
                raise ValueError(
                    f"{sample.id}: its packed image is normalised as {sample.cache_intensity}, "
                    f"the model expects {self.intensity}; pack the dataset again"
                )
            image = torch.from_numpy(np.asarray(sample.cache_image, dtype=np.float32))[np.newaxis]
        else:
            grey = load_grey_image(sample)
            image = preprocess_transform(self.cache_size, self.intensity)(grey[np.newaxis])
        if self.use_cache:
            self._cache[index] = image
        return image

    def preload(self) -> None:
        for i in range(len(self)):
            self.cached_image(i)

    def item_seed(self, index: int, epoch: int) -> int:
        return int(np.random.SeedSequence([self.seed or 0, epoch, index]).generate_state(1)[0])

    def __getitem__(self, index: int) -> dict:
        return self.item(index, self.epoch)

    def item(self, index: int, epoch: int) -> dict:
        """Sample ``index`` as augmented in ``epoch``. Reseeds the (per-process) transform
        chain, so not for threads sharing one dataset; worker processes each have a copy."""
        if self.seed is not None:
            self.transform.set_random_state(seed=self.item_seed(index, epoch))
        sample = self.data[index]
        image = self.cached_image(index)
        to_cache = resize_matrix(sample.image_size, tuple(image.shape[-2:]))
        points = transform_points(sample.points, to_cache)
        labelled = np.ones(len(points), dtype=bool) if sample.labelled is None else sample.labelled
        d = self.transform({"image": image, "points": points, "labelled": labelled})
        h, w = sample.image_size
        image = d["image"]
        return {
            "image": image.as_tensor() if hasattr(image, "as_tensor") else image,  # drop MONAI metadata
            "points": torch.as_tensor(d["points"], dtype=torch.float32),
            "visible": torch.as_tensor(d["visible"]),
            "labelled": torch.as_tensor(d["labelled"]),
            "orig_points": torch.as_tensor(sample.points),
            "orig_to_input": torch.as_tensor(d["to_output"] @ to_cache),
            "scale": torch.tensor([self.input_size[1] / w, self.input_size[0] / h], dtype=torch.float64),
            "orig_size": torch.tensor([h, w]),
            "spacing": torch.tensor(sample.spacing, dtype=torch.float64),
            "flipped": bool(d.get("flipped", False)),
            "id": sample.id,
        }


class EpochItems(Dataset):
    """``dataset`` indexed by (epoch, index) keys, so that DataLoader workers, which hold
    copies of the dataset made once, still augment for the epoch the main process is in."""

    def __init__(self, dataset: KeypointTrainingDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key) -> dict:
        epoch, index = key
        return self.dataset.item(int(index), int(epoch))


class EpochBatchSampler(torch.utils.data.Sampler):
    """Batch sampler of :class:`EpochItems` keys; set ``batches`` before iterating the loader."""

    def __init__(self):
        self.batches: list[list[tuple[int, int]]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)
