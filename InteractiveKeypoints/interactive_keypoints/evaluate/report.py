"""Summaries of an evaluation run: MRE curves, NoC / FR, SDR, the propagation gain, the
clinical measurements, and the comparisons between users and model variants."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..data.common import KeypointSample
from ..errors import UsageError
from ..measurements import Measurement, measure
from ..metrics import cobb_smape, mre_sd, noc_summary, sdr
from ..propagation import gain_clicks, masked_mre, near_rule, near_set_by_clicks, propagation_gain
from .options import EvaluateOptions
from .simulate import RevisionCurves

Samples = Sequence[KeypointSample]


def summarise(
    results: Sequence[RevisionCurves],
    samples: Samples,
    options: EvaluateOptions,
    landmark_names: list[str] | None = None,
) -> dict[str, Any]:
    """metrics.json content. ``options.unit`` says whether ``options.targets`` are px or mm.

    NoC / FR count at most ``options.noc_budget`` clicks: the simulated user's first clicks
    do not depend on how many follow, so a 10-click run also gives NoC5.
    ``landmark_names`` pick the near-landmark rule of the propagation gain (default: generic
    names, i.e. the nearest landmarks).
    """
    spacing = np.array([s.spacing for s in samples])  # (N, 2)
    spacing_known = all(s.spacing_known for s in samples)
    model_px = np.stack([r.model for r in results])
    manual_px = np.stack([r.manual for r in results])
    metrics: dict[str, Any] = {
        "images": len(results),
        "max_clicks": options.max_clicks,
        "noc_clicks": options.noc_budget,
        "target_unit": options.unit,
        "MRE_by_clicks": {"model": model_px.mean(0).tolist(), "manual": manual_px.mean(0).tolist()},
    }
    curves, manual_curves = model_px, manual_px
    if spacing_known:
        if not np.allclose(spacing[:, 0], spacing[:, 1]):
            raise ValueError("mm metrics need square pixels; this dataset has different x and y spacing")
        model_mm, manual_mm = add_mm_metrics(metrics, results, spacing[:, 0], options.max_clicks)
        if options.unit == "mm":
            curves, manual_curves = model_mm, manual_mm
    elif options.unit == "mm":
        raise UsageError("--unit mm: targets in mm need a dataset with a known pixel spacing")
    summary = noc_summary(curves, options.targets, options.noc_budget)
    metrics["NoC"] = {key: v["NoC"] for key, v in summary.items()}
    metrics["FR"] = {key: v["FR"] for key, v in summary.items()}
    metrics["NoC_manual"] = {
        key: v["NoC"] for key, v in noc_summary(manual_curves, options.targets, options.noc_budget).items()
    }
    metrics["propagation_gain"] = summarise_propagation(
        results, samples, options.max_clicks, landmark_names, spacing[:, 0] if spacing_known else None
    )
    return metrics


def add_mm_metrics(
    metrics: dict[str, Any], results: Sequence[RevisionCurves], mm_per_px: np.ndarray, max_clicks: int
) -> tuple[np.ndarray, np.ndarray]:
    """The mm curves, MRE +- SD and SDR into ``metrics``; returns the (N, C + 1) model and
    manual MRE in mm."""
    errors_mm = np.stack([r.errors_by_clicks for r in results]) * mm_per_px[:, None, None]  # (N, C+1, K)
    model_mm = errors_mm.mean(-1)
    manual_mm = np.stack([r.manual for r in results]) * mm_per_px[:, None]
    metrics["MRE_by_clicks_mm"] = {"model": model_mm.mean(0).tolist(), "manual": manual_mm.mean(0).tolist()}
    mean0, sd0 = mre_sd(errors_mm[:, 0])
    metrics["MRE_mm"] = {"mean": mean0, "sd": sd0}
    metrics["SDR"] = {f"{t:g}mm": v for t, v in sdr(errors_mm[:, 0]).items()}
    metrics["SDR_by_clicks"] = [{f"{t:g}mm": v for t, v in sdr(errors_mm[:, c]).items()} for c in range(max_clicks + 1)]
    return model_mm, manual_mm


def summarise_propagation(
    results: Sequence[RevisionCurves],
    samples: Samples,
    max_clicks: int,
    landmark_names: list[str] | None,
    mm_per_px: np.ndarray | None = None,
) -> dict[str, Any]:
    """metrics.json's ``propagation_gain``: manual minus model MRE after 1, 2, 3, 5 clicks.

    ``all``: over all landmarks (the MRE_by_clicks curves). ``near``: over the landmarks
    near the model run's clicks so far, clicked ones excluded (see
    :func:`.propagation.near_set_by_clicks`), both runs scored on that same set. Each has
    ``model_px``, ``manual_px``, ``px`` (the gain), ``percent`` (of the manual MRE), and the
    same in mm when ``mm_per_px`` (N,) is given; ``near`` also has ``landmarks``, the mean
    size of the near set.
    """
    num_keypoints = len(samples[0].points)
    names = list(landmark_names) if landmark_names is not None else [f"L{k + 1}" for k in range(num_keypoints)]
    clicks = gain_clicks(max_clicks)
    model_errors = np.stack([r.errors_by_clicks for r in results])  # (N, C+1, K)
    manual_errors = np.stack([r.manual_errors_by_clicks for r in results])
    near = np.stack([near_set_by_clicks(r.model_clicks, names, s.points) for r, s in zip(results, samples)])
    curves = {
        "all": (model_errors.mean(-1), manual_errors.mean(-1)),
        "near": (masked_mre(model_errors, near), masked_mre(manual_errors, near)),
    }
    out: dict[str, Any] = {
        "clicks": clicks,
        "near_rule": near_rule(names),
        "definition": "manual minus model revision MRE after each click count; percent of the manual MRE",
    }
    for group, (model_px, manual_px) in curves.items():
        px = propagation_gain(model_px, manual_px, clicks)
        entry = {"model_px": px["model"], "manual_px": px["manual"], "px": px["gain"], "percent": px["percent"]}
        if mm_per_px is not None:
            mm = propagation_gain(model_px * mm_per_px[:, None], manual_px * mm_per_px[:, None], clicks)
            entry.update(model_mm=mm["model"], manual_mm=mm["manual"], mm=mm["gain"])
        if group == "near":
            entry["landmarks"] = [float(near[:, c].sum(-1).mean()) for c in clicks]
        out[group] = entry
    return out


def summarise_users(
    results_by_user: dict[str, list[RevisionCurves]],
    samples: Samples,
    options: EvaluateOptions,
    landmark_names: list[str] | None = None,
) -> dict[str, Any]:
    """metrics.json ``users``: per simulated user its MRE by clicks (px, and mm where known),
    NoC / FR (model and manual revision); for the guided user also the share of its clicks
    that were confirmations, by click."""
    keys = ("MRE_by_clicks", "MRE_by_clicks_mm", "NoC", "FR", "NoC_manual")
    out: dict[str, Any] = {}
    for user, results in results_by_user.items():
        metrics = summarise(results, samples, options, landmark_names)
        out[user] = {key: metrics[key] for key in keys if key in metrics}
        confirmed = [r.confirmed for r in results if r.confirmed is not None]  # the guided user's
        if confirmed:
            out[user]["confirmed_percent_by_click"] = (100.0 * np.stack(confirmed).mean(0)).tolist()
    return out


def variant_comparison(
    results_by_variant: dict[str, list[RevisionCurves]],
    samples: Samples,
    options: EvaluateOptions,
    landmark_names: list[str] | None,
    measurement_set: str | None,
) -> dict[str, Any]:
    """One user's MRE, SDR, NoC / FR (and measurement) curves for each variant of the model
    (e.g. ``with`` and ``without`` its local stage): metrics.json ``local_stage``."""
    comparison = {}
    for variant, results in results_by_variant.items():
        summary = summarise(results, samples, options, landmark_names)
        entry = {options.curve_key: summary[options.curve_key]["model"], "NoC": summary["NoC"], "FR": summary["FR"]}
        if "SDR_by_clicks" in summary:
            entry["SDR_by_clicks"] = summary["SDR_by_clicks"]
        if measurement_set:
            entry["measurements"] = summarise_measurements(results, samples, measurement_set)
        comparison[variant] = entry
    return comparison


def sample_measurements(points: np.ndarray, sample: KeypointSample, measurement_set: str) -> list[Measurement]:
    """The measurements of one image's points, with the sample's spacing and height."""
    spacing = sample.spacing if sample.spacing_known else None
    height = sample.image_size[0] if sample.image_size else None
    return measure(points, measurement_set, spacing=spacing, image_height=height)


def measurements_by_clicks(result: RevisionCurves, sample: KeypointSample, measurement_set: str) -> list:
    """One image's measurements after 0..C clicks (model revision)."""
    return [sample_measurements(points, sample, measurement_set) for points in result.points_by_clicks]


def summarise_measurements(results: Sequence[RevisionCurves], samples: Samples, measurement_set: str) -> dict:
    """Clinical measurements of the model's points after 0..C clicks against those of the
    ground-truth points. Cobb angles: the challenge SMAPE (%) and the mean absolute error
    (deg) per angle; ceph analysis: per measurement the percentage of images whose class
    matches the ground truth's class (and the mean absolute error of its value)."""
    truth = [sample_measurements(s.points, s, measurement_set) for s in samples]
    names = [m.name for m in truth[0]]
    true_values = np.array([[m.value for m in t] for t in truth])  # (N, M)
    clicks = len(results[0].points_by_clicks)
    predicted = [measurements_by_clicks(r, s, measurement_set) for r, s in zip(results, samples)]
    values = np.array(
        [[[m.value for m in at_click] for at_click in per_image] for per_image in predicted]
    )  # (N, C+1, M)
    abs_error = np.abs(values - true_values[:, None, :])
    report: dict[str, Any] = {
        "measurement_set": measurement_set,
        "names": names,
        "units": [m.unit for m in truth[0]],
        "MAE_by_clicks": {name: abs_error[:, :, j].mean(0).tolist() for j, name in enumerate(names)},
    }
    if measurement_set == "aasce-cobb":
        report["SMAPE_by_clicks"] = [cobb_smape(values[:, c], true_values) for c in range(clicks)]
    else:
        true_classes = np.array([[m.category for m in t] for t in truth])
        classes = np.array([[[m.category for m in at_click] for at_click in per_image] for per_image in predicted])
        correct = classes == true_classes[:, None, :]
        report["accuracy_by_clicks"] = {
            name: (100.0 * correct[:, :, j].mean(0)).tolist() for j, name in enumerate(names)
        }
        report["mean_accuracy_by_clicks"] = (100.0 * correct.mean(axis=(0, 2))).tolist()
    return report
