"""What an evaluation run leaves: metrics.json, the CSV tables, the plots and the console summary.

OUT/metrics.json, OUT/per_image.csv, OUT/mre_vs_clicks.png (paper Fig. 4),
OUT/noc_vs_target.png (Fig. 6), OUT/propagation_gain.csv and .png; where the model names a
measurement set OUT/measurements.json, OUT/measurements_per_image.csv and
OUT/measurements_vs_clicks.png; with several users or click noise OUT/users_mre_vs_clicks.png.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..data.common import KeypointSample
from ..metrics import noc
from .options import EvaluateOptions
from .report import measurements_by_clicks, sample_measurements
from .simulate import RevisionCurves

Samples = Sequence[KeypointSample]


def write_outputs(
    out: Path,
    metrics: dict[str, Any],
    results: Sequence[RevisionCurves],
    samples: Samples,
    options: EvaluateOptions,
    measurement_report: dict[str, Any] | None,
) -> None:
    """Every file of the run into ``out`` (made if missing)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    write_per_image_csv(out / "per_image.csv", results, samples)
    write_plots(out, results, samples, options)
    write_propagation_csv(out / "propagation_gain.csv", metrics["propagation_gain"])
    write_propagation_plot(out / "propagation_gain.png", metrics["propagation_gain"], options.unit)
    if measurement_report is not None:
        (out / "measurements.json").write_text(json.dumps(measurement_report, indent=1))
        write_measurements_csv(out / "measurements_per_image.csv", measurement_report, results, samples)
        write_measurements_plot(out / "measurements_vs_clicks.png", measurement_report)
    if "users" in metrics:
        write_users_plot(out / "users_mre_vs_clicks.png", metrics["users"], options.unit)


# ------------------------------------------------------------------ tables


def write_per_image_csv(path: Path, results: Sequence[RevisionCurves], samples: Samples) -> None:
    clicks = len(results[0].model)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["id"] + [f"model_mre_px_{c}" for c in range(clicks)] + [f"manual_mre_px_{c}" for c in range(clicks)]
        )
        for sample, r in zip(samples, results):
            writer.writerow([sample.id] + [f"{v:.4f}" for v in r.model] + [f"{v:.4f}" for v in r.manual])


def write_propagation_csv(path: Path, gain: dict[str, Any]) -> None:
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


def write_measurements_csv(
    path: Path, report: dict[str, Any], results: Sequence[RevisionCurves], samples: Samples
) -> None:
    """Each image's measurements after every click, ground truth first."""
    names, set_name = report["names"], report["measurement_set"]
    clicks = len(results[0].points_by_clicks)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "measurement", "truth"] + [f"clicks_{c}" for c in range(clicks)])
        for r, s in zip(results, samples):
            truth = sample_measurements(s.points, s, set_name)
            by_click = measurements_by_clicks(r, s, set_name)
            for j, name in enumerate(names):
                writer.writerow([s.id, name, f"{truth[j].value:.4f}"] + [f"{m[j].value:.4f}" for m in by_click])


# ------------------------------------------------------------------ plots


@contextmanager
def figure(path: Path, columns: int = 1, size: tuple[float, float] = (5, 4)) -> Iterator[Any]:
    """The setup of every plot: ``columns`` axes side by side on a figure without a display
    (Agg), laid out and saved to ``path`` at 120 dpi when the block ends. Yields the axes
    (one, or an array of ``columns``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, columns, figsize=size)
    try:
        yield axes
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)


def label(
    ax: Any,
    xlabel: str,
    ylabel: str,
    title: str,
    legend: bool = True,
    legend_size: float | None = None,
    grid: str = "both",
) -> None:
    """The axes' labels, a light grid (on ``grid``: x, y or both) and the legend."""
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3, axis=grid)
    if legend:
        ax.legend(fontsize=legend_size)


def write_plots(out: Path, results: Sequence[RevisionCurves], samples: Samples, options: EvaluateOptions) -> None:
    """MRE vs clicks (paper Fig. 4) and the clicks needed vs the target MRE (Fig. 6), in ``options.unit``."""
    model_px = np.stack([r.model for r in results])
    manual_px = np.stack([r.manual for r in results])
    if options.unit == "mm":
        scale = np.array([np.mean(s.spacing) for s in samples])[:, None]
        model_px, manual_px = model_px * scale, manual_px * scale
    unit, budget = options.unit, options.noc_budget
    clicks = np.arange(options.max_clicks + 1)
    with figure(out / "mre_vs_clicks.png") as ax:
        ax.plot(clicks, model_px.mean(0), "o-", label="model revision")
        ax.plot(clicks, manual_px.mean(0), "s--", label="manual revision")
        label(ax, "number of clicks", f"MRE ({unit})", "MRE vs clicks")

    top = float(np.ceil(model_px[:, 0].max()))
    targets = np.linspace(top / 60, top, 60)
    with figure(out / "noc_vs_target.png") as ax:
        for curves, name in [(model_px, "model revision"), (manual_px, "manual revision")]:
            ax.plot(targets, [noc(curves, t, budget)[0] for t in targets], label=name)
        label(ax, f"target MRE ({unit})", f"NoC{budget}", "clicks needed vs target MRE")


def write_propagation_plot(path: Path, gain: dict[str, Any], unit: str) -> None:
    """Bars of the gain (in ``unit``) after each click count, all vs near landmarks, with the percent."""
    clicks = np.array(gain["clicks"])
    with figure(path) as ax:
        for offset, group, name in [(-0.2, "all", "all landmarks"), (0.2, "near", "near the clicked ones")]:
            values = np.array(gain[group][unit], dtype=float)
            bars = ax.bar(np.arange(len(clicks)) + offset, values, width=0.4, label=name)
            ax.bar_label(bars, labels=[f"{p:.0f}%" for p in gain[group]["percent"]], fontsize=7)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(np.arange(len(clicks)), [str(c) for c in clicks])
        label(ax, "number of clicks", f"manual - model MRE ({unit})", "propagation gain", grid="y")


def write_users_plot(path: Path, users: dict[str, Any], unit: str) -> None:
    """Model-revision MRE by clicks of each simulated user (oracle vs guided)."""
    key = "MRE_by_clicks_mm" if unit == "mm" else "MRE_by_clicks"
    with figure(path) as ax:
        for (user, entry), style in zip(users.items(), ("o-", "s-", "^-")):
            curve = entry[key]["model"]
            ax.plot(np.arange(len(curve)), curve, style, label=f"{user} user, model revision")
            ax.plot(
                np.arange(len(curve)), entry[key]["manual"], style[0] + ":", alpha=0.6, label=f"{user} user, manual"
            )
        label(
            ax,
            "number of clicks (corrections + confirmations)",
            f"MRE ({unit})",
            "MRE vs clicks: oracle vs guided user",
            legend_size=7,
        )


def write_measurements_plot(path: Path, report: dict[str, Any]) -> None:
    """Cobb SMAPE and angle errors, or ceph class accuracy and angle errors, vs clicks."""
    names, curves = report["names"], report["MAE_by_clicks"]
    x = np.arange(len(next(iter(curves.values()))))
    with figure(path, columns=2, size=(10, 4)) as axes:
        if report["measurement_set"] == "aasce-cobb":
            axes[0].plot(x, report["SMAPE_by_clicks"], "o-")
            label(axes[0], "number of clicks", "SMAPE (%)", "Cobb angle SMAPE vs clicks", legend=False)
            for name in names:
                axes[1].plot(x, curves[name], "o-", label=name)
            label(axes[1], "number of clicks", "mean absolute error (deg)", "Cobb angle error vs clicks", legend_size=7)
        else:
            for name in names:
                axes[0].plot(x, report["accuracy_by_clicks"][name], "o-", label=name)
            label(axes[0], "number of clicks", "classification accuracy (%)", "ceph classes vs clicks", legend_size=7)
            for name, unit in zip(names, report["units"]):
                if unit == "deg":
                    axes[1].plot(x, curves[name], "o-", label=name)
            label(axes[1], "number of clicks", "mean absolute error (deg)", "angle error vs clicks", legend_size=7)
        for ax in axes:
            ax.set_xticks(x)


# ------------------------------------------------------------------ the console


def print_summary(metrics: dict[str, Any], options: EvaluateOptions) -> None:
    """The first user's MRE curve, NoC / FR and propagation gain."""
    unit = options.unit
    curve = metrics[options.curve_key]["model"]
    print(f"{metrics['images']} images; MRE by clicks ({unit}): " + ", ".join(f"{v:.2f}" for v in curve[:6]))
    print("NoC: " + ", ".join(f"{k} {v:.2f}" for k, v in metrics["NoC"].items()))
    print("FR:  " + ", ".join(f"{k} {v:.2f}%" for k, v in metrics["FR"].items()))
    gain = metrics["propagation_gain"]
    if gain["clicks"]:
        print(
            f"propagation gain, manual - model MRE ({unit}) after "
            + "; ".join(
                f"{c} clicks: all {gain['all'][unit][i]:.2f} ({gain['all']['percent'][i]:.1f}%), "
                f"near {gain['near'][unit][i]:.2f} ({gain['near']['percent'][i]:.1f}%)"
                for i, c in enumerate(gain["clicks"])
            )
        )


def print_measurement_summary(report: dict[str, Any]) -> None:
    if report["measurement_set"] == "aasce-cobb":
        print("Cobb SMAPE by clicks (%): " + ", ".join(f"{v:.2f}" for v in report["SMAPE_by_clicks"]))
    else:
        print(
            "ceph class accuracy by clicks (%, mean of 8): "
            + ", ".join(f"{v:.1f}" for v in report["mean_accuracy_by_clicks"])
        )
    for name, curve in report["MAE_by_clicks"].items():
        accuracy = report.get("accuracy_by_clicks")
        print(
            f"  {name} MAE by clicks: "
            + ", ".join(f"{v:.2f}" for v in curve)
            + ("" if accuracy is None else "; accuracy %: " + ", ".join(f"{v:.1f}" for v in accuracy[name]))
        )


def print_users(metrics: dict[str, Any], options: EvaluateOptions) -> None:
    """The click noise, the guided user's rule, and each user's curve, NoC and FR."""
    unit = options.unit
    guided = metrics.get("guided")
    print(
        f"click noise SD {metrics['click_noise']['sd']:g} {unit}"
        + (
            ""
            if guided is None
            else f"; guided: score {guided['review_score']}, tolerance {guided['tolerance']:g} {unit}"
        )
    )
    for user, entry in metrics["users"].items():
        print(
            f"{user:>6} MRE by clicks ({unit}): "
            + ", ".join(f"{v:.2f}" for v in entry[options.curve_key]["model"])
            + " | NoC "
            + ", ".join(f"{k} {v:.2f}" for k, v in entry["NoC"].items())
            + " | FR "
            + ", ".join(f"{k} {v:.1f}%" for k, v in entry["FR"].items())
        )


def print_variant_comparison(part: str, comparison: dict[str, Any], options: EvaluateOptions) -> None:
    """Each variant's MRE curve and NoC, e.g. ``local stage    with: ...``."""
    for variant, entry in comparison.items():
        print(
            f"{part} {variant:>7}: MRE by clicks ({options.unit}) "
            + ", ".join(f"{v:.2f}" for v in entry[options.curve_key][:6])
            + " | NoC "
            + ", ".join(f"{k} {v:.2f}" for k, v in entry["NoC"].items())
        )
