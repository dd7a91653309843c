"""``interactive-keypoints predict``: landmarks for radiographs, written as Slicer point lists.

For each image: ``<stem>.mrk.json`` (opens in Slicer on top of the image) and ``<stem>.csv``,
next to the image or in ``--out``, plus ``<stem>.measurements.json`` / ``.csv`` (Cobb angles,
ceph analysis) where the model's ``model.json`` names a measurement set; ``--overlay`` adds ``<stem>.png`` with the points drawn.
A file that cannot be read is reported and skipped; the exit code is then 2.

Heavy modules (torch, MONAI, SimpleITK) are imported inside functions: see cli.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

DEVICES = ("auto", "cpu", "cuda", "mps")


def device_argument(value: str):
    """argparse type for --device: the torch.device, or a usage error naming the problem."""
    from .inference import pick_device

    if value.split(":")[0] not in DEVICES:
        raise argparse.ArgumentTypeError(f"unknown device {value!r}; choose from {', '.join(DEVICES)}")
    try:
        return pick_device(value)
    except RuntimeError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model and --device, shared by the commands that run a model."""
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="model folder (model.safetensors + model.json); default: the shipped model",
    )
    parser.add_argument("--device", type=device_argument, default="auto", help="auto (default), cpu, cuda or mps")


def load_model_for(args, preference=None):
    """The model named by ``--model``, or the first shipped one in ``preference`` order,
    with a message that says what is missing."""
    from .config import ModelFormatError
    from .model_folders import CONFIG_FILE, WEIGHTS_FILE, default_model_dir
    from .model_io import load_model

    folder = args.model
    if folder is None:
        try:
            folder = default_model_dir(*([preference] if preference else []))
        except ModelFormatError as e:
            raise ModelFormatError(
                f"no trained model found ({e}; a model folder has {WEIGHTS_FILE} and {CONFIG_FILE}); "
                "pass --model DIR to use another model folder"
            ) from None
    return load_model(folder, device="cpu")  # the session moves it to --device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "images", nargs="+", type=Path, metavar="IMAGE", help="radiograph files (PNG, JPEG, DICOM, NRRD, ...)"
    )
    add_model_arguments(parser)
    parser.add_argument("--out", type=Path, default=None, help="write results here (default: next to each image)")
    parser.add_argument(
        "--overlay", action="store_true", help="also write <stem>.png with the points drawn on the image"
    )
    parser.add_argument(
        "--spacing",
        type=float,
        nargs="+",
        metavar="MM",
        default=None,
        help="pixel spacing SX [SY] in mm, for images that store none (PNG, JPEG); overrides the file's",
    )


def write_prediction(stem: Path, prediction, radiograph, measurement_set: str = "") -> list[Path]:
    """``stem.mrk.json`` in the image's own geometry (so it overlays in Slicer) and ``stem.csv``;
    with a ``measurement_set``, also ``stem.measurements.json`` and ``stem.measurements.csv``."""
    from .conventions import POINTS_CSV, POINTS_JSON, output_path
    from .markups import write_csv, write_markups_json
    from .measurements import measure, write_measurements

    markups = write_markups_json(
        output_path(stem, POINTS_JSON),
        prediction.points,
        prediction.names,
        spacing=radiograph.spacing,
        origin=radiograph.origin,
        direction=radiograph.direction,
        states=prediction.states(),
        confidence=prediction.confidence,
        node_name=stem.name,
    )
    table = write_csv(
        output_path(stem, POINTS_CSV),
        prediction.names,
        prediction.points,
        spacing=radiograph.spacing if radiograph.spacing_known else None,
        states=prediction.states(),
        confidence=prediction.confidence,
        spacing_source=radiograph.spacing_source,
    )
    written = [markups, table]
    if measurement_set:
        spacing = radiograph.spacing if radiograph.spacing_known else None
        records = measure(prediction.points, measurement_set, spacing=spacing, image_height=radiograph.height)
        written += write_measurements(stem, records, measurement_set)
    return written


def predict_one(model, predictor, image_path: Path, args) -> list[Path]:
    from .conventions import OVERLAY_PNG, output_path, output_stem
    from .imaging import load_radiograph
    from .session import KeypointSession

    radiograph = load_radiograph(image_path, spacing=args.spacing)
    start = time.perf_counter()
    prediction = KeypointSession(model, radiograph, predictor=predictor).predict()
    elapsed_ms = 1000 * (time.perf_counter() - start)
    stem = output_stem(image_path, args.out)
    written = write_prediction(stem, prediction, radiograph, model.config.measurements)
    if args.overlay:
        from .overlay import save_overlay

        written.append(
            save_overlay(
                output_path(stem, OVERLAY_PNG),
                radiograph.array,
                prediction.points,
                spacing=radiograph.spacing,
                title=f"{image_path.name}: {len(prediction.points)} landmarks",
                measurement_set=model.config.measurements,
                names=prediction.names,
                spacing_known=radiograph.spacing_known,
            )
        )
    print(f"{image_path}: {len(prediction.points)} landmarks in {elapsed_ms:.0f} ms -> {', '.join(map(str, written))}")
    prepared = f"; pixels: {radiograph.presentation}" if radiograph.presentation else ""
    print(f"  spacing: {radiograph.spacing_description()}{prepared}")
    return written


def run(args) -> int:
    from .imaging import ImageError
    from .inference import Predictor

    model = load_model_for(args)
    predictor = Predictor(model, args.device)  # one inference copy of the network for all images
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for image_path in args.images:
        try:
            predict_one(model, predictor, image_path, args)
        except ImageError as e:  # report, keep going with the other images
            print(f"error: {e}", file=sys.stderr)
            failed += 1
    if failed:
        print(f"{failed} of {len(args.images)} images failed", file=sys.stderr)
        return 2
    return 0
