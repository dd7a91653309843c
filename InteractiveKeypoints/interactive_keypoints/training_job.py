"""Training a training set's model in a process of its own: the command (which model it starts
from, the recipe, the time budget), starting it, its progress, cancelling and resuming it.

The process is ``python -m interactive_keypoints.train`` writing into ``SET/models/<set>-NN``;
it reports through that folder's ``progress.json`` and its log, so the Slicer module (or a
script) only reads files and never imports torch for it. A cancelled or killed run keeps its
best model so far and its last checkpoint: :func:`resume` continues it with the same command.
No torch, no Slicer: usable from any thread and from plain Python.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .conventions import LandmarkTemplate
from .errors import KeypointsError
from .model_folders import CONFIG_FILE, is_model_folder, shipped_models
from .training_set import list_images, models_folder, next_model_folder, points_path, read_template

PACKAGE_PARENT = Path(__file__).resolve().parents[1]  # put on the process's path: Slicer's PythonSlicer lacks it
TRAIN_MODULE = "interactive_keypoints.train"  # what the process runs (the extension ships it)
LAUNCH_FILE = "launch.json"  # the command a run was started with (resume repeats it)
LOG_FILE = "train.log"
PROGRESS_FILE = "progress.json"  # written by train.py
SUMMARY_FILE = "train_summary.json"  # written by train.py when it is done
# the recipe of bench/own_landmarks_curve.py (README, "Your own landmarks"): cosine over the
# time budget, occlusion, validation every second epoch; the budget, not a patience, ends it
RECIPE = ["--lr-schedule", "cosine", "--occlusion-prob", "0.5", "--val-every", "2", "--epochs", "100000"]
RECIPE += ["--patience", "100000", "--quiet"]
INPUT_PIXELS = 320 * 256  # what the shipped ceph model sees; the set's images' shape decides H : W


class TrainingJobError(KeypointsError, RuntimeError):
    """Training cannot start (another run going on, nothing to continue or resume)."""


# ------------------------------------------------------------------ the command


def image_aspect(folder) -> float:
    """The median height / width of the set's annotated images (headers only)."""
    import SimpleITK as sitk

    ratios = []
    for stem, path in list_images(folder).items():
        if points_path(folder, stem).is_file():
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            try:
                reader.ReadImageInformation()
            except RuntimeError:
                continue  # the training run reports the bad image
            width, height = reader.GetSize()[:2]
            ratios.append(height / width)
    return float(np.median(ratios)) if ratios else 1.0


def input_size_for(aspect: float, pixels: int = INPUT_PIXELS) -> tuple[int, int]:
    """(H, W), multiples of 32, about ``pixels`` in all, in the images' shape."""
    height = max(32, int(round(np.sqrt(pixels * aspect) / 32)) * 32)
    width = max(32, int(round(np.sqrt(pixels / aspect) / 32)) * 32)
    return height, width


def input_size(start_from, template: LandmarkTemplate, aspect: float) -> tuple[int, int]:
    """A model of these very landmarks is fine-tuned at its own input size (continuing a set's
    model too); a transfer gets the size of the set's images' shape."""
    config = json.loads((Path(start_from) / CONFIG_FILE).read_text()) if start_from else {}
    if config.get("landmark_names") == list(template.names):
        return tuple(config["input_size"])
    return input_size_for(aspect)


def nearest_model(template: LandmarkTemplate, aspect: float, models=None) -> Path:
    """The shipped model to start from: the most landmarks of the same name (a model of this very
    template is fine-tuned), then the input shape nearest the images', then the preferred one
    (the real-radiograph default before the phantom model)."""
    models = list(shipped_models() if models is None else models)
    if not models:
        raise TrainingJobError("no shipped model to start from")

    def closeness(indexed):
        order, folder = indexed
        config = json.loads((Path(folder) / CONFIG_FILE).read_text())
        shared = len(set(config.get("landmark_names", [])) & set(template.names))
        height, width = config.get("input_size", (1, 1))
        return (-shared, abs(np.log((height / width) / aspect)), order)

    return Path(min(enumerate(models), key=closeness)[1])


def training_command(
    folder, out, start_from, minutes: float, input_size, threads: int | None = None, python=None, extra=()
) -> list[str]:
    """The ``train`` command of a training set's model."""
    command = [*(python or [sys.executable]), "-m", TRAIN_MODULE, "--dataset", "folder"]
    command += ["--data-root", str(folder), "--out", str(out), "--input", f"{input_size[0]}x{input_size[1]}"]
    command += [*RECIPE, "--max-minutes", f"{minutes:g}"]
    command += ["--init-from", str(start_from)] if start_from else ["--hint-scale-init", "1.0"]
    command += ["--threads", str(threads)] if threads else []
    return command + [str(a) for a in extra]


# ------------------------------------------------------------------ a run


@dataclass
class TrainingJob:
    """One training run of a set: its model folder and, while it runs here, its process."""

    out: Path
    command: list[str] = field(default_factory=list)
    process: subprocess.Popen | None = None
    cancelled: bool = False

    def start(self) -> TrainingJob:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / LAUNCH_FILE).write_text(json.dumps({"command": self.command}, indent=1) + "\n")
        env = dict(
            os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(PACKAGE_PARENT), os.environ.get("PYTHONPATH")]))
        )
        with open(self.out / LOG_FILE, "a") as log:  # the child keeps its own copy of the handle
            self.process = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=self.out
            )
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def cancel(self, wait_s: float = 10.0) -> None:
        """Stop the process; its best model and last checkpoint stay (resume continues)."""
        if not self.running:
            return
        self.cancelled = True
        assert self.process is not None
        self.process.terminate()
        try:
            self.process.wait(wait_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def progress(self) -> dict:
        """``status`` (starting, training, finished, cancelled, failed, interrupted), ``fraction``
        of the budget, ``message`` for the user, ``model`` (the folder once it holds weights)."""
        report = _read_json(self.out / PROGRESS_FILE) or {}
        fraction = float(report.get("fraction", 0.0))
        best = report.get("best_val_mre_px")
        model = self.out if is_model_folder(self.out) else None
        code = self.process.poll() if self.process is not None else None
        if self.process is not None and code is None:
            status = "training" if report else "starting"
        elif self.cancelled:
            status = "cancelled"
        elif (self.out / SUMMARY_FILE).is_file() and code in (None, 0):
            status, fraction = "finished", 1.0
        elif code not in (None, 0):
            status = "failed"
        else:
            status = "interrupted"  # found on disk, not finished, no process here
        message = {
            "starting": "starting the training process...",
            "training": f"epoch {report.get('epoch', 0)}, {fraction:.0%} of the time budget",
            "finished": "training finished",
            "cancelled": "cancelled: the best model so far is kept; Resume continues the run",
            "interrupted": "this run stopped before its end: Resume continues it",
            "failed": self.error() or "the training process failed",
        }[status]
        if best is not None and status != "failed":
            message += f"; held-back error {best:.1f} px"
        return {"status": status, "fraction": fraction, "message": message, "model": model, "folder": self.out}

    def error(self) -> str:
        """The reason a failed run gives (its ``error:`` line, else the last line of its log)."""
        try:
            lines = [line.strip() for line in (self.out / LOG_FILE).read_text(errors="replace").splitlines()]
        except OSError:
            return ""
        errors = [line for line in lines if line.startswith("error:")]
        lines = [line for line in lines if line]
        return errors[-1][len("error:") :].strip() if errors else (lines[-1] if lines else "")


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def start(
    folder,
    minutes: float,
    start_from=None,
    continue_training: bool = False,
    threads: int | None = None,
    python=None,
    extra=(),
) -> TrainingJob:
    """Start a new run of the set ``folder``: from ``start_from`` (a model folder), else from the
    set's latest model (``continue_training``), else by transfer from the nearest shipped model.
    ``python``: the interpreter command (Slicer: its PythonSlicer); ``extra``: more train options."""
    folder = Path(folder)
    template = read_template(folder)
    if template is None:
        raise TrainingJobError(f"{folder} is no training set yet: add a first annotated image to it")
    aspect = image_aspect(folder)
    if start_from is None and continue_training:
        start_from = latest_model(folder)
        if start_from is None:
            raise TrainingJobError(f"{folder} has no trained model to continue: press Train first")
    if start_from is None:
        start_from = nearest_model(template, aspect)
    command = training_command(
        folder, next_model_folder(folder), start_from, minutes, input_size(start_from, template, aspect), threads,
        python, extra,
    )  # fmt: skip
    job = TrainingJob(Path(command[command.index("--out") + 1]), command)
    return job.start()


def latest_model(folder) -> Path | None:
    """The set's most recent model that holds weights."""
    root = models_folder(folder)
    runs = sorted(p for p in root.iterdir() if is_model_folder(p)) if root.is_dir() else []
    return runs[-1] if runs else None


def unfinished_run(folder) -> TrainingJob | None:
    """The set's most recent run that stopped before its end (a checkpoint, no summary)."""
    root = models_folder(folder)
    runs = sorted(p for p in root.iterdir() if (p / LAUNCH_FILE).is_file()) if root.is_dir() else []
    if not runs or (runs[-1] / SUMMARY_FILE).is_file() or not (runs[-1] / "checkpoint.safetensors").is_file():
        return None
    command = (_read_json(runs[-1] / LAUNCH_FILE) or {}).get("command") or []
    return TrainingJob(runs[-1], list(command)) if command else None


def resume(folder, python=None) -> TrainingJob:
    """Continue the set's unfinished run where its last checkpoint left it (same command)."""
    job = unfinished_run(folder)
    if job is None:
        raise TrainingJobError(f"{folder} has no unfinished training run to resume")
    command = [*(python or job.command[: job.command.index("-m")]), *job.command[job.command.index("-m") :]]
    job.command = [*command, *(["--resume"] if "--resume" not in command else [])]
    return job.start()


def wait(job: TrainingJob, timeout_s: float, poll_s: float = 0.5) -> dict:
    """Block until the run ends (scripts and tests); returns its last progress."""
    deadline = time.monotonic() + timeout_s
    while job.running and time.monotonic() < deadline:
        time.sleep(poll_s)
    return job.progress()
