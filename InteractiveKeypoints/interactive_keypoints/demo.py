"""``interactive-keypoints demo``: the whole interactive loop on a fresh machine, no data needed.

A phantom spine radiograph with known landmarks is generated, the model predicts, a
simulated user drags the worst landmark to its true position, and the model refines the
others. Writes the image, before/after overlays, the points as .mrk.json and .csv, and
prints how much the one correction helped.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

from .predict import add_model_arguments, load_model_for


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("demo-output"), help="output folder (default: ./demo-output)")
    add_model_arguments(parser)
    parser.add_argument("--seed", type=int, default=0, help="phantom seed (default 0)")


@dataclass
class DemoResult:
    before: object  # session.Prediction
    after: object
    corrected: int  # index of the landmark the simulated user moved
    truth: object  # (K, 2)
    spacing: tuple
    predict_ms: float
    refine_ms: float


def simulate_one_correction(model, sample, device) -> DemoResult:
    """Predict, then move the landmark with the largest error to its true position and refine."""
    from .clicks import worst_keypoint
    from .imaging import Radiograph
    from .session import KeypointSession

    radiograph = Radiograph(sample.image, sample.spacing, spacing_known=True)
    session = KeypointSession(model, radiograph, device=device)
    start = time.perf_counter()
    before = session.predict()
    predict_ms = 1000 * (time.perf_counter() - start)
    corrected = worst_keypoint(before.points, sample.points, before.fixed)
    start = time.perf_counter()
    after = session.refine({corrected: tuple(sample.points[corrected])})
    refine_ms = 1000 * (time.perf_counter() - start)
    return DemoResult(before, after, corrected, sample.points, tuple(sample.spacing), predict_ms, refine_ms)


def write_outputs(out: Path, sample, result: DemoResult, model_name: str, measurement_set: str = "") -> dict[str, Path]:
    from .conventions import POINTS_CSV, POINTS_JSON, output_path
    from .markups import write_csv, write_markups_json
    from .metrics import mre
    from .overlay import save_overlay
    from .phantom import write_png

    out.mkdir(parents=True, exist_ok=True)
    paths = {"image": write_png(sample.image, out / "phantom.png")}
    truth, spacing, k = result.truth, result.spacing, result.corrected
    for key, prediction, moves in (
        ("before", result.before, None),
        ("after", result.after, [(result.before.points[k], result.after.points[k])]),
    ):
        title = (
            f"{key} ({model_name}): MRE {mre(prediction.points, truth):.1f} px"
            f" / {mre(prediction.points, truth, spacing):.2f} mm"
        )
        if moves:
            title += f"\nuser moved {prediction.names[k]}"
        paths[key] = save_overlay(
            out / f"{key}.png",
            sample.image,
            prediction.points,
            prediction.fixed,
            truth,
            moves,
            spacing,
            title,
            measurement_set=measurement_set,
            names=prediction.names,
        )
    after = result.after
    # phantom.png carries no spacing, so the markups use the geometry Slicer gives the PNG
    # (1 mm pixels, origin 0) and overlay it exactly; the CSV has the true mm as well.
    paths["markups"] = write_markups_json(
        output_path(out / "keypoints", POINTS_JSON),
        after.points,
        after.names,
        states=after.states(),
        confidence=after.confidence,
        node_name="phantom",
    )
    paths["csv"] = write_csv(
        output_path(out / "keypoints", POINTS_CSV),
        after.names,
        after.points,
        spacing=spacing,
        states=after.states(),
        confidence=after.confidence,
    )
    return paths


def summary(result: DemoResult, paths: dict[str, Path], moved_threshold_px: float = 1.0) -> str:
    import numpy as np

    from .conventions import radial_errors
    from .metrics import mre

    before, after, k, truth, spacing = result.before, result.after, result.corrected, result.truth, result.spacing
    others = np.delete(np.arange(len(truth)), k)
    shift = radial_errors(after.points[others], before.points[others])
    error_before = radial_errors(before.points[k], truth[k])
    lines = [
        f"corrected landmark: {before.names[k]} (error {error_before:.1f} px before the move)",
        f"MRE before: {mre(before.points, truth):.2f} px / {mre(before.points, truth, spacing):.2f} mm",
        f"MRE after:  {mre(after.points, truth):.2f} px / {mre(after.points, truth, spacing):.2f} mm",
        f"MRE of the {len(others)} other landmarks: {mre(before.points[others], truth[others]):.2f} px"
        f" -> {mre(after.points[others], truth[others]):.2f} px",
        f"other landmarks moved by the model: {int((shift > moved_threshold_px).sum())} of {len(others)}"
        f" by more than {moved_threshold_px:g} px (largest move {shift.max():.1f} px)",
        f"latency: predict {result.predict_ms:.0f} ms, refine {result.refine_ms:.0f} ms",
        "wrote:",
    ]
    lines += [f"  {path}" for path in paths.values()]
    return "\n".join(lines)


def run(args) -> int:
    from .model_folders import DEFAULT_MODEL_NAME, PHANTOM_MODEL_NAME
    from .phantom import make_spine_phantom

    # phantom image -> the phantom-trained model first; the real-radiograph model otherwise
    model = load_model_for(args, preference=(PHANTOM_MODEL_NAME, DEFAULT_MODEL_NAME))
    sample = make_spine_phantom(args.seed)
    if len(sample.points) != model.config.num_keypoints:
        from .config import ModelFormatError

        raise ModelFormatError(
            f"the demo needs a {len(sample.points)}-landmark spine model; "
            f"{model.folder} has {model.config.num_keypoints} landmarks"
        )
    result = simulate_one_correction(model, sample, args.device)
    paths = write_outputs(
        args.out, sample, result, model.folder.name if model.folder else "model", model.config.measurements
    )
    print(summary(result, paths))
    return 0
