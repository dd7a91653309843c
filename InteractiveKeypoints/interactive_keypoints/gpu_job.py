"""One GPU job: train the AASCE and ISBI models side by side from their packs, return only what
must come back (issue #14); and the ``--join`` step that checks and loads them back on CPU.

    python -m interactive_keypoints.gpu_job .gpu OUT [--minutes 7.5] [--max-steps N] [--device auto]
    python -m interactive_keypoints.gpu_job --join OUT models/trained

PACKS_DIR holds one pack per model, found by its folder name: ``aasce-*``, ``isbi-*`` and,
optionally, ``phantom-*`` for the demo model (made with ``interactive-keypoints pack``). The job
installs nothing and needs no network: it checks that torch, numpy, Pillow, safetensors, tqdm and MONAI import (MONAI's wheel can travel in
``.whl/``: ``pip install --no-index --find-links .whl monai``); SimpleITK is not needed.

Models (same family: the paper's full-depth HRNetV2, width 18, gated, OCR head): AASCE at
512 x 256 (12.5 M parameters, ~25 MB in fp16: two shards) and ISBI at 640 x 512 (the
aspect of its 1935 x 2400 images and 2.5x the pixels of 512 x 256, for its 2 mm targets).
The demo's phantom model is trained too when its pack is there: width 8, compact, gate 64,
OCR 32/16 at 256 x 128 (1.8 MB in fp16). All use :data:`RECIPE` (``--occlusion-prob 0.5
--hint-scale-init 1.0 --select-on mre3``, Adam at 1e-3 with a cosine decay over the time
budget); each run's recipe is :func:`job_recipe`, given to train as options (the job's log
shows the command, the run's train_config.json comes back with its records). ``--tiny`` swaps
in width-8 compact models at the packs' own input size for a CPU rehearsal.

Everything is written to a scratch folder; OUT receives at most 8 files: per model its weight
files (<= 15 MB each, named ``NAME.*``), one ``records.files.tar.gz`` of every model's JSON and
CSV files (``NAME/...``), the job's log, and ``SHA256SUMS`` (``sha256sum -c`` format). The
training runs end by their own time budget; a run that overstays it is stopped, so the copy to
OUT always happens.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .recipe import (
    DataSection,
    InteractionSection,
    ModelSection,
    OptimisationSection,
    OutputSection,
    Recipe,
    RuntimeSection,
    ValidationSection,
)
from .recipe import arguments as recipe_arguments

LOG_FILE = "gpu_job.log"
SUMS_FILE = "SHA256SUMS"
RECORDS_ARCHIVE = "records.files.tar.gz"
MAX_RETURNED_FILES = 8
MAX_RETURNED_BYTES = 16 * 2**20
# what a module needs to train from a pack (SimpleITK and scipy only make packs)
REQUIRED_MODULES = {
    "torch": "torch",
    "numpy": "numpy",
    "PIL": "Pillow",
    "safetensors": "safetensors",
    "tqdm": "tqdm",
    "monai": "monai",
}
# what every model of the job trains with: the click recipe, Adam at 1e-3 with a cosine over the
# time budget; the budget ends the run, not an epoch count or early stopping (the job's own
# settings are added by job_recipe)
RECIPE = Recipe(
    interaction=InteractionSection(occlusion_prob=0.5, hint_scale_init=1.0),
    optimisation=OptimisationSection(lr=1e-3, lr_schedule="cosine", epochs=100000),
    validation=ValidationSection(select_on="mre3", patience=100000),
    output=OutputSection(checkpoint_every=0, quiet=True),
)
# start-up (imports, reading the pack) before a run's budget starts, and the copy after it
RESERVE_MINUTES = 1.0
# the budget is checked between epochs; a run is stopped this long after it should have ended
OVERSTAY_S = 45
PRINT_EVERY_EPOCHS = 10


@dataclass(frozen=True)
class ModelJob:
    name: str  # also the prefix of its pack folder and of its files in OUT
    model: ModelSection
    optional: bool = False  # trained only when its pack is there


MODEL_JOBS = (
    ModelJob("aasce", ModelSection(input=(512, 256), width=18, depth="full")),
    ModelJob("isbi", ModelSection(input=(640, 512), width=18, depth="full")),
    # the demo model: small enough to leave room in the tracked tree (issue #13)
    ModelJob(
        "phantom",
        ModelSection(input=(256, 128), width=8, depth="compact", ocr_channels=(32, 16), gate_channels=64),
        optional=True,
    ),
)
# --tiny: width-8 compact models at the packs' own input size, batches of 2
TINY_MODEL = ModelSection(width=8, depth="compact", ocr_channels=(16, 8))
TINY_BATCH = 2


# ------------------------------------------------------------------ checks before anything runs
def missing_modules() -> list[str]:
    missing = []
    for module, distribution in REQUIRED_MODULES.items():
        try:
            importlib.import_module(module)
        except ImportError as e:
            missing.append(f"{distribution} ({e})")
    return missing


def find_pack(packs_dir: Path, name: str, optional: bool = False) -> Path | None:
    found = sorted(p for p in packs_dir.glob(f"{name}-*") if (p / "manifest.json").is_file())
    if optional and not found:
        return None
    if len(found) != 1:
        raise SystemExit(
            f"{packs_dir}: expected one pack folder {name}-* with a manifest.json, found "
            f"{[p.name for p in found] or 'none'}"
        )
    return found[0]


def environment_lines(device: str) -> list[str]:
    import torch

    lines = [
        f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPU cores"
    ]
    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        props = torch.cuda.get_device_properties(0)
        lines.insert(
            0, f"GPU {props.name}, {props.total_memory / 2**30:.0f} GiB, compute capability {props.major}.{props.minor}"
        )
    else:
        lines.insert(0, "no GPU: device cpu")
    return lines


# ------------------------------------------------------------------ the training runs
def job_recipe(job: ModelJob, pack: Path, out: Path, args, workers: int, threads: int) -> Recipe:
    """The recipe of one model's run: :data:`RECIPE` with its model, its pack and the job's settings."""
    model, optimisation, output = job.model, RECIPE.optimisation, RECIPE.output
    if args.tiny:
        input_size = json.loads((pack / "manifest.json").read_text())["input_size"]
        model = dataclasses.replace(TINY_MODEL, input=tuple(input_size))
        optimisation = dataclasses.replace(optimisation, batch_size=TINY_BATCH)
        if not job.optional:  # the big models' weights come back in parts: so must the rehearsal's
            output = dataclasses.replace(output, max_shard_mb=args.tiny_shard_mb)
    optimisation = dataclasses.replace(
        optimisation,
        max_minutes=round(args.minutes - RESERVE_MINUTES, 2),
        max_steps=args.max_steps,
        seed=args.seed,
    )
    return dataclasses.replace(
        RECIPE,
        data=DataSection(pack=pack),
        model=model,
        optimisation=optimisation,
        runtime=RuntimeSection(device=args.device, threads=threads, workers=workers),
        output=dataclasses.replace(output, out=out),
    )


def train_command(job: ModelJob, pack: Path, out: Path, args, workers: int, threads: int) -> list[str]:
    recipe = job_recipe(job, pack, out, args, workers, threads)
    return [sys.executable, "-m", "interactive_keypoints.train", *recipe_arguments(recipe)]


def shown(line: str) -> bool:
    """Train's own lines worth showing: the first epochs, every few, and all that are not epochs."""
    if not line.startswith("epoch "):
        return True
    epoch = int(line.split(":", 1)[0].split()[1])
    return epoch < 3 or epoch % PRINT_EVERY_EPOCHS == 0


def run_side_by_side(commands: dict[str, list[str]], deadline: float, log) -> dict[str, int]:
    """Run the commands at once, each line to the log and the chosen ones to stdout; stop any
    still running at ``deadline`` (its best weights are already on disk). Exit codes by name."""
    lock = threading.Lock()

    def emit(name: str, line: str, to_stdout: bool) -> None:
        with lock:
            log.write(f"[{name}] {line}\n")
            log.flush()
            if to_stdout:
                print(f"[{name}] {line}", flush=True)

    def pump(name: str, stream) -> None:
        for raw in stream:
            line = raw.rstrip()
            if line:
                emit(name, line, shown(line))

    processes, readers = {}, []
    for name, command in commands.items():
        emit(name, "$ " + " ".join(command), False)
        processes[name] = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        readers.append(threading.Thread(target=pump, args=(name, processes[name].stdout), daemon=True))
        readers[-1].start()
    for name, process in processes.items():
        try:
            process.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            emit(name, "over its time budget: stopped (its best weights so far are kept)", True)
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    for reader in readers:
        reader.join(timeout=5)
    return {name: process.returncode for name, process in processes.items()}


# ------------------------------------------------------------------ what comes back
def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def trained(model_dirs: dict[str, Path]) -> dict[str, Path]:
    """The runs that wrote a model (a run stopped before its first validation wrote none)."""
    return {name: folder for name, folder in model_dirs.items() if (folder / "model.json").is_file()}


def weights_to_return(name: str, model_dir: Path) -> dict[str, Path]:
    """{name in OUT: file} for one model's weight files (the index is JSON: it goes in the archive)."""
    from .model_folders import WEIGHTS_INDEX_FILE
    from .model_io import weight_files

    return {f"{name}.{p.name}": p for p in weight_files(model_dir) if p.name != WEIGHTS_INDEX_FILE}


def records_archive(model_dirs: dict[str, Path], archive: Path) -> Path:
    """One archive of every model's JSON and CSV files, as ``NAME/file``."""
    with tarfile.open(archive, "w:gz") as tar:
        for name, model_dir in model_dirs.items():
            for record in sorted(model_dir.iterdir()):
                # checkpoint.json describes weights that stay behind
                if record.suffix in (".json", ".csv") and record.name != "checkpoint.json":
                    tar.add(record, arcname=f"{name}/{record.name}")
    return archive


def best_figures(name: str, model_dir: Path) -> str:
    metrics_path, summary_path = model_dir / "val_metrics.json", model_dir / "train_summary.json"
    if not metrics_path.is_file():
        return f"{name}: no validated weights"
    m = json.loads(metrics_path.read_text())
    s = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    peak = f", peak {s['peak_memory_gib']} GiB" if "peak_memory_gib" in s else ""
    return (
        f"{name}: best epoch {m['epoch']} of {s.get('epochs', '?')} ({s.get('elapsed_s', '?')} s{peak}): "
        f"val MRE {m['mre0_px']:.2f} px at 0 clicks, {m['mre3_px']:.2f} after {m['clicks']} "
        f"(manual {m['manual3_px']:.2f}, propagation gain {m['propagation_gain_px']:+.2f})"
    )


def check_returned(files: list[Path]) -> None:
    """Refuse what would not come back whole (SHA256SUMS, written last, is the one more file)."""
    if len(files) + 1 > MAX_RETURNED_FILES:
        raise SystemExit(
            f"{len(files) + 1} files for OUT, at most {MAX_RETURNED_FILES} come back: "
            f"{', '.join(str(p) for p in files)} and {SUMS_FILE}"
        )
    for path in files:
        if path.stat().st_size > MAX_RETURNED_BYTES:
            raise SystemExit(f"{path} is {path.stat().st_size} bytes: over the {MAX_RETURNED_BYTES} that come back")


def run_job(args) -> int:
    packs_dir, out = Path(args.packs_dir), Path(args.out_dir)
    missing = missing_modules()
    if missing:
        print(
            "cannot train, not importable: "
            + "; ".join(missing)
            + "\n(nothing is installed from the network: pip install --no-index --find-links .whl monai)",
            flush=True,
        )
        return 2
    packs = {job.name: find_pack(packs_dir, job.name, job.optional) for job in MODEL_JOBS}
    jobs = [job for job in MODEL_JOBS if packs[job.name] is not None]  # an optional pack may be absent
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise SystemExit(f"{out} is not empty")
    start = time.time()
    deadline = start + 60 * args.minutes - 60 * RESERVE_MINUTES / 2 + OVERSTAY_S
    scratch = Path(tempfile.mkdtemp(prefix="gpu_job-", dir=args.scratch))
    cores = os.cpu_count() or 2
    # the runs share the cores: loader workers + the main thread for each
    per_run = max(1, cores // len(jobs))
    workers = 0 if args.device == "cpu" else max(0, per_run - 2)
    threads = max(1, min(per_run, 2 if workers else per_run))
    with open(out / LOG_FILE, "w") as log:

        def say(line: str) -> None:
            print(line, flush=True)
            log.write(line + "\n")
            log.flush()

        for line in environment_lines(args.device):
            say(line)
        say(
            f"job: {args.minutes} min, packs {', '.join(f'{k}={v}' for k, v in packs.items())}, scratch {scratch}, "
            f"{workers} loader workers and {threads} threads per run" + (", tiny rehearsal models" if args.tiny else "")
        )
        commands = {
            job.name: train_command(job, packs[job.name], scratch / job.name, args, workers, threads) for job in jobs
        }
        codes = run_side_by_side(commands, deadline, log)
        say("exit codes: " + ", ".join(f"{k} {v}" for k, v in codes.items()))
        models = trained({job.name: scratch / job.name for job in jobs})
        chosen = {}
        for job in jobs:
            if job.name in models:
                chosen.update(weights_to_return(job.name, models[job.name]))
            say(best_figures(job.name, scratch / job.name))
        if models:
            chosen[RECORDS_ARCHIVE] = records_archive(models, scratch / RECORDS_ARCHIVE)
        check_returned([*chosen.values(), out / LOG_FILE])  # before anything more lands in OUT
        say(f"wall time {time.time() - start:.0f} s")
    for name, source in chosen.items():
        shutil.copyfile(source, out / name)
    files = [out / name for name in chosen] + [out / LOG_FILE]
    sums = [f"{sha256(p)}  {p.name}" for p in files]
    (out / SUMS_FILE).write_text("\n".join(sums) + "\n")
    for path, line in zip(files, sums):
        print(f"{line}  {path.stat().st_size} bytes")
    print(f"{sha256(out / SUMS_FILE)}  {SUMS_FILE}  {(out / SUMS_FILE).stat().st_size} bytes")
    if not args.keep_scratch:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0 if all(code == 0 for code in codes.values()) and len(files) > 1 else 1


# ------------------------------------------------------------------ back on CPU
def verified_files(returned: Path) -> list[Path]:
    """The files SHA256SUMS lists, each checked; refuses any it does not list but OUT holds."""
    listed = {}
    for line in (returned / SUMS_FILE).read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        if Path(name).name != name:
            raise ValueError(f"{SUMS_FILE}: {name!r} is not a plain file name")
        listed[name] = digest
    for name, digest in listed.items():
        actual = sha256(returned / name)
        if actual != digest:
            raise ValueError(f"{returned / name}: sha256 {actual}, {SUMS_FILE} says {digest}")
    unlisted = sorted(p.name for p in returned.iterdir() if p.name not in listed and p.name != SUMS_FILE)
    if unlisted:
        raise ValueError(f"{returned}: files not in {SUMS_FILE}: {', '.join(unlisted)}")
    return [returned / name for name in listed]


def unpack_records(archive: Path, models_dir: Path) -> dict[str, Path]:
    """Extract the archive's ``NAME/file`` JSON and CSV files into ``models_dir/NAME`` (nothing
    else is accepted: no other depth, no '..', no links). The model folders, by name."""
    folders = {}
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            parts = member.name.split("/")
            if (
                not member.isfile()
                or len(parts) != 2
                or any(part in ("", ".", "..") for part in parts)
                or Path(parts[1]).suffix not in (".json", ".csv")
            ):
                raise ValueError(f"{archive}: unexpected member {member.name!r}")
            folder = folders.setdefault(parts[0], models_dir / parts[0])
            folder.mkdir(parents=True, exist_ok=True)
            (folder / parts[1]).write_bytes(tar.extractfile(member).read())
    return folders


def join(returned: str | Path, models_dir: str | Path) -> dict[str, Path]:
    """Check the returned files, rebuild each model folder under ``models_dir`` and load it."""
    from .model_io import load_model

    returned, models_dir = Path(returned), Path(models_dir)
    files = verified_files(returned)
    if returned / RECORDS_ARCHIVE not in files:
        raise ValueError(f"{returned}: no {RECORDS_ARCHIVE} (no run wrote a model)")
    folders = unpack_records(returned / RECORDS_ARCHIVE, models_dir)
    for name, folder in folders.items():
        for weights in (p for p in files if p.name.startswith(name + ".") and p.suffix == ".safetensors"):
            shutil.copyfile(weights, folder / weights.name[len(name) + 1 :])
        model = load_model(folder)
        parameters = sum(p.numel() for p in model.network.parameters())
        print(
            f"{name}: loaded {folder} ({model.config.num_keypoints} keypoints, input "
            f"{'x'.join(map(str, model.config.input_size))}, width {model.config.width}, {parameters / 1e6:.2f} M parameters)"
        )
    return folders


# ------------------------------------------------------------------ command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m interactive_keypoints.gpu_job",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "packs_dir", type=Path, help="folder with the aasce-*, isbi-* and (optional) phantom-* packs (with --join: OUT)"
    )
    parser.add_argument("out_dir", type=Path, help="empty folder for what comes back (with --join: models folder)")
    parser.add_argument("--join", action="store_true", help="check returned files and rebuild + load the models")
    parser.add_argument("--minutes", type=float, default=7.5, help="the whole job's wall-clock budget")
    parser.add_argument("--max-steps", type=int, default=None, help="stop each run after this many steps (rehearsal)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="rehearsal: width-8 compact models at the packs' input")
    parser.add_argument("--tiny-shard-mb", type=float, default=3.0, help="with --tiny: shard size (to exercise shards)")
    parser.add_argument("--scratch", type=Path, default=None, help="where the runs write (default: the temp folder)")
    parser.add_argument("--keep-scratch", action="store_true")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.join:
        join(args.packs_dir, args.out_dir)
        return 0
    if args.minutes <= 2 * RESERVE_MINUTES:
        raise SystemExit(f"--minutes must exceed {2 * RESERVE_MINUTES}")
    return run_job(args)


if __name__ == "__main__":
    raise SystemExit(main())
