"""Learning curve of "your own landmarks": the ISBI 2015 cephalograms used as if they were a
new landmark set. N annotated images (a seeded draw from the 150 training images, nested:
the 10 are among the 20, the 20 among the 40) become a training set; each is trained within
the same CPU-time budget twice, by transfer from a shipped model of other landmarks and from
scratch, and evaluated on Test1Data (150 images, which no run sees).

    python bench/own_landmarks_curve.py --isbi ../shared/data/ISBI2015 --out /work/runs/own-landmarks \
        --images 20 --minutes 30 --threads 1

Prints one JSON line per run (images, start, minutes of CPU and wall clock, Test1 MRE in mm at
0 and 3 clicks, SDR@2mm) and a table at the end. Runs one training at a time; a run whose
model folder is finished is evaluated again, not retrained (delete it to retrain). The sets
link to the images (nothing is copied); never put OUT inside the repository.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from interactive_keypoints.conventions import CEPH, USER_FIXED
from interactive_keypoints.data import get_dataset
from interactive_keypoints.training_set import create_training_set

REPO = Path(__file__).resolve().parents[1]
# the nearest shipped model of other landmarks: trained on real radiographs (the phantom model
# saw generated images only); isbi-ceph-19 was trained on these very images, so it cannot count
TRANSFER_FROM = REPO / "models" / "aasce-spine-68"
# the recipe both starts share (the shipped models' from-scratch recipe sets the hint scale)
RECIPE = ["--input", "320x256", "--lr-schedule", "cosine", "--occlusion-prob", "0.5", "--val-every", "2"]
RECIPE += ["--epochs", "100000", "--patience", "100000", "--budget-clock", "cpu", "--quiet"]
START = {"transfer": ["--init-from", str(TRANSFER_FROM)], "scratch": ["--hint-scale-init", "1.0"]}


def make_set(isbi: Path, folder: Path, ids: list[str]) -> Path:
    """A training set of the ISBI training images ``ids``: links to the images, their labels
    (the two doctors' mean) as user-fixed points; the landmark names are the ceph template's."""
    train = {sample.id: sample for sample in get_dataset("isbi", isbi, "train")}
    create_training_set(folder, CEPH)
    from interactive_keypoints.markups import write_markups_json

    for stem in ids:
        sample = train[stem]
        link = folder / sample.image_path.name
        if not link.exists():
            link.symlink_to(sample.image_path.resolve())
        # the JPEG stores no spacing: the points are in its 1 mm pixels, as the folder reads them
        write_markups_json(folder / f"{stem}.mrk.json", sample.points, CEPH.names, states=[USER_FIXED] * 19)
    return folder


def train_run(folder: Path, run: Path, start: str, minutes: float, threads: int, seed: int) -> None:
    if (run / "train_summary.json").is_file():
        return
    command = [sys.executable, "-m", "interactive_keypoints.train", "--dataset", "folder", "--data-root", str(folder)]
    command += [*RECIPE, *START[start], "--max-minutes", str(minutes), "--threads", str(threads)]
    command += ["--seed", str(seed), "--out", str(run)] + (
        ["--resume"] if (run / "checkpoint.safetensors").is_file() else []
    )
    subprocess.run(command, check=True, env=dict(os.environ, OMP_NUM_THREADS=str(threads)))


def evaluate_run(isbi: Path, run: Path, threads: int) -> dict:
    out = run / "test1"
    if not (out / "metrics.json").is_file():
        command = [
            sys.executable,
            "-m",
            "interactive_keypoints.cli",
            "evaluate",
            "--model",
            str(run),
            "--dataset",
            "isbi",
        ]
        command += ["--data-root", str(isbi), "--split", "test1", "--max-clicks", "3", "--unit", "mm"]
        command += ["--targets", "2", "--threads", str(threads), "--quiet", "--out", str(out)]
        subprocess.run(command, check=True, env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
    return json.loads((out / "metrics.json").read_text())


def held_back_by_minutes(run: Path, minutes=(5, 10, 20, 30)) -> dict:
    """The best held-back MRE (px, the set's own held-back images) reached within each number of
    CPU minutes: the training log's budget-clock ``elapsed_s`` against ``best_val_mre_px``."""
    with open(run / "training_log.csv", newline="") as f:
        rows = [(float(r["elapsed_s"]), float(r["best_val_mre_px"])) for r in csv.DictReader(f)]
    return {
        f"{m}min": round(min((best for elapsed, best in rows if elapsed <= 60 * m), default=float("nan")), 2)
        for m in minutes
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--isbi", type=Path, required=True, help="the ISBI 2015 folder")
    parser.add_argument("--out", type=Path, required=True, help="where the sets and runs go (not the repository)")
    parser.add_argument("--images", type=int, nargs="+", default=[20])
    parser.add_argument("--starts", nargs="+", choices=sorted(START), default=["transfer", "scratch"])
    parser.add_argument("--minutes", type=float, default=30.0, help="CPU-time budget of each run")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="the draw of the images and the training seed")
    args = parser.parse_args(argv)
    if REPO in args.out.resolve().parents:
        parser.error("--out must lie outside the repository (the runs hold data derived from the dataset)")
    order = [f"{i:03d}" for i in np.random.default_rng(args.seed).permutation(np.arange(1, 151))]
    rows = []
    for n in args.images:
        folder = make_set(args.isbi, args.out / "sets" / f"ceph-{n}", order[:n])
        for start in args.starts:
            run = args.out / "runs" / f"ceph-{n}-{start}-{args.minutes:g}min"
            train_run(folder, run, start, args.minutes, args.threads, args.seed)
            summary = json.loads((run / "train_summary.json").read_text())
            metrics = evaluate_run(args.isbi, run, args.threads)
            mre = metrics["MRE_by_clicks_mm"]["model"]
            row = {
                "images": n,
                "start": start,
                "cpu_min": round(summary["cpu_s"] / 60, 1),
                "wall_min": round(summary["wall_s"] / 60, 1),
                "epochs": summary["epochs"],
                "test1_mre_mm": [round(float(v), 3) for v in mre[:4]],
                "test1_sdr_2mm": round(float(metrics["SDR"]["2mm"]), 1),
                "held_back_px_within": held_back_by_minutes(run),
                "device": summary["device_name"],
                "run": str(run),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| images | start | CPU min | wall min | Test1 MRE mm, 0 clicks | 3 clicks | SDR 2 mm, 0 clicks |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['images']} | {r['start']} | {r['cpu_min']} | {r['wall_min']} | "
            f"{r['test1_mre_mm'][0]:.2f} | {r['test1_mre_mm'][-1]:.2f} | {r['test1_sdr_2mm']} % |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
