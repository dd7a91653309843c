"""Two evaluate outputs of the same images, compared image by image.

    interactive-keypoints compare RUN_A RUN_B [--resamples 5000] [--seed 0] [--json OUT]

#25's no-harm rule asks whether a new configuration is worse than the shipped one at any
click count; 0.1 px apart on 128 images is not an answer by itself. Both runs wrote
``per_image.csv`` (and, with a Cobb measurement set, ``measurements_per_image.csv``) for the
same images; the difference B - A of each image's MRE (px) and Cobb SMAPE (%) after every
click count is averaged, with a percentile interval from a paired bootstrap over images (the
same resampled images for every click count). An interval that excludes 0 is a difference
the images agree on; one that includes it is within what another sample of images could
reverse.
"""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import UsageError
from ..metrics import cobb_smape_per_image

PER_IMAGE = "per_image.csv"
MEASUREMENTS = "measurements_per_image.csv"


@dataclass(frozen=True)
class PairedDifference:
    """B - A by click count: the mean over images and its bootstrap interval."""

    quantity: str
    a: list[float]  # A's mean by click count
    b: list[float]
    mean: list[float]
    low: list[float]
    high: list[float]
    level: float

    def worse_at(self) -> list[int]:
        """Click counts where B is worse (larger) than A beyond the interval."""
        return [c for c, low in enumerate(self.low) if low > 0]

    def better_at(self) -> list[int]:
        return [c for c, high in enumerate(self.high) if high < 0]


def read_per_image_mre(folder: Path) -> tuple[list[str], np.ndarray]:
    """Image ids and the model revision's MRE (px) after 0..C clicks, (N, C + 1)."""
    rows = _read_rows(folder / PER_IMAGE)
    columns = sorted((k for k in rows[0] if k.startswith("model_mre_px_")), key=lambda k: int(k.rsplit("_", 1)[1]))
    return [r["id"] for r in rows], np.array([[float(r[k]) for k in columns] for r in rows])


def read_cobb_smape(folder: Path) -> tuple[list[str], np.ndarray] | None:
    """Image ids and each image's Cobb SMAPE (%) after 0..C clicks, (N, C + 1); None where the
    run measured no Cobb angles."""
    path = folder / MEASUREMENTS
    if not path.is_file():
        return None
    rows = [r for r in _read_rows(path) if r["measurement"].startswith("Cobb ")]
    if not rows:
        return None
    ids = list(dict.fromkeys(r["id"] for r in rows))
    angles = len(rows) // len(ids)
    clicks = sorted((k for k in rows[0] if k.startswith("clicks_")), key=lambda k: int(k.split("_")[1]))
    truth = np.array([float(r["truth"]) for r in rows]).reshape(len(ids), angles)
    predicted = (np.array([float(r[key]) for r in rows]).reshape(len(ids), angles) for key in clicks)
    return ids, np.stack([cobb_smape_per_image(p, truth) for p in predicted], axis=1)


def paired_difference(
    quantity: str, a: np.ndarray, b: np.ndarray, resamples: int = 5000, seed: int = 0, level: float = 0.95
) -> PairedDifference:
    """B - A of two (N, C) tables of the same images, with a paired bootstrap interval."""
    if a.shape != b.shape:
        raise UsageError(f"{quantity}: the runs have tables of shape {a.shape} and {b.shape}")
    difference = b - a
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(difference), size=(resamples, len(difference)))
    means = difference[draws].mean(axis=1)  # (resamples, C)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means, [tail, 100 - tail], axis=0)
    return PairedDifference(
        quantity,
        a.mean(axis=0).tolist(),
        b.mean(axis=0).tolist(),
        difference.mean(axis=0).tolist(),
        low.tolist(),
        high.tolist(),
        level,
    )


def compare_runs(run_a: Path, run_b: Path, resamples: int = 5000, seed: int = 0) -> list[PairedDifference]:
    """MRE (and Cobb SMAPE where both runs have it) of B against A, image by image."""
    ids_a, mre_a = read_per_image_mre(run_a)
    ids_b, mre_b = read_per_image_mre(run_b)
    order_b = _aligned(ids_a, ids_b, run_a, run_b)
    results = [paired_difference("MRE px", mre_a, mre_b[order_b], resamples, seed)]
    cobb_a, cobb_b = read_cobb_smape(run_a), read_cobb_smape(run_b)
    if cobb_a is not None and cobb_b is not None:
        order = _aligned(cobb_a[0], cobb_b[0], run_a, run_b)
        results.append(paired_difference("Cobb SMAPE %", cobb_a[1], cobb_b[1][order], resamples, seed))
    return results


def _aligned(ids_a: list[str], ids_b: list[str], run_a: Path, run_b: Path) -> list[int]:
    """B's row of each of A's images: the runs must hold the same images, in any order."""
    if sorted(ids_a) != sorted(ids_b):
        only_a = sorted(set(ids_a) - set(ids_b))
        only_b = sorted(set(ids_b) - set(ids_a))
        raise UsageError(
            f"{run_a} and {run_b} evaluated different images ({len(only_a)} only in the first, "
            f"{len(only_b)} only in the second; e.g. {(only_a + only_b)[:1]}): compare runs of the same split"
        )
    row = {image: i for i, image in enumerate(ids_b)}
    return [row[image] for image in ids_a]


def _read_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise UsageError(f"{path} not found: give the --out folders of two evaluate runs")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise UsageError(f"{path} has no images")
    return rows


def format_difference(result: PairedDifference) -> str:
    percent = round(100 * result.level)
    lines = [f"{result.quantity}, B - A by clicks (mean [{percent} % paired bootstrap interval]):"]
    for c, (a, b, mean, low, high) in enumerate(zip(result.a, result.b, result.mean, result.low, result.high)):
        mark = " B worse" if low > 0 else " B better" if high < 0 else ""
        lines.append(f"  {c:2d}: A {a:7.2f}  B {b:7.2f}  {mean:+7.2f} [{low:+.2f}, {high:+.2f}]{mark}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_a", type=Path, help="an evaluate --out folder (the reference, e.g. the shipped model)")
    parser.add_argument("run_b", type=Path, help="an evaluate --out folder of the same images (the candidate)")
    parser.add_argument("--resamples", type=int, default=5000, help="bootstrap resamples of the images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the differences to this file")


def run(args: argparse.Namespace) -> int:
    if args.resamples < 1:
        raise UsageError(f"--resamples must be at least 1, got {args.resamples}")
    results = compare_runs(args.run_a, args.run_b, args.resamples, args.seed)
    print("\n".join(format_difference(r) for r in results))
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1) + "\n")
    return 0
