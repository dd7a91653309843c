"""The training recipe (interactive_keypoints.recipe): typed sections, the train command line
generated from them, recipe files (`train --config`) and the recipes committed with the models."""

import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys

import pytest
from conftest import REPO_ROOT
from safetensors.torch import load_file

from interactive_keypoints import cli, recipe, train
from interactive_keypoints.config import ModelConfig
from interactive_keypoints.errors import UsageError

SHIPPED = ("aasce-spine-68", "isbi-ceph-19", "phantom-spine-68")
# the flat train_config.json that train wrote before the recipe had sections (issue #25's arm A)
FLAT_CONFIG = {
    "pack": None, "dataset": "aasce", "data_root": "../shared/data/boostnet_labeldata", "split_seed": 0,
    "phantom_images": 64, "drop_disordered_labels": True, "width": 18, "depth": "compact", "input": [256, 128],
    "ocr_channels": [256, 128], "sigma": None, "no_gating": False, "gating_pool": "max", "gate_channels": 256,
    "morphology": "low", "n_pairs": 70, "n_triplets": 70, "morphology_weight": 0.01, "epochs": 60, "batch_size": 4,
    "lr": 0.0001, "lr_schedule": "cosine", "min_lr": 1e-06, "patience": 100, "iterative_max": 2,
    "click_pass_bn": "eval", "train_prev": "all", "clicked_loss_weight": 0.5, "hint_scale_init": None,
    "occlusion_prob": 0.5, "max_steps": None, "max_minutes": None, "budget_clock": "wall", "seed": 4,
    "device": "auto", "threads": 2, "no_fast": False, "save_dtype": "float16", "out": "runs/aasce-armA",
    "resume": True, "init_from": "models/aasce-spine-68", "transfer_from": None, "quiet": False, "workers": 0,
    "val_every": 2, "select_on": "mre3", "checkpoint_every": 1, "max_shard_mb": 15.0,
}  # fmt: skip
FLAT_COMMAND = (
    "--dataset aasce --data-root ../shared/data/boostnet_labeldata --width 18 --input 256x128 "
    "--init-from models/aasce-spine-68 --drop-disordered-labels --lr 1e-4 --lr-schedule cosine --min-lr 1e-6 "
    "--epochs 60 --patience 100 --threads 2 --seed 4 --occlusion-prob 0.5 --click-pass-bn eval "
    "--clicked-loss-weight 0.5 --select-on mre3 --val-every 2 --checkpoint-every 1 --resume --out runs/aasce-armA"
)


def parsed(argv) -> recipe.Recipe:
    return train.train_config(train.build_parser().parse_args([str(a) for a in argv]))


def committed_recipes():
    return sorted((REPO_ROOT / "models").glob("*/recipe-*.json"))


def test_every_shipped_model_has_its_recipes_and_each_is_valid():
    assert {path.parent.name for path in committed_recipes()} == set(SHIPPED)
    for path in committed_recipes():
        made = recipe.load(path)
        assert made.data.data_root is None  # a machine's path: given on the command line
        recipe.check(recipe.with_options(made, {"data_root": "ROOT"}))  # names its data and folder
        assert recipe.from_json(recipe.to_json(made)) == made
        assert parsed(["--config", path]) == made
        # the architecture is the shipped model's
        shipped = ModelConfig.load(path.parent / "model.json")
        model = made.model
        sigma = model.sigma if model.sigma is not None else 7.5 * model.input[0] / 512
        assert (model.input, model.width, model.gate_channels, not model.no_gating, model.gating_pool) == (
            shipped.input_size, shipped.width, shipped.gate_channels, shipped.gating, shipped.gating_pool
        ), path  # fmt: skip
        assert model.ocr_channels == (shipped.ocr_mid_channels, shipped.ocr_key_channels) and sigma == shipped.sigma
        assert tuple(shipped.stage_modules) == ((1, 1, 1) if model.depth == "compact" else (1, 4, 3))


def test_the_cards_point_at_their_recipes():
    for name in SHIPPED:
        card = (REPO_ROOT / "models" / name / "README.md").read_text()
        for path in (REPO_ROOT / "models" / name).glob("recipe-*.json"):
            assert f"--config models/{name}/{path.name}" in card, (name, path.name)


def test_options_beside_a_recipe_file_override_it(tmp_path):
    path = recipe.save(
        recipe.with_options(recipe.Recipe(), {"dataset": "phantom", "epochs": 7, "lr": 5e-4, "out": tmp_path / "a"}),
        tmp_path / "recipe.json",
    )
    made = parsed(["--config", path, "--lr", "0.002", "--epochs", "300", "--pack", tmp_path / "pack"])
    # given options win, also one at its default (300 epochs); the others are the file's
    assert (made.optimisation.lr, made.optimisation.epochs, made.output.out) == (0.002, 300, tmp_path / "a")
    # --pack replaces the file's --dataset (they exclude each other)
    assert (made.data.pack, made.data.dataset) == (tmp_path / "pack", None)
    assert parsed(["--config", path]).optimisation.epochs == 7


def test_a_recipe_file_may_give_only_some_sections_and_fields(tmp_path):
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps({"data": {"dataset": "phantom"}, "optimisation": {"max_minutes": 5}}))
    made = recipe.load(path)
    assert made.data.dataset == "phantom" and made.optimisation.max_minutes == 5.0
    assert made.model == recipe.ModelSection() and made.optimisation.epochs == 300


def test_an_older_flat_train_config_reads_as_the_recipe_of_its_options(tmp_path):
    # train_config.json as train wrote it before: one key per option (what --resume of such a run has)
    assert recipe.from_json(FLAT_CONFIG) == parsed(shlex.split(FLAT_COMMAND))
    path = tmp_path / "train_config.json"
    path.write_text(json.dumps(FLAT_CONFIG))
    assert parsed(["--config", path, "--threads", "1"]) == parsed([*shlex.split(FLAT_COMMAND), "--threads", "1"])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"modle": {}}, "unknown recipe sections modle"),
        ({"model": {"lr": 0.1}}, "unknown options lr in recipe section model"),
        ({"model": {"width": "wide"}}, "width = 'wide' is no int"),
        ({"model": {"depth": "deep"}}, "depth = 'deep' is no one of compact, full"),
        ({"model": {"input": [256]}}, "input = [256] is no tuple"),
        ({"data": {"drop_disordered_labels": 1}}, "drop_disordered_labels = 1 is no bool"),
        ({"format_version": 2}, "recipe format_version 2"),
        ({"colour": "red"}, "unknown options colour"),
        ([1, 2], "a recipe is a JSON object"),
    ],
)
def test_a_recipe_file_it_cannot_use_is_refused_by_name(content, message, tmp_path):
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(content))
    with pytest.raises(UsageError, match=re.escape(f"--config {path}: {message}")):
        recipe.load(path)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--config", "nowhere.json", "--out", "m"], "--config nowhere.json: No such file or directory"),
        (["--out", "m"], "no data: give --dataset or --pack"),
        (["--dataset", "phantom"], "no model folder: give --out"),
    ],
)
def test_train_says_what_the_recipe_lacks(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", *argv, "--quiet"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_the_default_shard_size_is_the_model_folders():
    from interactive_keypoints.model_io import MAX_SHARD_BYTES

    assert recipe.OutputSection().max_shard_mb == MAX_SHARD_BYTES / 1e6


@pytest.mark.slow
def test_train_config_of_the_phantom_recipe_gives_the_weights_of_its_options(tmp_path):
    # one step and a validation of 4 phantoms, from the committed recipe and from the same options
    shrink = ["--phantom-images", "4", "--epochs", "1", "--max-steps", "1", "--threads", "1", "--quiet"]
    config = REPO_ROOT / "models" / "phantom-spine-68" / "recipe-1-scratch.json"
    assert train.main(["--config", str(config), *shrink, "--out", str(tmp_path / "config")]) == 0
    options = [
        "--dataset",
        "phantom",
        "--width",
        "18",
        "--input",
        "256x128",
        "--epochs",
        "200",
        "--patience",
        "15",
        "--max-minutes",
        "30",
        "--click-pass-bn",
        "train",
    ]  # fmt: skip  (the card's command)
    assert train.main([*options, *shrink, "--out", str(tmp_path / "options")]) == 0
    recipes = [recipe.load(tmp_path / run / "train_config.json") for run in ("config", "options")]
    assert recipe.with_options(recipes[0], {"out": tmp_path / "options"}) == recipes[1]
    weights = [load_file(tmp_path / run / "model.safetensors") for run in ("config", "options")]
    assert weights[0].keys() == weights[1].keys() and all((weights[0][k] == weights[1][k]).all() for k in weights[0])


@pytest.mark.slow
def test_python_m_train_prints_a_usage_error_without_a_traceback(tmp_path):
    # what training_job launches: the same message and exit code as the cli
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT / "InteractiveKeypoints"))
    result = subprocess.run(
        [sys.executable, "-m", "interactive_keypoints.train", "--pack", str(tmp_path / "nowhere"),
         "--out", str(tmp_path / "m"), "--quiet"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and "nowhere does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_hold_out_folds_partition_the_training_images_and_leave_validation_alone():
    """Cross-fitting (#25): fold I of K is left out of training, listed as skipped."""
    data = recipe.DataSection(dataset="phantom", phantom_images=12)
    full_train, full_val, _ = train.load_splits(data, (256, 128))
    held = []
    for fold in ("1/2", "2/2"):
        kept, val, record = train.load_splits(dataclasses.replace(data, hold_out_fold=fold), (256, 128))
        assert val.ids == full_val.ids
        skipped = [sample_id for sample_id, reason in record["skipped"]["train"] if fold in reason]
        assert sorted(kept.ids + skipped) == sorted(full_train.ids) and not set(kept.ids) & set(skipped)
        assert train.used_ids(record)["train"] == kept.ids
        held.append(set(skipped))
    assert held[0].isdisjoint(held[1]) and held[0] | held[1] == set(full_train.ids)


def test_a_run_holding_out_a_fold_resumes_only_with_that_fold(tmp_path):
    shrink = ["--phantom-images", "6", "--epochs", "1", "--max-steps", "1", "--threads", "1", "--quiet"]
    common = ["--dataset", "phantom", "--width", "18", "--input", "256x128", *shrink, "--out", str(tmp_path / "run")]
    assert train.main([*common, "--hold-out-fold", "1/2", "--checkpoint-every", "1"]) == 0
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert any("fold 1/2" in reason for _, reason in split["skipped"]["train"])
    saved = recipe.load(tmp_path / "run" / "train_config.json")
    assert saved.data.hold_out_fold == "1/2"
    with pytest.raises(UsageError, match="different split.*--hold-out-fold"):
        train.main([*common, "--hold-out-fold", "2/2", "--epochs", "2", "--resume"])


@pytest.mark.parametrize("fold", ["0/2", "3/2", "1/1", "half"])
def test_a_fold_that_is_not_one_of_k_is_refused(fold, tmp_path, capsys):
    with pytest.raises(SystemExit):
        train.main(["--dataset", "phantom", "--hold-out-fold", fold, "--out", str(tmp_path / "run")])
    assert "--hold-out-fold" in capsys.readouterr().err
