"""The command line, run in-process with a tiny random model saved to a temporary folder."""

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from interactive_keypoints import cli
from interactive_keypoints.conventions import SPINE
from interactive_keypoints.markups import read_markups_points
from interactive_keypoints.model_io import build_model, save_model
from interactive_keypoints.tiny_model import tiny_config


@pytest.fixture
def model_dir(tmp_path):
    torch.manual_seed(0)
    model = build_model(tiny_config(landmark_names=list(SPINE.names)))
    return save_model(tmp_path / "tiny-model", model)


@pytest.fixture
def png(tmp_path, phantom):
    path = tmp_path / "images" / "spine.png"
    path.parent.mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(np.round(phantom.image * 255).astype(np.uint8)), str(path))
    return path


def read_csv_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_predict_writes_markups_and_csv_next_to_the_image(model_dir, png, phantom):
    assert cli.main(["predict", str(png), "--model", str(model_dir), "--device", "cpu"]) == 0
    markups = read_markups_points(png.with_name("spine.mrk.json"))
    assert markups.names == list(SPINE.names)
    assert set(markups.states) == {"predicted"}
    h, w = phantom.image.shape
    assert np.all((markups.points >= -0.5) & (markups.points <= [w - 0.5, h - 0.5]))
    rows = read_csv_rows(png.with_name("spine.csv"))
    assert [r["name"] for r in rows] == list(SPINE.names)
    # the CSV and the point list hold the same positions; a PNG has no spacing, so no mm
    np.testing.assert_allclose([[float(r["x_px"]), float(r["y_px"])] for r in rows], markups.points, atol=1e-3)
    assert all(r["x_mm"] == "" for r in rows)


@pytest.mark.slow
def test_predict_into_out_folder_with_overlay(model_dir, png, tmp_path):
    out = tmp_path / "results"
    assert cli.main(["predict", str(png), "--model", str(model_dir), "--out", str(out), "--overlay"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["spine.csv", "spine.mrk.json", "spine.png"]
    assert not png.with_name("spine.mrk.json").exists()
    assert sitk.ReadImage(str(out / "spine.png")).GetSize()[0] > 100


@pytest.mark.slow
def test_corrupt_image_is_reported_and_the_others_still_run(model_dir, png, tmp_path, capsys):
    corrupt = tmp_path / "images" / "broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    code = cli.main(["predict", str(corrupt), str(png), "--model", str(model_dir)])
    err = capsys.readouterr().err
    assert code == 2
    assert any(line.startswith("error:") and "broken.png" in line for line in err.splitlines())
    assert "Traceback" not in err
    assert png.with_name("spine.mrk.json").is_file(), "the good image was still processed"


def test_missing_model_folder_is_a_one_line_error(png, tmp_path, capsys):
    code = cli.main(["predict", str(png), "--model", str(tmp_path / "no-such-model")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error:") and "no-such-model" in err
    assert "Traceback" not in err


def test_every_user_error_is_a_keypoints_error_and_keeps_its_builtin_base():
    # the CLI prints KeypointsError as a message; older callers still catch the built-in base
    from interactive_keypoints.config import ModelFormatError
    from interactive_keypoints.data.common import DatasetNotFoundError
    from interactive_keypoints.data.pack import PackError
    from interactive_keypoints.errors import KeypointsError
    from interactive_keypoints.imaging import ImageError
    from interactive_keypoints.markups import MarkupsError
    from interactive_keypoints.mrml_logic import LogicBusyError
    from interactive_keypoints.session import OutsideImageError, SessionBusyError

    bases = {
        ModelFormatError: ValueError,
        ImageError: ValueError,
        PackError: ValueError,
        MarkupsError: ValueError,
        OutsideImageError: ValueError,
        DatasetNotFoundError: FileNotFoundError,
        SessionBusyError: RuntimeError,
        LogicBusyError: RuntimeError,
    }
    for error_class, builtin in bases.items():
        assert issubclass(error_class, KeypointsError) and issubclass(error_class, builtin), error_class


def test_a_keypoints_error_is_a_message_and_a_bug_is_a_traceback(monkeypatch, capsys):
    from interactive_keypoints import demo
    from interactive_keypoints.errors import KeypointsError

    def fails_with(error):
        def run(args):
            raise error

        return run

    monkeypatch.setattr(demo, "run", fails_with(KeypointsError("the image is 3-D")))
    assert cli.main(["demo"]) == 2
    assert capsys.readouterr().err.strip() == "error: the image is 3-D"
    monkeypatch.setattr(demo, "run", fails_with(ZeroDivisionError("a bug")))
    with pytest.raises(ZeroDivisionError):
        cli.main(["demo"])


def test_unknown_device_is_a_usage_error(png, model_dir):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["predict", str(png), "--model", str(model_dir), "--device", "tpu"])
    assert exit_info.value.code == 2


@pytest.mark.slow
def test_demo_simulates_one_correction_and_writes_everything(model_dir, tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--model", str(model_dir), "--out", str(out), "--device", "cpu"]) == 0
    for name in ("phantom.png", "before.png", "after.png", "keypoints.mrk.json", "keypoints.csv"):
        assert (out / name).is_file(), name
    markups = read_markups_points(out / "keypoints.mrk.json")
    assert markups.states.count("user-fixed") == 1
    rows = read_csv_rows(out / "keypoints.csv")
    assert len(rows) == 68 and all(r["x_mm"] != "" for r in rows)
    # the corrected landmark sits exactly on the phantom's truth for that landmark
    from interactive_keypoints.phantom import make_spine_phantom

    truth = make_spine_phantom(0).points
    k = markups.states.index("user-fixed")
    np.testing.assert_allclose(markups.points[k], truth[k], atol=1e-6)
    stdout = capsys.readouterr().out
    assert "MRE before" in stdout and "MRE after" in stdout and "keypoints.mrk.json" in stdout


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert "0.1.0" in capsys.readouterr().out


def test_help_lists_subcommands_without_importing_torch():
    # a fresh interpreter: this test process has torch loaded already
    script = (
        "import sys; from interactive_keypoints import cli; "
        "text = cli.build_parser(['--help']).format_help(); "
        "print('demo' in text and 'predict' in text, 'torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["True", "False"]


def test_every_subcommand_names_a_module_with_a_command_line():
    import ast
    import importlib.util

    for name, (module_name, _) in cli.SUBCOMMANDS.items():
        spec = importlib.util.find_spec(module_name)
        assert spec is not None, f"{name}: no module {module_name}"
        # read, not imported: 'serve' needs the web extra
        defined = {
            node.name for node in ast.parse(Path(spec.origin).read_text()).body if isinstance(node, ast.FunctionDef)
        }
        assert {"add_arguments", "run"} <= defined, f"{name}: {module_name} lacks add_arguments or run"


@pytest.mark.slow
def test_predict_writes_the_models_measurements_next_to_the_points(tmp_path, png):
    import json

    torch.manual_seed(0)
    model = build_model(tiny_config(landmark_names=list(SPINE.names), measurements="aasce-cobb"))
    folder = save_model(tmp_path / "cobb-model", model)
    out = tmp_path / "results"
    assert cli.main(["predict", str(png), "--model", str(folder), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "spine.csv", "spine.measurements.csv", "spine.measurements.json", "spine.mrk.json"]  # fmt: skip
    records = json.loads((out / "spine.measurements.json").read_text())["measurements"]
    assert [r["name"] for r in records] == ["Cobb MT", "Cobb PT", "Cobb TL"]
    # the same points, measured again, give the same angles
    from interactive_keypoints.measurements import cobb_angles

    points = np.array([[float(r["x_px"]), float(r["y_px"])] for r in read_csv_rows(out / "spine.csv")])
    height = sitk.ReadImage(str(png)).GetSize()[1]
    assert [r["value"] for r in records] == pytest.approx(
        [m.value for m in cobb_angles(points, image_height=height)], abs=1e-3
    )
    rows = read_csv_rows(out / "spine.measurements.csv")
    assert [r["name"] for r in rows] == ["Cobb MT", "Cobb PT", "Cobb TL"] and rows[0]["unit"] == "deg"


# ------------------------------------------------------------------ usage errors: a message, exit 2
def assert_usage_error(argv, message, capsys):
    """``argv`` is refused as argparse refuses a bad option: one line naming the problem, exit 2."""
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert code == 2


def test_usage_error_is_a_keypoints_error_and_a_value_error():
    from interactive_keypoints.errors import KeypointsError, UsageError

    assert issubclass(UsageError, KeypointsError) and issubclass(UsageError, ValueError)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--limit", "0"], "--limit 0 must be at least 1"),
        (["--sample", "0"], "--sample 0 must be at least 1"),
        (["--limit", "1", "--sample", "1"], "--limit (the first N images) and --sample (N images at random) exclude"),
        (["--max-clicks", "-1"], "--max-clicks -1 must be 0 or more"),
        (["--max-clicks", "3", "--noc-clicks", "4"], "--noc-clicks 4 must be between 0 and --max-clicks 3"),
        (["--click-noise", "-1"], "--click-noise -1.0 must be 0 or more"),
    ],
)
def test_evaluate_option_checks_come_before_the_model_is_loaded(options, message, tmp_path, capsys):
    # the model folder does not exist: the options are refused before anything is read
    argv = ["evaluate", "--model", str(tmp_path / "not-read"), "--dataset", "phantom", "--out", str(tmp_path / "e")]
    assert_usage_error([*argv, *options], message, capsys)
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--split", "tset"], "phantom data has splits ['test', 'train', 'val'], not 'tset'"),
        (["--dataset", "aasce"], "dataset 'aasce' needs a root folder (--data-root)"),
        (["--drop-disordered-labels"], "--drop-disordered-labels applies to the AASCE dataset only"),
        (["--dataset", "phantom-hidden"], "the model has 68 keypoints, the dataset 16"),
    ],
)
def test_evaluate_refuses_a_dataset_the_options_do_not_give(options, message, model_dir, tmp_path, capsys):
    argv = ["evaluate", "--model", str(model_dir), "--dataset", "phantom", "--phantom-images", "1"]
    assert_usage_error([*argv, "--out", str(tmp_path / "e"), *options], message, capsys)


def test_evaluate_refuses_mm_on_images_without_a_spacing_before_the_run(model_dir, tmp_path, capsys):
    from interactive_keypoints.phantom import write_phantom_dataset

    write_phantom_dataset(tmp_path / "pngs", n=1, seed=0, height=128, width=64)  # PNG: no pixel spacing
    argv = ["evaluate", "--model", str(model_dir), "--dataset", "folder", "--data-root", str(tmp_path / "pngs")]
    argv += ["--split", "all", "--unit", "mm", "--out", str(tmp_path / "e")]
    assert_usage_error(argv, "--unit mm: folder has no known pixel spacing; give --unit px", capsys)
    assert not (tmp_path / "e").exists()


@pytest.mark.slow
def test_evaluate_refuses_a_review_score_the_model_cannot_give(model_dir, tmp_path, capsys):
    argv = ["evaluate", "--model", str(model_dir), "--dataset", "phantom", "--phantom-images", "1", "--quiet"]
    argv += ["--max-clicks", "1", "--user", "guided", "--review-score", "morphology", "--out", str(tmp_path / "e")]
    assert_usage_error(argv, "the 'morphology' review score needs a morphology.json", capsys)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--pack", "p", "--data-root", "d"], "--pack holds the data: give --pack or --data-root, not both"),
        (["--dataset", "phantom", "--phantom-images", "0"], "empty split: 0 train / 0 val images"),
    ],
)
def test_train_refuses_options_that_give_no_data(options, message, tmp_path, capsys):
    assert_usage_error(["train", *options, "--out", str(tmp_path / "m"), "--quiet"], message, capsys)


@pytest.mark.slow
def test_train_refuses_an_init_model_of_another_width(model_dir, tmp_path, capsys):
    argv = ["train", "--dataset", "phantom", "--phantom-images", "2", "--input", "128x64", "--quiet"]
    argv += ["--width", "12", "--init-from", str(model_dir), "--out", str(tmp_path / "wide")]
    assert_usage_error(argv, f"--init-from {model_dir}: its model differs in width", capsys)


def test_train_local_refuses_a_dataset_of_other_landmarks(model_dir, tmp_path, capsys):
    argv = ["train-local", "--model", str(model_dir), "--dataset", "phantom-hidden", "--phantom-images", "1"]
    assert_usage_error(
        [*argv, "--out", str(tmp_path / "local")], f"{model_dir} has 68 landmarks, the dataset 16", capsys
    )


def test_pack_refuses_the_label_order_filter_outside_aasce(tmp_path, capsys):
    argv = [
        "pack",
        "--dataset",
        "phantom",
        "--drop-disordered-labels",
        "--input",
        "64x32",
        "--out",
        str(tmp_path / "p"),
    ]
    assert_usage_error(argv, "--drop-disordered-labels applies to the AASCE dataset only", capsys)


def test_the_dataset_options_are_declared_once_with_each_commands_phantom_default():
    # train, train-local and pack: 64 phantoms a split; evaluate: the first 16 of them
    defaults = {}
    for name in ("train", "train-local", "pack", "evaluate"):
        parser = cli.build_parser([name])
        sub = next(a for a in parser._actions if a.dest == "command").choices[name]
        actions = {a.dest: a for a in sub._actions}
        assert {"dataset", "data_root", "split_seed", "phantom_images", "drop_disordered_labels"} <= set(actions)
        assert actions["data_root"].help == "the dataset's own top folder"
        defaults[name] = actions["phantom_images"].default
    assert defaults == {"train": 64, "train-local": 64, "pack": 64, "evaluate": 16}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--max-sessions", "0"], "--max-sessions must be at least 1, not 0"),
        (["--spare-sessions", "-1"], "--spare-sessions cannot be negative (-1)"),
        (["--keep-autosaves-days", "-1"], "--keep-autosaves-days cannot be negative (-1)"),
        (["--data-root", "no-such-folder"], "--data-root no-such-folder is not a folder"),
    ],
)
def test_serve_refuses_bad_options_by_name_before_it_listens(options, message, tmp_path, capsys):
    pytest.importorskip("aiohttp")
    code = cli.main(["serve", "--port", "0", "--autosave-dir", str(tmp_path / "autosave"), *options])
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines() == [f"interactive-keypoints serve: {message}"]
    assert code == 2
