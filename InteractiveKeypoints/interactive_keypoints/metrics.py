"""The evaluation arithmetic of the paper's protocol: MRE, NoC / FR, SDR.

MRE is in original-image pixels, or mm when a spacing (sx, sy) is given; it is averaged
over all keypoints, clicked ones included.
"""

from __future__ import annotations

import numpy as np

from .conventions import radial_errors

__all__ = [
    "SDR_THRESHOLDS_MM",
    "cobb_smape",
    "cobb_smape_per_image",
    "mre",
    "mre_sd",
    "noc",
    "noc_key",
    "noc_summary",
    "radial_errors",
    "sdr",
]

SDR_THRESHOLDS_MM = (2.0, 2.5, 3.0, 4.0)


def mre(pred, truth, spacing=None):
    """Mean radial error over keypoints: a float for (K, 2), an array over leading axes otherwise."""
    errors = radial_errors(pred, truth, spacing).mean(axis=-1)
    return float(errors) if errors.ndim == 0 else errors


def noc_key(max_clicks: int, target: float) -> str:
    """'10@20' for NoC10@20 / FR10@20."""
    return f"{max_clicks}@{target:g}"


def noc(mre_by_clicks, target: float, max_clicks: int | None = None) -> tuple[float, float]:
    """(NoC, FR) for one target MRE.

    ``mre_by_clicks`` (N, C + 1): MRE of image n after c = 0..C clicks. NoC = mean over
    images of the fewest clicks c <= max_clicks with MRE <= target, counting max_clicks for
    images that never get there; FR = percent of images that never get there.
    """
    curves = np.asarray(mre_by_clicks, dtype=np.float64)
    if curves.ndim != 2 or curves.shape[0] == 0:
        raise ValueError(f"expected (N, C + 1) MRE by clicks with N >= 1, got shape {curves.shape}")
    if not np.isfinite(curves).all():
        raise ValueError("MRE by clicks contains NaN or inf")
    available = curves.shape[1] - 1
    max_clicks = available if max_clicks is None else int(max_clicks)
    if not 0 <= max_clicks <= available:
        raise ValueError(f"max_clicks {max_clicks} but the curves only cover 0..{available} clicks")
    reached = curves[:, : max_clicks + 1] <= target
    ever = reached.any(axis=1)
    clicks = np.where(ever, reached.argmax(axis=1), max_clicks)
    return float(clicks.mean()), float(100.0 * (~ever).mean())


def noc_summary(mre_by_clicks, targets, max_clicks: int | None = None) -> dict[str, dict[str, float]]:
    """{'10@20': {'NoC': ..., 'FR': ...}, ...} for every target."""
    max_clicks = np.asarray(mre_by_clicks).shape[1] - 1 if max_clicks is None else int(max_clicks)
    out = {}
    for target in targets:
        n, fr = noc(mre_by_clicks, target, max_clicks)
        out[noc_key(max_clicks, target)] = {"NoC": n, "FR": fr}
    return out


def sdr(radial_errors_mm, thresholds=SDR_THRESHOLDS_MM) -> dict[float, float]:
    """Successful detection rate: percent of all landmarks within each threshold (mm)."""
    errors = np.asarray(radial_errors_mm, dtype=np.float64).ravel()
    if errors.size == 0:
        raise ValueError("no radial errors given")
    return {float(t): float(100.0 * (errors <= t).mean()) for t in thresholds}


def mre_sd(radial_errors_mm) -> tuple[float, float]:
    """(mean, standard deviation) over all landmarks of all images, the ISBI 'MRE +- SD'."""
    errors = np.asarray(radial_errors_mm, dtype=np.float64).ravel()
    if errors.size == 0:
        raise ValueError("no radial errors given")
    return float(errors.mean()), float(errors.std())


def cobb_smape_per_image(predicted_angles, true_angles) -> np.ndarray:
    """Each image's AASCE 2019 challenge score (%): sum|a - b| / sum(a + b) * 100 over the
    three Cobb angles of an image (N, 3); an image whose angles are all 0 on both sides counts
    as 0 %."""
    pred = np.asarray(predicted_angles, dtype=np.float64)
    truth = np.asarray(true_angles, dtype=np.float64)
    if pred.shape != truth.shape or pred.ndim != 2 or pred.shape[0] == 0:
        raise ValueError(f"expected two (N, 3) arrays of Cobb angles with N >= 1, got {pred.shape} and {truth.shape}")
    total = (pred + truth).sum(axis=1)
    diff = np.abs(pred - truth).sum(axis=1)
    return 100.0 * np.divide(diff, total, out=np.zeros_like(diff), where=total > 0)


def cobb_smape(predicted_angles, true_angles) -> float:
    """The AASCE 2019 challenge score: the mean over images of :func:`cobb_smape_per_image`."""
    return float(cobb_smape_per_image(predicted_angles, true_angles).mean())
