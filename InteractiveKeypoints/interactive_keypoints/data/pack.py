"""Training packs: a dataset's train and val splits made once where the image files are, read
where training runs (a GPU machine without SimpleITK, no network, a small upload).

    interactive-keypoints pack --dataset aasce --data-root .../boostnet_labeldata --input 512x256 --out /work/packs/aasce-512x256
    interactive-keypoints train --pack /work/packs/aasce-512x256 --input 512x256 ...

A pack is a folder: ``manifest.json`` (everything but the pixels; no pickle) and one JPEG per
sample under ``images/``. Each JPEG is the cache that :class:`KeypointTrainingDataset` would
build from the file (the whole radiograph normalised with the model's ``intensity``, then
resized to ``cache_scale`` x the input size with the same MONAI transform), quantised to uint8
(0 = the low end of the intensity range, 255 = the high end). ``cache_scale`` > 1 leaves the
zoom augmentation (up to 1.2) detail to enlarge. Reading a pack needs numpy, torch, Pillow and
MONAI only: SimpleITK and scipy are used while packing, never while reading.

Manifest keys: ``format``, ``format_version``; ``dataset``, ``data_root``, ``loader``
(``split_seed``, ``drop_disordered_labels``, ``phantom_images``, ``options`` given to the loader); ``input_size``,
``cache_scale``, ``cache_size`` (H, W), ``intensity``; ``image_format`` (JPEG, quality, value
mapping); ``landmark_names``, ``flip_pairs``, ``flip_allowed``; ``split_record`` (what
training saves as split.json and compares on resume); ``limit``; ``splits``: for ``train`` and
``val``, ``skipped`` (id, reason) and ``samples``, each with ``id``, ``image`` (file in the
pack), ``sha256``, ``image_size`` (original H, W), ``points`` (original pixels, (x, y)),
``spacing``, ``spacing_known``, ``to_cache`` (3 x 3: original (x, y, 1) -> packed pixels, the
align_corners=False resize of ``imaging.resize_matrix``) and ``cache_points`` (the points in
packed pixels). The morphology selection reads the train samples' ``points`` and ``image_size``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..augment import transform_points
from ..errors import KeypointsError
from ..imaging import resize_matrix
from . import dataset_options, disordered_label_options, synthetic, training_splits
from .common import DatasetSplit, KeypointSample, label_problem
from .training import DEFAULT_INTENSITY, KeypointTrainingDataset

PACK_FORMAT = "interactive-keypoints-pack"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
IMAGE_FOLDER = "images"
# the zoom augmentation enlarges up to 1.2x: a cache 1.25x the input keeps that detail
DEFAULT_CACHE_SCALE = 1.25
# JPEG quality of the normalised cache: 80 errs by 1.2 grey levels on average (90: 0.9, at 1.5x
# the bytes), far below the brightness/contrast augmentation, and keeps AASCE at 512x256 and
# ISBI at 640x512 together under 30 MB
DEFAULT_JPEG_QUALITY = 80
# packed-frame points are written rounded (a 17-digit float each would bloat the manifest);
# training maps the exact original points, these are for reading the pack by eye and checks
CACHE_POINT_DECIMALS = 6
POINT_TOLERANCE_PX = 1e-5


class PackError(KeypointsError, ValueError):
    """A training pack that is missing, incomplete or does not match what it is used for."""


# ---------------------------------------------------------------------- writing


def to_uint8(image: np.ndarray, intensity: dict) -> np.ndarray:
    """A normalised image (values in the intensity range) as uint8: low -> 0, high -> 255."""
    low, high = (float(v) for v in intensity.get("range", (-1.0, 1.0)))
    return np.clip(np.rint((np.asarray(image, dtype=np.float64) - low) / (high - low) * 255), 0, 255).astype(np.uint8)


def from_uint8(pixels: np.ndarray, intensity: dict) -> np.ndarray:
    """The inverse of :func:`to_uint8` (up to its rounding): float32 in the intensity range."""
    low, high = (float(v) for v in intensity.get("range", (-1.0, 1.0)))
    return (low + (high - low) / 255.0 * np.asarray(pixels, dtype=np.float32)).astype(np.float32)


def pack_dataset(
    name: str,
    root: str | Path | None,
    input_size,
    out: str | Path,
    *,
    split_seed: int = 0,
    phantom_images: int = 64,
    drop_disordered: bool = False,
    cache_scale: float = DEFAULT_CACHE_SCALE,
    quality: int = DEFAULT_JPEG_QUALITY,
    intensity: dict | None = None,
    limit: int | None = None,
    progress: bool = False,
) -> dict:
    """Write the train and val splits of a dataset as a pack in the new folder ``out``; returns
    the manifest. ``limit`` packs only the first N samples of each split (tests, quick looks; the
    split record still lists every id)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise PackError(f"{out} exists and is not empty; give a new folder for the pack")
    if not 1 <= int(quality) <= 100:
        raise PackError(f"JPEG quality must be 1..100, not {quality}")
    if cache_scale < 1:
        raise PackError(f"cache scale must be at least 1 (the pack would hold less than the input), not {cache_scale}")
    input_size = tuple(int(v) for v in input_size)
    intensity = dict(intensity or DEFAULT_INTENSITY)
    train, val, split_record = training_splits(name, root, split_seed, phantom_images, drop_disordered)
    (out / IMAGE_FOLDER).mkdir(parents=True, exist_ok=True)
    # oneDNN keeps a primitive, with its buffers, per image shape: 5 GB after the 481 AASCE sizes
    # (not torch.backends.mkldnn.flags: it also sets TF32 and warns about Intel GPUs)
    onednn = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        splits = {
            split.split: _pack_split(split, input_size, intensity, cache_scale, quality, out, limit, progress)
            for split in (train, val)
        }
    finally:
        torch.backends.mkldnn.enabled = onednn
    manifest = {
        "format": PACK_FORMAT,
        "format_version": FORMAT_VERSION,
        "created_with": f"interactive-keypoints {__version__}",
        "dataset": name,
        "data_root": str(root) if root is not None else None,
        "loader": {
            "split_seed": split_seed,
            "drop_disordered_labels": bool(drop_disordered),
            "phantom_images": phantom_images if name in synthetic.TASKS else None,
            "options": {
                **dataset_options(name, split_seed, phantom_images),
                **disordered_label_options(name, drop_disordered),
            },
        },
        "input_size": list(input_size),
        "cache_scale": float(cache_scale),
        "cache_size": list(KeypointTrainingDataset(train, input_size, cache_scale=cache_scale).cache_size),
        "intensity": intensity,
        "image_format": {
            "type": "JPEG",
            "mode": "L",
            "quality": int(quality),
            "values": "uint8 v is the normalised value low + (high - low) * v / 255 of intensity.range",
        },
        "landmark_names": list(train.landmark_names),
        "flip_pairs": [list(p) for p in train.flip_pairs],
        "flip_allowed": bool(train.flip_allowed),
        "split_record": split_record,
        "limit": limit,
        "splits": splits,
    }
    # written last: a folder without a manifest is never taken for a whole pack
    (out / MANIFEST).write_text(json.dumps(manifest, separators=(",", ":")))  # compact: it holds every point
    return manifest


def _pack_split(
    data: DatasetSplit,
    input_size,
    intensity: dict,
    cache_scale: float,
    quality: int,
    out: Path,
    limit: int | None,
    progress: bool,
) -> dict:
    """Write one split's images; its manifest entry."""
    from PIL import Image

    if limit is not None:
        data = DatasetSplit(
            data.name,
            data.split,
            data.samples[:limit],
            data.landmark_names,
            data.flip_pairs,
            data.flip_allowed,
            data.skipped,
        )
    # the very cache training builds from the files, made by the same code
    cache = KeypointTrainingDataset(data, input_size, intensity, augment=False, cache=False, cache_scale=cache_scale)
    samples = []
    indices = range(len(data))
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc=f"packing {data.split}")
    for i in indices:
        sample = data[i]
        if sample.labelled is not None:  # a pack holds whole labels only
            raise PackError(f"{sample.id} is partly reviewed: a training pack takes fully reviewed images only")
        pixels = to_uint8(cache.cached_image(i)[0].numpy(), intensity)
        file = f"{IMAGE_FOLDER}/{data.split}-{i:05d}.jpg"
        Image.fromarray(pixels).save(out / file, format="JPEG", quality=int(quality), optimize=True)
        to_cache = resize_matrix(sample.image_size, pixels.shape)
        samples.append({
            "id": sample.id,
            "image": file,
            "sha256": hashlib.sha256((out / file).read_bytes()).hexdigest(),
            "image_size": list(sample.image_size),
            "points": sample.points.tolist(),
            "spacing": list(sample.spacing),
            "spacing_known": bool(sample.spacing_known),
            "to_cache": to_cache.tolist(),
            "cache_points": np.round(transform_points(sample.points, to_cache), CACHE_POINT_DECIMALS).tolist(),
        })  # fmt: skip
    return {"samples": samples, "skipped": [list(pair) for pair in data.skipped]}


# ---------------------------------------------------------------------- reading


def read_manifest(folder: str | Path) -> dict:
    """The pack's manifest, checked for its format and keys."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PackError(f"training pack {folder} does not exist (make one with 'interactive-keypoints pack')")
    path = folder / MANIFEST
    if not path.is_file():
        raise PackError(f"{folder} has no {MANIFEST}: not a training pack, or its packing did not finish")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PackError(f"{path} is not valid JSON ({e}); pack the dataset again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != PACK_FORMAT:
        raise PackError(f"{path} is not an interactive-keypoints training pack manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise PackError(
            f"{path} has pack format version {manifest.get('format_version')}; "
            f"this version reads {FORMAT_VERSION}: pack the dataset again"
        )
    required = (
        "dataset",
        "loader",
        "input_size",
        "cache_size",
        "intensity",
        "landmark_names",
        "flip_pairs",
        "flip_allowed",
        "split_record",
        "splits",
    )
    missing = [key for key in required if key not in manifest]
    if missing:
        raise PackError(f"{path} lacks key(s) {', '.join(missing)}; pack the dataset again")
    return manifest


def load_pack(folder: str | Path, split: str, manifest: dict | None = None) -> DatasetSplit:
    """One split of a pack: samples with original points, size and spacing (so validation
    errors stay in original pixels) whose ``cache_image`` is the packed image."""
    folder = Path(folder)
    manifest = manifest if manifest is not None else read_manifest(folder)
    if split not in manifest["splits"]:
        raise PackError(f"training pack {folder} has splits {sorted(manifest['splits'])}, not {split!r}")
    entries = manifest["splits"][split]
    if not isinstance(entries, dict) or not {"samples", "skipped"} <= set(entries):
        raise PackError(f"training pack {folder}: split {split!r} lacks 'samples' or 'skipped'; pack the dataset again")
    samples = []
    for entry in entries["samples"]:
        try:
            samples.append(_packed_sample(folder, entry, manifest))
        except (KeyError, TypeError, ValueError) as e:  # a PackError says what; others are missing or odd fields
            what = str(e) if isinstance(e, PackError) else f"a malformed entry ({type(e).__name__}: {e})"
            raise PackError(f"training pack {folder}, {split} sample {entry.get('id', '?')!r}: {what}") from None
    return DatasetSplit(
        name=manifest["dataset"],
        split=split,
        samples=samples,
        landmark_names=list(manifest["landmark_names"]),
        flip_pairs=[tuple(p) for p in manifest["flip_pairs"]],
        flip_allowed=bool(manifest["flip_allowed"]),
        skipped=[tuple(pair) for pair in entries["skipped"]],
    )


def _packed_sample(folder: Path, entry: dict, manifest: dict) -> KeypointSample:
    from PIL import Image, UnidentifiedImageError

    points = np.asarray(entry["points"], dtype=np.float64)
    image_size = tuple(int(v) for v in entry["image_size"])
    problem = label_problem(points, len(manifest["landmark_names"]), image_size)
    if problem:
        raise PackError(f"its label is unusable: {problem}")
    path = folder / entry["image"]
    if not path.is_file():
        raise PackError(f"its image {entry['image']} is missing")
    data = path.read_bytes()
    if "sha256" in entry and hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise PackError(f"its image {entry['image']} is not the file that was packed (checksum differs)")
    try:
        with Image.open(path) as image:
            image.load()
            pixels = np.asarray(image.convert("L") if image.mode != "L" else image)
    except (OSError, UnidentifiedImageError) as e:
        raise PackError(f"cannot decode its image {entry['image']}: {e}") from None
    cache_size = tuple(int(v) for v in manifest["cache_size"])
    if pixels.shape != cache_size:
        raise PackError(
            f"its image {entry['image']} is {pixels.shape[0]} x {pixels.shape[1]}, "
            f"the manifest says {cache_size[0]} x {cache_size[1]}"
        )
    to_cache = resize_matrix(image_size, cache_size)
    if not np.allclose(np.asarray(entry["to_cache"], dtype=np.float64), to_cache, rtol=0, atol=1e-12):
        raise PackError("its to_cache matrix is not the resize of its image_size to the cache size")
    cache_points = np.asarray(entry["cache_points"], dtype=np.float64)
    if (
        cache_points.shape != points.shape
        or np.abs(cache_points - transform_points(points, to_cache)).max() > POINT_TOLERANCE_PX
    ):
        raise PackError("its cache_points are not its points mapped with to_cache")
    return KeypointSample(
        id=str(entry["id"]),
        points=points,
        spacing=tuple(entry["spacing"]),
        spacing_known=bool(entry["spacing_known"]),
        image_size=image_size,
        cache_image=from_uint8(pixels, manifest["intensity"]),
        cache_intensity=dict(manifest["intensity"]),
    )


def load_pack_splits(
    folder: str | Path, input_size=None, split_seed: int | None = None, drop_disordered: bool | None = None
) -> tuple[DatasetSplit, DatasetSplit, dict]:
    """(train, val, split record) of a pack, as :func:`data.training_splits` gives them from the
    files. Refuses a pack made with other loader options, or for a smaller input than ``input_size``."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    loader = manifest["loader"]
    if split_seed is not None and split_seed != loader.get("split_seed"):
        raise PackError(
            f"training pack {folder} was made with --split-seed {loader.get('split_seed')}, "
            f"not {split_seed}; pass the pack's seed or pack again"
        )
    if drop_disordered is not None and bool(drop_disordered) != bool(loader.get("drop_disordered_labels")):
        state = "with" if loader.get("drop_disordered_labels") else "without"
        raise PackError(
            f"training pack {folder} was made {state} --drop-disordered-labels; give the same flag or pack again"
        )
    if input_size is not None:
        packed = tuple(manifest["input_size"])
        if input_size[0] > packed[0] or input_size[1] > packed[1]:
            raise PackError(
                f"training pack {folder} was made for inputs up to {packed[0]}x{packed[1]}, "
                f"not {input_size[0]}x{input_size[1]}; pack again with --input {input_size[0]}x{input_size[1]}"
            )
    train = load_pack(folder, "train", manifest)
    val = load_pack(folder, "val", manifest)
    return train, val, manifest["split_record"]
