"""The paper's evaluation protocol: a simulated user corrects the worst point, one per click.

    interactive-keypoints evaluate --model DIR --dataset aasce --data-root ROOT --split val \
        --max-clicks 10 --targets 20 30 40 50 --out OUT

For every image: MRE after 0..max clicks for *model revision* (the model re-runs after
each click) and *manual revision* (only the clicked point moves). MRE is in original
pixels, and in mm where the dataset has a pixel spacing. Writes OUT/metrics.json,
OUT/per_image.csv and two plots (MRE vs clicks, paper Fig. 4; NoC vs target, Fig. 6).
"""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .clicks import worst_keypoint
from .data import DATASETS, dataset_options, disordered_label_options, get_dataset
from .data.common import KeypointSample, load_grey_image
from .imaging import Radiograph
from .inference import Predictor
from .metrics import mre, mre_sd, noc, noc_summary, radial_errors, sdr
from .model_io import KeypointModel, load_model
from .session import KeypointSession


@dataclass
class RevisionCurves:
    """MRE (original px) after 0..C clicks for one image, and the final radial errors."""

    model: np.ndarray  # (C + 1,)
    manual: np.ndarray  # (C + 1,)
    errors_by_clicks: np.ndarray  # (C + 1, K) model-revision radial errors in px


def simulate_revision(session: KeypointSession, truth: np.ndarray, max_clicks: int) -> RevisionCurves:
    """Click the worst not-yet-clicked point at its true position, ``max_clicks`` times."""
    start = session.predict().points
    model_points, manual_points = start.copy(), start.copy()
    model_clicked = np.zeros(len(truth), bool)
    manual_clicked = np.zeros(len(truth), bool)
    errors = [radial_errors(start, truth)]
    model_curve, manual_curve = [mre(start, truth)], [mre(start, truth)]
    for _ in range(max_clicks):
        k = worst_keypoint(model_points, truth, model_clicked)
        model_clicked[k] = True
        model_points = session.refine({k: truth[k]}).points
        errors.append(radial_errors(model_points, truth))
        model_curve.append(mre(model_points, truth))

        j = worst_keypoint(manual_points, truth, manual_clicked)
        manual_clicked[j] = True
        manual_points[j] = truth[j]
        manual_curve.append(mre(manual_points, truth))
    return RevisionCurves(np.array(model_curve), np.array(manual_curve), np.array(errors))


def sample_radiograph(sample: KeypointSample) -> Radiograph:
    return Radiograph(load_grey_image(sample), sample.spacing, sample.spacing_known, path=str(sample.image_path or sample.id))


def evaluate_split(model: KeypointModel, samples, max_clicks: int, device=None, prev_mode="fixed", progress=True):
    """RevisionCurves for every sample, sharing one inference copy of the network."""
    predictor = Predictor(model, device)
    results = []
    for sample in tqdm(samples, desc="evaluate", disable=not progress):
        session = KeypointSession(model, sample_radiograph(sample), prev_mode=prev_mode, predictor=predictor)
        results.append(simulate_revision(session, sample.points, max_clicks))
    return results


def summarise(results, samples, max_clicks: int, targets, unit: str = "px", noc_clicks: int | None = None) -> dict:
    """metrics.json content. ``unit`` says whether ``targets`` are px or mm.

    NoC / FR count at most ``noc_clicks`` clicks (default ``max_clicks``): the simulated
    user's first clicks do not depend on how many follow, so a 10-click run also gives NoC5.
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
        metrics["SDR_by_clicks"] = [{f"{t:g}mm": v for t, v in sdr(errors_mm[:, c]).items()} for c in range(max_clicks + 1)]
        if unit == "mm":
            curves = model_mm
    elif unit == "mm":
        raise ValueError("targets in mm need a dataset with a known pixel spacing")
    summary = noc_summary(curves, targets, noc_clicks)
    metrics["NoC"] = {key: v["NoC"] for key, v in summary.items()}
    metrics["FR"] = {key: v["FR"] for key, v in summary.items()}
    metrics["NoC_manual"] = {key: v["NoC"] for key, v in noc_summary(
        manual_mm if unit == "mm" else manual_px, targets, noc_clicks).items()}
    return metrics


def write_per_image_csv(path: Path, results, samples) -> None:
    clicks = len(results[0].model)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id"] + [f"model_mre_px_{c}" for c in range(clicks)] + [f"manual_mre_px_{c}" for c in range(clicks)])
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="model folder")
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--data-root", type=Path)
    parser.add_argument("--split", default="val")
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--phantom-images", type=int, default=16)
    parser.add_argument("--drop-disordered-labels", action="store_true",
                        help="AASCE: leave labels with vertebrae out of order out (the protocol keeps them; "
                             "metrics.json lists the ones left out under 'skipped')")
    parser.add_argument("--max-clicks", type=int, default=10, help="clicks per image (MRE curve 0..N)")
    parser.add_argument("--noc-clicks", type=int, default=None,
                        help="click budget of NoC / FR (default: --max-clicks; the ceph protocol uses 5)")
    parser.add_argument("--targets", type=float, nargs="+", default=[20, 30, 40, 50])
    parser.add_argument("--unit", choices=["px", "mm"], default="px", help="unit of --targets")
    parser.add_argument("--prev-mode", choices=["fixed", "all"], default="fixed",
                        help="previous prediction in fixed channels only (paper) or all channels")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's, all cores)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quiet", action="store_true")


def run(args) -> int:
    if args.noc_clicks is not None and not 0 <= args.noc_clicks <= args.max_clicks:
        raise ValueError(f"--noc-clicks {args.noc_clicks} must be between 0 and --max-clicks {args.max_clicks}")
    if args.threads:  # e.g. beside a training: oversubscribed OpenMP threads crawl
        torch.set_num_threads(args.threads)
    model = load_model(args.model)
    options = dataset_options(args.dataset, args.split_seed, args.phantom_images)
    options.update(disordered_label_options(args.dataset, args.drop_disordered_labels))
    split = get_dataset(args.dataset, args.data_root, args.split, **options)
    if split.num_keypoints != model.config.num_keypoints:
        raise ValueError(f"the model has {model.config.num_keypoints} keypoints, the dataset {split.num_keypoints}")
    samples = split.samples[: args.limit] if args.limit else split.samples
    if not samples:
        raise ValueError(f"no images in {args.dataset} split {args.split!r}")
    results = evaluate_split(model, samples, args.max_clicks, args.device, args.prev_mode, progress=not args.quiet)
    metrics = summarise(results, samples, args.max_clicks, args.targets, args.unit, args.noc_clicks)
    metrics.update(model=str(args.model), dataset=args.dataset, split=args.split, prev_mode=args.prev_mode,
                   skipped=split.skipped)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    write_per_image_csv(out / "per_image.csv", results, samples)
    write_plots(out, results, args.max_clicks, args.unit, samples, args.noc_clicks)
    curve = metrics.get("MRE_by_clicks_mm" if args.unit == "mm" else "MRE_by_clicks")["model"]
    print(f"{len(samples)} images; MRE by clicks ({args.unit}): " + ", ".join(f"{v:.2f}" for v in curve[:6]))
    print("NoC: " + ", ".join(f"{k} {v:.2f}" for k, v in metrics["NoC"].items()))
    print("FR:  " + ", ".join(f"{k} {v:.2f}%" for k, v in metrics["FR"].items()))
    return 0

