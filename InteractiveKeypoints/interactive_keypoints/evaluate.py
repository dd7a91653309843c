"""The paper's evaluation protocol: a simulated user corrects the worst point, one per click.

    interactive-keypoints evaluate --model DIR --dataset aasce --data-root ROOT --split val \
        --max-clicks 10 --targets 20 30 40 50 --out OUT

For every image: MRE after 0..max clicks for *model revision* (the model re-runs after
each click) and *manual revision* (only the clicked point moves). MRE is in original
pixels, and in mm where the dataset has a pixel spacing. Writes OUT/metrics.json,
OUT/per_image.csv and two plots (MRE vs clicks, paper Fig. 4; NoC vs target, Fig. 6), and
the propagation gain (manual minus model MRE after 1, 2, 3, 5 clicks, on all landmarks and
on those near the clicked ones; see :mod:`.propagation`) in metrics.json,
OUT/propagation_gain.csv and OUT/propagation_gain.png.
Where the model names a measurement set (model.json ``measurements``), also the clinical
measurements after each click against those of the ground truth: OUT/measurements.json
(Cobb SMAPE and MAE per angle, or ceph class accuracy per measurement),
OUT/measurements_per_image.csv and OUT/measurements_vs_clicks.png.

``--user guided``: instead of the oracle, a user who has no oracle looks at the point the
model ranks first for review (:func:`.review.rank_for_review`, score ``--review-score``),
corrects it if its error is above ``--guided-tolerance`` and otherwise confirms it (a
click either way). ``--user oracle guided`` runs both and compares them in
metrics.json ``users`` and OUT/users_mre_vs_clicks.png; the first user listed gives the
classic outputs. ``--click-noise SD``: the user's clicks land with Gaussian error of SD
(in ``--unit``), seeded by ``--click-seed``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .clicks import SimulatedUser
from .data import add_dataset_arguments, dataset_options, disordered_label_options, get_dataset
from .data.common import KeypointSample, load_grey_image
from .errors import UsageError
from .imaging import Radiograph
from .inference import Predictor
from .measurements import measure
from .metrics import cobb_smape, mre, mre_sd, noc, noc_summary, radial_errors, sdr
from .model_io import KeypointModel, load_model
from .propagation import gain_clicks, masked_mre, near_rule, near_set_by_clicks, propagation_gain
from .review import SCORES, available_score, load_selection, rank_for_review
from .session import KeypointSession

USERS = ("oracle", "guided")


@dataclass
class RevisionCurves:
    """MRE (original px) after 0..C clicks for one image, and the radial errors behind it."""

    model: np.ndarray  # (C + 1,)
    manual: np.ndarray  # (C + 1,)
    errors_by_clicks: np.ndarray  # (C + 1, K) model-revision radial errors in px
    manual_errors_by_clicks: np.ndarray  # (C + 1, K) manual-revision radial errors in px
    model_clicks: np.ndarray  # (C,) landmark the model run's user clicked, in click order
    points_by_clicks: np.ndarray | None = None  # (C + 1, K, 2) model-revision points, for measurements
    confirmed: np.ndarray | None = None  # (C,) guided user: True where the click confirmed rather than corrected


def noisy_clicks(truth: np.ndarray, sd_px: float, image_size, seed) -> Callable[[int, np.ndarray], np.ndarray]:
    """Where a user with click noise ``sd_px`` puts (landmark, true position): see
    :meth:`.clicks.SimulatedUser.with_click_noise`."""
    return SimulatedUser.with_click_noise(len(truth), sd_px, image_size, seed).place


def next_for_review(prediction) -> int:
    """The guided user's choice: the model's first-ranked unfixed point. It sees only the
    prediction, never the truth."""
    ranking = rank_for_review(prediction)
    if not ranking:
        raise ValueError("every keypoint is already fixed: there is no keypoint left to review")
    return ranking[0]


def simulate_guided(
    session: KeypointSession,
    truth: np.ndarray,
    max_clicks: int,
    tolerance_px: float,
    user: SimulatedUser | None = None,
    choose=next_for_review,
) -> RevisionCurves:
    """A user without an oracle, ``max_clicks`` times: take the point ``choose`` picks from
    the prediction alone; if its error is above ``tolerance_px`` put it at its true position
    (where ``user`` places it: its click noise), else confirm it where it is. Ground truth
    only decides correct vs confirm. Manual revision: the same user going down the first
    prediction's ranking with no re-run of the model."""
    user = dataclasses.replace(user or SimulatedUser(), tolerance_px=tolerance_px)
    first = session.predict()
    start = first.points
    manual_points = start.copy()
    manual_order = rank_for_review(first)
    errors, manual_errors = [radial_errors(start, truth)], [radial_errors(start, truth)]
    points, clicks, confirmed = [start], [], []
    prediction = first
    for step in range(max_clicks):
        k = choose(prediction)
        clicks.append(k)
        wrong = user.corrects(prediction.points[k], truth[k])
        confirmed.append(not wrong)
        prediction = session.refine({k: user.place(k, truth[k])}) if wrong else session.confirm(k)
        errors.append(radial_errors(prediction.points, truth))
        points.append(prediction.points)

        j = manual_order[step]
        if user.corrects(manual_points[j], truth[j]):
            manual_points[j] = user.place(j, truth[j])
        manual_errors.append(radial_errors(manual_points, truth))
    errors, manual_errors = np.array(errors), np.array(manual_errors)
    return RevisionCurves(
        errors.mean(-1),
        manual_errors.mean(-1),
        errors,
        manual_errors,
        np.array(clicks, dtype=int),
        np.array(points),
        np.array(confirmed, dtype=bool),
    )


def simulate_revision(
    session: KeypointSession, truth: np.ndarray, max_clicks: int, user: SimulatedUser | None = None
) -> RevisionCurves:
    """``user`` (default: exact clicks) clicks the worst not-yet-clicked point and puts it
    at its true position, ``max_clicks`` times; the model run through ``session``, the
    manual run without re-running the model."""
    user = SimulatedUser() if user is None else user
    start = session.predict().points
    model_points, manual_points = start.copy(), start.copy()
    model_clicked = np.zeros(len(truth), bool)
    manual_clicked = np.zeros(len(truth), bool)
    errors, manual_errors = [radial_errors(start, truth)], [radial_errors(start, truth)]
    points = [start]
    model_curve, manual_curve = [mre(start, truth)], [mre(start, truth)]
    model_clicks = []
    for _ in range(max_clicks):
        k = user_click(user, model_points, truth, model_clicked)
        model_clicks.append(k)
        model_points = session.refine({k: user.place(k, truth[k])}).points
        errors.append(radial_errors(model_points, truth))
        points.append(model_points)
        model_curve.append(mre(model_points, truth))

        j = user_click(user, manual_points, truth, manual_clicked)
        manual_points[j] = user.place(j, truth[j])
        manual_errors.append(radial_errors(manual_points, truth))
        manual_curve.append(mre(manual_points, truth))
    return RevisionCurves(
        np.array(model_curve),
        np.array(manual_curve),
        np.array(errors),
        np.array(manual_errors),
        np.array(model_clicks, dtype=int),
        np.array(points),
    )


def user_click(user: SimulatedUser, points: np.ndarray, truth: np.ndarray, clicked: np.ndarray) -> int:
    """One image's click, (K, 2), (K, 2), (K,) marked in place: the user's batch of one."""
    k = int(user.click(points[None], truth[None], clicked[None])[0])
    if k < 0:
        raise ValueError("every keypoint is already clicked: there is no keypoint left to click")
    return k


def sample_radiograph(sample: KeypointSample) -> Radiograph:
    return Radiograph(
        load_grey_image(sample), sample.spacing, sample.spacing_known, path=str(sample.image_path or sample.id)
    )


def evaluate_split(
    model: KeypointModel,
    samples,
    max_clicks: int,
    device=None,
    prev_mode="fixed",
    progress=True,
    user: str = "oracle",
    review_score: str | None = None,
    tolerance: float = 0.0,
    click_noise: float = 0.0,
    click_seed: int = 0,
    unit: str = "px",
    local_stage: bool = True,
):
    """RevisionCurves for every sample, sharing one inference copy of the network.

    ``user``: ``oracle`` (the protocol) or ``guided`` (see :func:`simulate_guided`, with
    ``tolerance`` and ``review_score``). ``click_noise``: SD of the clicks' error;
    ``tolerance`` and ``click_noise`` are in ``unit`` (mm: divided by each image's spacing).
    Image n's click noise is seeded by (``click_seed``, n). The correction field is the model
    config's (``run`` replaces the config to override it); ``local_stage=False`` leaves the
    model's local stage out.
    """
    if user not in USERS:
        raise ValueError(f"unknown user {user!r}; expected one of {USERS}")
    predictor = Predictor(model, device)
    results = []
    for n, sample in enumerate(tqdm(samples, desc=f"evaluate ({user})", disable=not progress)):
        session = KeypointSession(
            model,
            sample_radiograph(sample),
            prev_mode=prev_mode,
            predictor=predictor,
            review_score=review_score,
            local_stage=local_stage,
        )
        px_per_unit = 1.0 / sample.spacing[0] if unit == "mm" else 1.0
        clicker = SimulatedUser()
        if click_noise > 0:
            noise_px, size = click_noise * px_per_unit, session.radiograph.size
            clicker = SimulatedUser.with_click_noise(len(sample.points), noise_px, size, (click_seed, n))
        if user == "oracle":
            results.append(simulate_revision(session, sample.points, max_clicks, clicker))
        else:
            results.append(simulate_guided(session, sample.points, max_clicks, tolerance * px_per_unit, clicker))
    return results


def summarise(
    results,
    samples,
    max_clicks: int,
    targets,
    unit: str = "px",
    noc_clicks: int | None = None,
    landmark_names: list[str] | None = None,
) -> dict:
    """metrics.json content. ``unit`` says whether ``targets`` are px or mm.

    NoC / FR count at most ``noc_clicks`` clicks (default ``max_clicks``): the simulated
    user's first clicks do not depend on how many follow, so a 10-click run also gives NoC5.
    ``landmark_names`` pick the near-landmark rule of the propagation gain (default: generic
    names, i.e. the nearest landmarks).
    """
    noc_clicks = max_clicks if noc_clicks is None else noc_clicks
    spacing = np.array([s.spacing for s in samples])  # (N, 2)
    spacing_known = all(s.spacing_known for s in samples)
    model_px = np.stack([r.model for r in results])
    manual_px = np.stack([r.manual for r in results])
    errors_px = np.stack([r.errors_by_clicks for r in results])  # (N, C+1, K)
    metrics = {
        "images": len(results),
        "max_clicks": max_clicks,
        "noc_clicks": noc_clicks,
        "target_unit": unit,
        "MRE_by_clicks": {"model": model_px.mean(0).tolist(), "manual": manual_px.mean(0).tolist()},
    }
    curves = model_px
    if spacing_known:
        if not np.allclose(spacing[:, 0], spacing[:, 1]):
            raise ValueError("mm metrics need square pixels; this dataset has different x and y spacing")
        mm_per_px = spacing[:, 0]
        errors_mm = errors_px * mm_per_px[:, None, None]
        model_mm = errors_mm.mean(-1)
        manual_mm = manual_px * mm_per_px[:, None]
        metrics["MRE_by_clicks_mm"] = {"model": model_mm.mean(0).tolist(), "manual": manual_mm.mean(0).tolist()}
        mean0, sd0 = mre_sd(errors_mm[:, 0])
        metrics["MRE_mm"] = {"mean": mean0, "sd": sd0}
        metrics["SDR"] = {f"{t:g}mm": v for t, v in sdr(errors_mm[:, 0]).items()}
        metrics["SDR_by_clicks"] = [
            {f"{t:g}mm": v for t, v in sdr(errors_mm[:, c]).items()} for c in range(max_clicks + 1)
        ]
        if unit == "mm":
            curves = model_mm
    elif unit == "mm":
        raise UsageError("--unit mm: targets in mm need a dataset with a known pixel spacing")
    summary = noc_summary(curves, targets, noc_clicks)
    metrics["NoC"] = {key: v["NoC"] for key, v in summary.items()}
    metrics["FR"] = {key: v["FR"] for key, v in summary.items()}
    metrics["NoC_manual"] = {
        key: v["NoC"] for key, v in noc_summary(manual_mm if unit == "mm" else manual_px, targets, noc_clicks).items()
    }
    metrics["propagation_gain"] = summarise_propagation(
        results, samples, max_clicks, landmark_names, spacing[:, 0] if spacing_known else None
    )
    return metrics


def summarise_propagation(
    results, samples, max_clicks: int, landmark_names: list[str] | None, mm_per_px: np.ndarray | None = None
) -> dict:
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
    out = {
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


def write_propagation_csv(path: Path, gain: dict) -> None:
    """One row per click count; for all, then near landmarks: model and manual MRE, the gain
    in px (and mm), its percent, and the near set's mean size."""
    order = ("model_px", "manual_px", "px", "percent", "model_mm", "manual_mm", "mm", "landmarks")
    keys = {group: [key for key in order if key in gain[group]] for group in ("all", "near")}
    column = {"px": "gain_px", "mm": "gain_mm", "percent": "gain_percent"}
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["clicks"] + [f"{group}_{column.get(key, key)}" for group in keys for key in keys[group]])
        for i, c in enumerate(gain["clicks"]):
            writer.writerow([c] + [f"{gain[group][key][i]:.4f}" for group in keys for key in keys[group]])


def write_propagation_plot(path: Path, gain: dict, unit: str) -> None:
    """Bars of the gain (in ``unit``) after each click count, all vs near landmarks, with the percent."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clicks = np.array(gain["clicks"])
    fig, ax = plt.subplots(figsize=(5, 4))
    for offset, group, label in [(-0.2, "all", "all landmarks"), (0.2, "near", "near the clicked ones")]:
        values = np.array(gain[group][unit], dtype=float)
        bars = ax.bar(np.arange(len(clicks)) + offset, values, width=0.4, label=label)
        ax.bar_label(bars, labels=[f"{p:.0f}%" for p in gain[group]["percent"]], fontsize=7)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(np.arange(len(clicks)), [str(c) for c in clicks])
    ax.set(xlabel="number of clicks", ylabel=f"manual - model MRE ({unit})", title="propagation gain")
    ax.grid(alpha=0.3, axis="y")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_per_image_csv(path: Path, results, samples) -> None:
    clicks = len(results[0].model)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["id"] + [f"model_mre_px_{c}" for c in range(clicks)] + [f"manual_mre_px_{c}" for c in range(clicks)]
        )
        for sample, r in zip(samples, results):
            writer.writerow([sample.id] + [f"{v:.4f}" for v in r.model] + [f"{v:.4f}" for v in r.manual])


def write_plots(out: Path, results, max_clicks: int, unit: str, samples, noc_clicks: int | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model_px = np.stack([r.model for r in results])
    manual_px = np.stack([r.manual for r in results])
    if unit == "mm":
        scale = np.array([np.mean(s.spacing) for s in samples])[:, None]
        model_px, manual_px = model_px * scale, manual_px * scale
    clicks = np.arange(max_clicks + 1)
    noc_clicks = max_clicks if noc_clicks is None else noc_clicks
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(clicks, model_px.mean(0), "o-", label="model revision")
    ax.plot(clicks, manual_px.mean(0), "s--", label="manual revision")
    ax.set(xlabel="number of clicks", ylabel=f"MRE ({unit})", title="MRE vs clicks")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "mre_vs_clicks.png", dpi=120)
    plt.close(fig)

    top = float(np.ceil(model_px[:, 0].max()))
    targets = np.linspace(top / 60, top, 60)
    fig, ax = plt.subplots(figsize=(5, 4))
    for curves, label in [(model_px, "model revision"), (manual_px, "manual revision")]:
        ax.plot(targets, [noc(curves, t, noc_clicks)[0] for t in targets], label=label)
    ax.set(xlabel=f"target MRE ({unit})", ylabel=f"NoC{noc_clicks}", title="clicks needed vs target MRE")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "noc_vs_target.png", dpi=120)
    plt.close(fig)


def summarise_users(
    results_by_user: dict, samples, max_clicks: int, targets, unit: str, noc_clicks: int | None, landmark_names=None
) -> dict:
    """metrics.json ``users``: per simulated user its MRE by clicks (px, and mm where known),
    NoC / FR (model and manual revision); for the guided user also the share of its clicks
    that were confirmations, by click."""
    keys = ("MRE_by_clicks", "MRE_by_clicks_mm", "NoC", "FR", "NoC_manual")
    out = {}
    for user, results in results_by_user.items():
        metrics = summarise(results, samples, max_clicks, targets, unit, noc_clicks, landmark_names)
        out[user] = {key: metrics[key] for key in keys if key in metrics}
        if results[0].confirmed is not None:
            confirmed = np.stack([r.confirmed for r in results])
            out[user]["confirmed_percent_by_click"] = (100.0 * confirmed.mean(0)).tolist()
    return out


def write_users_plot(path: Path, users: dict, unit: str) -> None:
    """Model-revision MRE by clicks of each simulated user (oracle vs guided)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = "MRE_by_clicks_mm" if unit == "mm" else "MRE_by_clicks"
    fig, ax = plt.subplots(figsize=(5, 4))
    for (user, entry), style in zip(users.items(), ("o-", "s-", "^-")):
        curve = entry[key]["model"]
        ax.plot(np.arange(len(curve)), curve, style, label=f"{user} user, model revision")
        ax.plot(np.arange(len(curve)), entry[key]["manual"], style[0] + ":", alpha=0.6, label=f"{user} user, manual")
    ax.set(
        xlabel="number of clicks (corrections + confirmations)",
        ylabel=f"MRE ({unit})",
        title="MRE vs clicks: oracle vs guided user",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def sample_measurements(points, sample: KeypointSample, measurement_set: str):
    """The measurements of one image's points, with the sample's spacing and height."""
    spacing = sample.spacing if sample.spacing_known else None
    height = sample.image_size[0] if sample.image_size else None
    return measure(points, measurement_set, spacing=spacing, image_height=height)


def summarise_measurements(results, samples, measurement_set: str) -> dict:
    """Clinical measurements of the model's points after 0..C clicks against those of the
    ground-truth points. Cobb angles: the challenge SMAPE (%) and the mean absolute error
    (deg) per angle; ceph analysis: per measurement the percentage of images whose class
    matches the ground truth's class (and the mean absolute error of its value)."""
    truth = [sample_measurements(s.points, s, measurement_set) for s in samples]
    names = [m.name for m in truth[0]]
    true_values = np.array([[m.value for m in t] for t in truth])  # (N, M)
    clicks = len(results[0].points_by_clicks)
    predicted = [[sample_measurements(r.points_by_clicks[c], s, measurement_set) for c in range(clicks)]
                 for r, s in zip(results, samples)]  # fmt: skip
    values = np.array(
        [[[m.value for m in at_click] for at_click in per_image] for per_image in predicted]
    )  # (N, C+1, M)
    abs_error = np.abs(values - true_values[:, None, :])
    report = {
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


def write_measurement_outputs(out: Path, report: dict, results, samples) -> None:
    """measurements_per_image.csv (values after every click, ground truth first) and a plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, set_name = report["names"], report["measurement_set"]
    clicks = len(results[0].points_by_clicks)
    with open(out / "measurements_per_image.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "measurement", "truth"] + [f"clicks_{c}" for c in range(clicks)])
        for r, s in zip(results, samples):
            truth = sample_measurements(s.points, s, set_name)
            by_click = [sample_measurements(r.points_by_clicks[c], s, set_name) for c in range(clicks)]
            for j, name in enumerate(names):
                writer.writerow([s.id, name, f"{truth[j].value:.4f}"] + [f"{m[j].value:.4f}" for m in by_click])

    x = np.arange(clicks)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    if set_name == "aasce-cobb":
        axes[0].plot(x, report["SMAPE_by_clicks"], "o-")
        axes[0].set(xlabel="number of clicks", ylabel="SMAPE (%)", title="Cobb angle SMAPE vs clicks")
        for name in names:
            axes[1].plot(x, report["MAE_by_clicks"][name], "o-", label=name)
        axes[1].set(xlabel="number of clicks", ylabel="mean absolute error (deg)", title="Cobb angle error vs clicks")
    else:
        for name in names:
            axes[0].plot(x, report["accuracy_by_clicks"][name], "o-", label=name)
        axes[0].set(xlabel="number of clicks", ylabel="classification accuracy (%)", title="ceph classes vs clicks")
        axes[0].legend(fontsize=7)
        for name, unit in zip(names, report["units"]):
            if unit == "deg":
                axes[1].plot(x, report["MAE_by_clicks"][name], "o-", label=name)
        axes[1].set(xlabel="number of clicks", ylabel="mean absolute error (deg)", title="angle error vs clicks")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.set_xticks(x)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "measurements_vs_clicks.png", dpi=120)
    plt.close(fig)


def print_measurement_summary(report: dict) -> None:
    if report["measurement_set"] == "aasce-cobb":
        print("Cobb SMAPE by clicks (%): " + ", ".join(f"{v:.2f}" for v in report["SMAPE_by_clicks"]))
    else:
        print("ceph class accuracy by clicks (%, mean of 8): "
              + ", ".join(f"{v:.1f}" for v in report["mean_accuracy_by_clicks"]))  # fmt: skip
    for name, curve in report["MAE_by_clicks"].items():
        print(f"  {name} MAE by clicks: " + ", ".join(f"{v:.2f}" for v in curve)
              + ("" if "accuracy_by_clicks" not in report else
                 "; accuracy %: " + ", ".join(f"{v:.1f}" for v in report["accuracy_by_clicks"][name])))  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="model folder")
    # 16 phantoms: the first 16 of the 64 validation images train gives a phantom model (quick)
    add_dataset_arguments(parser, phantom_images=16)
    parser.add_argument("--split", default="val")
    parser.add_argument("--max-clicks", type=int, default=10, help="clicks per image (MRE curve 0..N)")
    parser.add_argument(
        "--noc-clicks",
        type=int,
        default=None,
        help="click budget of NoC / FR (default: --max-clicks; the ceph protocol uses 5)",
    )
    parser.add_argument("--targets", type=float, nargs="+", default=[20, 30, 40, 50])
    parser.add_argument("--unit", choices=["px", "mm"], default="px", help="unit of --targets")
    parser.add_argument(
        "--prev-mode",
        choices=["fixed", "all"],
        default="fixed",
        help="previous prediction in fixed channels only (paper) or all channels",
    )
    parser.add_argument(
        "--correction-length",
        type=float,
        default=None,
        help="correction field length, fraction of the landmarks' extent (default: the model's; "
        "0 = the network alone moves the points, the paper's rule)",
    )
    parser.add_argument(
        "--correction-noise",
        type=float,
        default=None,
        help="correction field noise, relative to the kernel's variance (default: the model's)",
    )
    parser.add_argument(
        "--local-stage",
        choices=["on", "off", "both"],
        default="on",
        help="the model's full-resolution local stage (where its folder has one): on, off, or both "
        "(the outputs are with it; metrics.json 'local_stage' has both curves)",
    )
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    parser.add_argument(
        "--sample",
        type=int,
        default=None,
        help="evaluate N images drawn at random from the split (seeded by --sample-seed; metrics.json records the ids)",
    )
    parser.add_argument("--sample-seed", type=int, default=0, help="seed of --sample")
    parser.add_argument(
        "--user",
        nargs="+",
        choices=USERS,
        default=["oracle"],
        help="simulated user(s): oracle clicks the worst point (the protocol); guided checks the "
        "point the model ranks first and corrects or confirms it. Several: compared in "
        "metrics.json 'users'; the first gives the other outputs",
    )
    parser.add_argument(
        "--review-score",
        choices=SCORES,
        default=None,
        help="the guided user's ranking score (default: the session's default for the model)",
    )
    parser.add_argument(
        "--guided-tolerance",
        type=float,
        default=None,
        help="the guided user corrects a point whose error is above this (in --unit; "
        "default: the smallest --targets), else confirms it",
    )
    parser.add_argument(
        "--click-noise", type=float, default=0.0, help="SD of the Gaussian error of every click, in --unit (px, or mm)"
    )
    parser.add_argument("--click-seed", type=int, default=0, help="seed of --click-noise")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's, all cores)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quiet", action="store_true")


def check_options(args) -> None:
    """The option checks that need neither the model nor the data: before loading either."""
    if args.max_clicks < 0:
        raise UsageError(f"--max-clicks {args.max_clicks} must be 0 or more")
    if args.noc_clicks is not None and not 0 <= args.noc_clicks <= args.max_clicks:
        raise UsageError(f"--noc-clicks {args.noc_clicks} must be between 0 and --max-clicks {args.max_clicks}")
    if args.click_noise < 0:
        raise UsageError(f"--click-noise {args.click_noise} must be 0 or more")
    if args.limit is not None and args.sample is not None:
        raise UsageError("--limit (the first N images) and --sample (N images at random) exclude each other")
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit {args.limit} must be at least 1")
    if args.sample is not None and args.sample < 1:
        raise UsageError(f"--sample {args.sample} must be at least 1")


def run(args) -> int:
    check_options(args)
    if args.threads:  # e.g. beside a training: oversubscribed OpenMP threads crawl
        torch.set_num_threads(args.threads)
    model = load_model(args.model)
    field_settings = {
        name: value
        for name, value in (("correction_length", args.correction_length), ("correction_noise", args.correction_noise))
        if value is not None
    }
    if field_settings:  # a sweep of the correction field's settings, without editing model.json
        model.config = dataclasses.replace(model.config, **field_settings)
        model.config.validate()
    options = dataset_options(args.dataset, args.split_seed, args.phantom_images)
    options.update(disordered_label_options(args.dataset, args.drop_disordered_labels))
    split = get_dataset(args.dataset, args.data_root, args.split, **options)
    if split.num_keypoints != model.config.num_keypoints:
        raise UsageError(f"the model has {model.config.num_keypoints} keypoints, the dataset {split.num_keypoints}")
    samples = choose_samples(
        split.samples, args.limit, args.sample, args.sample_seed, f"{args.dataset} split {args.split!r}"
    )
    if args.unit == "mm" and not all(s.spacing_known for s in samples):  # before the run, not after it
        raise UsageError(f"--unit mm: {args.dataset} has no known pixel spacing; give --unit px")
    users = list(dict.fromkeys(args.user))
    tolerance = min(args.targets) if args.guided_tolerance is None else args.guided_tolerance
    if args.local_stage != "off" and model.local_stage is None:
        print(f"note: {args.model} has no local stage; --local-stage {args.local_stage} evaluates the first stage")
    with_stage = args.local_stage != "off" and model.local_stage is not None

    def evaluate_users(local_stage: bool) -> dict:
        return {
            user: evaluate_split(
                model,
                samples,
                args.max_clicks,
                args.device,
                args.prev_mode,
                not args.quiet,
                user,
                args.review_score,
                tolerance,
                args.click_noise,
                args.click_seed,
                args.unit,
                local_stage,
            )
            for user in users
        }

    results_by_user = evaluate_users(with_stage)
    results = results_by_user[users[0]]
    metrics = summarise(
        results, samples, args.max_clicks, args.targets, args.unit, args.noc_clicks, split.landmark_names
    )
    if args.local_stage == "both" and model.local_stage is not None:
        without = evaluate_users(False)[users[0]]
        metrics["local_stage"] = local_stage_comparison(
            {"with": results, "without": without}, samples, args, split.landmark_names, model.config.measurements
        )
        print_local_stage_comparison(metrics["local_stage"], args.unit)
    metrics["local_stage_used"] = with_stage
    metrics.update(
        model=str(args.model),
        dataset=args.dataset,
        split=args.split,
        prev_mode=args.prev_mode,
        correction_length=model.config.correction_length,
        correction_noise=model.config.correction_noise,
        skipped=split.skipped,
    )
    protocol = users == ["oracle"] and args.click_noise == 0  # today's protocol: metrics.json unchanged
    if not protocol:
        metrics["users"] = summarise_users(
            results_by_user, samples, args.max_clicks, args.targets, args.unit, args.noc_clicks, split.landmark_names
        )
        metrics["user"] = users[0]
        metrics["click_noise"] = {"sd": args.click_noise, "unit": args.unit, "seed": args.click_seed}
        if "guided" in users:
            metrics["guided"] = {
                "review_score": review_score_name(model, args.review_score),
                "tolerance": tolerance,
                "unit": args.unit,
                "rule": "check the first-ranked unfixed point; correct it if its error is above "
                "the tolerance, else confirm it; each is one click",
            }
    if args.sample is not None:
        metrics["sample"] = {
            "size": args.sample,
            "seed": args.sample_seed,
            "of": len(split.samples),
            "ids": [s.id for s in samples],
        }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    write_per_image_csv(out / "per_image.csv", results, samples)
    write_plots(out, results, args.max_clicks, args.unit, samples, args.noc_clicks)
    gain = metrics["propagation_gain"]
    write_propagation_csv(out / "propagation_gain.csv", gain)
    write_propagation_plot(out / "propagation_gain.png", gain, args.unit)
    if model.config.measurements:  # the model's clinical measurements against the ground truth's
        measurement_report = summarise_measurements(results, samples, model.config.measurements)
        (out / "measurements.json").write_text(json.dumps(measurement_report, indent=1))
        write_measurement_outputs(out, measurement_report, results, samples)
    curve = metrics.get("MRE_by_clicks_mm" if args.unit == "mm" else "MRE_by_clicks")["model"]
    print(f"{len(samples)} images; MRE by clicks ({args.unit}): " + ", ".join(f"{v:.2f}" for v in curve[:6]))
    print("NoC: " + ", ".join(f"{k} {v:.2f}" for k, v in metrics["NoC"].items()))
    print("FR:  " + ", ".join(f"{k} {v:.2f}%" for k, v in metrics["FR"].items()))
    if gain["clicks"]:
        print(
            f"propagation gain, manual - model MRE ({args.unit}) after "
            + "; ".join(
                f"{c} clicks: all {gain['all'][args.unit][i]:.2f} ({gain['all']['percent'][i]:.1f}%), "
                f"near {gain['near'][args.unit][i]:.2f} ({gain['near']['percent'][i]:.1f}%)"
                for i, c in enumerate(gain["clicks"])
            )
        )
    if model.config.measurements:
        print_measurement_summary(measurement_report)
    if not protocol:
        write_users_plot(out / "users_mre_vs_clicks.png", metrics["users"], args.unit)
        key = "MRE_by_clicks_mm" if args.unit == "mm" else "MRE_by_clicks"
        print(
            f"click noise SD {args.click_noise:g} {args.unit}"
            + (
                f"; guided: score {metrics['guided']['review_score']}, tolerance {tolerance:g} {args.unit}"
                if "guided" in users
                else ""
            )
        )
        for user, entry in metrics["users"].items():
            print(
                f"{user:>6} MRE by clicks ({args.unit}): "
                + ", ".join(f"{v:.2f}" for v in entry[key]["model"])
                + " | NoC "
                + ", ".join(f"{k} {v:.2f}" for k, v in entry["NoC"].items())
                + " | FR "
                + ", ".join(f"{k} {v:.1f}%" for k, v in entry["FR"].items())
            )
    return 0


def local_stage_comparison(results_by_variant: dict, samples, args, landmark_names, measurement_set: str) -> dict:
    """The first user's MRE, SDR, NoC / FR (and measurement) curves with and without the local stage."""
    key = "MRE_by_clicks_mm" if args.unit == "mm" else "MRE_by_clicks"
    comparison = {}
    for variant, results in results_by_variant.items():
        summary = summarise(results, samples, args.max_clicks, args.targets, args.unit, args.noc_clicks, landmark_names)
        entry = {key: summary[key]["model"], "NoC": summary["NoC"], "FR": summary["FR"]}
        if "SDR_by_clicks" in summary:
            entry["SDR_by_clicks"] = summary["SDR_by_clicks"]
        if measurement_set:
            entry["measurements"] = summarise_measurements(results, samples, measurement_set)
        comparison[variant] = entry
    return comparison


def print_local_stage_comparison(comparison: dict, unit: str) -> None:
    key = "MRE_by_clicks_mm" if unit == "mm" else "MRE_by_clicks"
    for variant, entry in comparison.items():
        print(
            f"local stage {variant:>7}: MRE by clicks ({unit}) "
            + ", ".join(f"{v:.2f}" for v in entry[key][:6])
            + " | NoC "
            + ", ".join(f"{k} {v:.2f}" for k, v in entry["NoC"].items())
        )


def review_score_name(model: KeypointModel, requested: str | None) -> str:
    """The review score a session of ``model`` uses when asked for ``requested``."""
    return available_score(requested, load_selection(model.folder))


def choose_samples(samples: list, limit: int | None, sample: int | None, seed: int, what: str) -> list:
    """The images to evaluate: all, the first ``limit``, or ``sample`` drawn at random
    (seeded, kept in split order)."""
    if limit is not None and sample is not None:
        raise UsageError("--limit (the first N images) and --sample (N images at random) exclude each other")
    if not samples:
        raise UsageError(f"no images in {what}")
    if limit is not None:
        if limit < 1:
            raise UsageError(f"--limit {limit} must be at least 1")
        return samples[:limit]
    if sample is not None:
        if not 1 <= sample <= len(samples):
            raise UsageError(f"--sample {sample} must be between 1 and the {len(samples)} images of {what}")
        chosen = np.random.default_rng(seed).choice(len(samples), size=sample, replace=False)
        return [samples[i] for i in sorted(chosen)]
    return samples
