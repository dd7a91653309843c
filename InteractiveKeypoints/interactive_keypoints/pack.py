"""``interactive-keypoints pack``: a dataset's train and val splits as a training pack
(see :mod:`interactive_keypoints.data.pack`), made once where the image files are.

    interactive-keypoints pack --dataset aasce --data-root .../boostnet_labeldata --input 512x256 --out /work/packs/aasce-512x256
    interactive-keypoints train --pack /work/packs/aasce-512x256 --input 512x256 --out runs/aasce

Heavy modules (torch, MONAI, SimpleITK) are imported inside the functions: see cli.py.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .data import add_dataset_arguments
    from .data.pack import DEFAULT_CACHE_SCALE, DEFAULT_JPEG_QUALITY
    from .recipe import parse_size

    add_dataset_arguments(parser, phantom_images=64)
    parser.add_argument("--input", type=parse_size, required=True, help="network input HxW the pack is for")
    parser.add_argument("--out", type=Path, required=True, help="new folder to write the pack to")
    parser.add_argument(
        "--cache-scale",
        type=float,
        default=DEFAULT_CACHE_SCALE,
        help="images are stored this many times the input size (room for zoom augmentation)",
    )
    parser.add_argument("--jpeg-quality", type=int, default=DEFAULT_JPEG_QUALITY)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args) -> int:
    from .data.pack import pack_dataset

    start = time.time()
    manifest = pack_dataset(
        args.dataset,
        args.data_root,
        args.input,
        args.out,
        split_seed=args.split_seed,
        phantom_images=args.phantom_images,
        drop_disordered=args.drop_disordered_labels,
        cache_scale=args.cache_scale,
        quality=args.jpeg_quality,
        progress=not args.quiet,
    )
    size = sum(p.stat().st_size for p in Path(args.out).rglob("*") if p.is_file())
    counts = ", ".join(
        f"{len(s['samples'])} {name} ({len(s['skipped'])} skipped)" for name, s in manifest["splits"].items()
    )
    print(
        f"pack {args.out}: {counts}; images {manifest['cache_size'][0]}x{manifest['cache_size'][1]}, "
        f"{size / 2**20:.1f} MiB, {time.time() - start:.0f} s"
    )
    return 0
