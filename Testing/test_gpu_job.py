"""The GPU job (interactive_keypoints.gpu_job) rehearsed on CPU, and its join step."""

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from interactive_keypoints import gpu_job
from interactive_keypoints.model_io import load_model

PACKAGE_ROOT = Path(gpu_job.__file__).resolve().parent.parent


def write_sums(folder: Path) -> None:
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}" for p in sorted(folder.iterdir())]
    (folder / gpu_job.SUMS_FILE).write_text("\n".join(lines) + "\n")


def test_verified_files_refuses_a_changed_or_unlisted_file(tmp_path):
    (tmp_path / "a.safetensors").write_bytes(b"weights")
    write_sums(tmp_path)
    assert [p.name for p in gpu_job.verified_files(tmp_path)] == ["a.safetensors"]
    (tmp_path / "a.safetensors").write_bytes(b"weightz")
    with pytest.raises(ValueError, match="sha256"):
        gpu_job.verified_files(tmp_path)
    (tmp_path / "a.safetensors").write_bytes(b"weights")
    (tmp_path / "extra.bin").write_bytes(b"?")
    with pytest.raises(ValueError, match="not in SHA256SUMS"):
        gpu_job.verified_files(tmp_path)


def test_unpack_records_takes_only_model_folders_of_json_and_csv(tmp_path):
    (tmp_path / "model.json").write_text("{}")

    def archive(path, *names):
        with tarfile.open(path, "w:gz") as tar:
            for name in names:
                tar.add(tmp_path / "model.json", arcname=name)
        return path

    good = archive(tmp_path / "good.tar.gz", "aasce/model.json", "isbi/model.json")
    folders = gpu_job.unpack_records(good, tmp_path / "models")
    assert folders == {"aasce": tmp_path / "models" / "aasce", "isbi": tmp_path / "models" / "isbi"}
    assert (tmp_path / "models" / "isbi" / "model.json").read_text() == "{}"
    for bad in ("../model.json", "aasce/../../model.json", "model.json", "aasce/weights.bin", "a/b/model.json"):
        with pytest.raises(ValueError, match="unexpected member"):
            gpu_job.unpack_records(archive(tmp_path / "bad.tar.gz", bad), tmp_path / "models")


def test_shown_keeps_first_and_every_tenth_epoch_and_other_lines():
    lines = [f"epoch {e}: 1.0 img/s" for e in range(25)] + ["device CPU"]
    assert [line for line in lines if gpu_job.shown(line)] == [
        "epoch 0: 1.0 img/s",
        "epoch 1: 1.0 img/s",
        "epoch 2: 1.0 img/s",
        "epoch 10: 1.0 img/s",
        "epoch 20: 1.0 img/s",
        "device CPU",
    ]


def test_paper_scale_train_commands_are_valid_train_arguments(tmp_path):
    from interactive_keypoints import train

    args = gpu_job.build_parser().parse_args([str(tmp_path), str(tmp_path / "out")])
    recipes = {
        job.name: gpu_job.job_recipe(job, tmp_path / f"{job.name}-pack", tmp_path / job.name, args, 6, 2)
        for job in gpu_job.MODEL_JOBS
    }
    parsed = {
        job.name: train.train_config(
            train.build_parser().parse_args(
                gpu_job.train_command(job, tmp_path / f"{job.name}-pack", tmp_path / job.name, args, 6, 2)[3:]
            )
        )
        for job in gpu_job.MODEL_JOBS
    }
    assert parsed == recipes  # the command gives the job's recipe
    models = {name: run.model for name, run in parsed.items()}
    assert models["aasce"].input == (512, 256) and models["isbi"].input == (640, 512)
    for name in ("aasce", "isbi"):
        assert (models[name].width, models[name].depth) == (18, "full")
    demo = models["phantom"]  # the demo model: under 2 MB in fp16 (test_model.py sizes this architecture)
    assert (demo.input, demo.width, demo.depth, demo.gate_channels, demo.ocr_channels) == (
        (256, 128),
        8,
        "compact",
        64,
        (32, 16),
    )
    for run in parsed.values():
        assert (run.interaction.occlusion_prob, run.interaction.hint_scale_init) == (0.5, 1.0)
        assert run.validation.select_on == "mre3"
        assert (run.optimisation.lr, run.optimisation.lr_schedule) == (1e-3, "cosine")
        # the runs end by their budget, inside the job's, leaving time for start-up and the copy
        assert run.optimisation.max_minutes == args.minutes - gpu_job.RESERVE_MINUTES
        assert run.optimisation.max_steps is None
        assert (run.runtime.workers, run.runtime.threads, run.data.pack) == (
            6,
            2,
            tmp_path / f"{run.output.out.name}-pack",
        )


@pytest.mark.slow
def test_job_names_a_missing_module_and_trains_nothing(tmp_path):
    blocker = tmp_path / "no_monai"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['monai'] = None\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(blocker), str(PACKAGE_ROOT)]))
    result = subprocess.run(
        [sys.executable, "-m", "interactive_keypoints.gpu_job", str(tmp_path), str(tmp_path / "out")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert "not importable: monai" in result.stdout and "--find-links .whl" in result.stdout
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_rehearsal_without_simpleitk_then_join(tmp_path):
    from interactive_keypoints.data.pack import pack_dataset

    packs = tmp_path / "packs"
    pack_dataset("phantom", None, (128, 64), packs / "aasce-phantom", phantom_images=8, progress=False)
    shutil.copytree(packs / "aasce-phantom", packs / "isbi-phantom")  # one pack serves all three runs
    shutil.copytree(packs / "aasce-phantom", packs / "phantom-phantom")
    blocker = tmp_path / "no_simpleitk"  # the GPU machine has no SimpleITK: prove the job needs none
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['SimpleITK'] = None\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(blocker), str(PACKAGE_ROOT)]))
    out = tmp_path / "out"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "interactive_keypoints.gpu_job",
            str(packs),
            str(out),
            "--tiny",
            "--max-steps",
            "2",
            "--device",
            "cpu",
            "--minutes",
            "4",
            "--scratch",
            str(tmp_path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0] == "no GPU: device cpu" and lines[1].startswith("torch ")
    assert any(line.startswith("aasce: best epoch 0") for line in lines)

    returned = sorted(p.name for p in out.iterdir())
    assert len(returned) <= gpu_job.MAX_RETURNED_FILES
    assert {gpu_job.RECORDS_ARCHIVE, "gpu_job.log", "SHA256SUMS"} <= set(returned)
    assert "aasce.model-00001-of-00002.safetensors" in returned  # sharded, as the real models will be
    for name in returned:
        assert (out / name).stat().st_size <= gpu_job.MAX_RETURNED_BYTES
        assert any(line.startswith(hashlib.sha256((out / name).read_bytes()).hexdigest()) for line in lines)

    folders = gpu_job.join(out, tmp_path / "models")
    assert sorted(folders) == ["aasce", "isbi", "phantom"]
    for name, folder in folders.items():
        weights = "model.safetensors" if name == "phantom" else "model.safetensors.index.json"  # one part or several
        assert {weights, "val_metrics.json", "training_log.csv", "split.json"} <= {p.name for p in folder.iterdir()}
        assert load_model(folder).config.width == 8
