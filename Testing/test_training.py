"""Training and evaluation end to end on generated phantoms (no ../shared needed)."""

import argparse
import csv
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from contextlib import nullcontext

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, shared_dataset
from safetensors.torch import load_file

from interactive_keypoints import cli, evaluate, recipe, train
from interactive_keypoints.model_io import load_model
from interactive_keypoints.session import KeypointSession

TINY = ["--dataset", "phantom", "--phantom-images", "4", "--width", "8", "--input", "128x64",
        "--batch-size", "2", "--quiet"]  # fmt: skip


def run_train(out, *extra):
    return train.main([*TINY, "--out", str(out), *extra])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("model")
    assert run_train(out, "--epochs", "2") == 0
    return out


@pytest.mark.slow
def test_train_writes_a_model_folder_the_session_loads(trained, phantom):
    for name in [
        "model.safetensors",
        "model.json",
        "morphology.json",
        "split.json",
        "training_log.csv",
        "checkpoint.safetensors",
        "checkpoint.json",
        "train_summary.json",
        "train_config.json",
        "val_metrics.json",
    ]:
        assert (trained / name).is_file(), name
    model = load_model(trained)
    assert model.config.num_keypoints == 68 and model.config.landmark_names[0] == "T1-top-left"
    assert len(model.config.flip_pairs) == 34
    prediction = KeypointSession(model, phantom.image).predict()
    assert prediction.points.shape == (68, 2)
    rows = list(csv.DictReader(open(trained / "training_log.csv")))
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert all(float(r["images_per_s"]) > 0 and np.isfinite(float(r["val_mre_px"])) for r in rows)
    morphology = json.loads((trained / "morphology.json").read_text())
    assert morphology["variant"] == "low" and len(morphology["pairs"]) == 70 and len(morphology["triplets"]) == 70
    split = json.loads((trained / "split.json").read_text())
    assert set(split["ids"]["train"]).isdisjoint(split["ids"]["val"])


@pytest.mark.slow
def test_checkpoint_resumes_exactly(tmp_path, trained):
    resumed = tmp_path / "resumed"
    assert run_train(resumed, "--epochs", "1") == 0
    assert run_train(resumed, "--epochs", "2", "--resume") == 0
    straight = load_file(trained / "checkpoint.safetensors")
    again = load_file(resumed / "checkpoint.safetensors")
    assert straight.keys() == again.keys()
    for key in straight:
        assert (straight[key] == again[key]).all(), key
    assert json.loads((resumed / "checkpoint.json").read_text())["epoch"] == 2
    assert len(list(csv.DictReader(open(resumed / "training_log.csv")))) == 2


@pytest.mark.slow
def test_resume_refuses_a_different_split(tmp_path, trained):
    copy = tmp_path / "copy"
    shutil.copytree(trained, copy)
    with pytest.raises(ValueError, match="different split"):
        run_train(copy, "--epochs", "3", "--resume", "--split-seed", "5")


def test_resume_compares_the_samples_used_not_only_the_split_ids():
    record = {"ids": {"train": ["a", "b"], "val": ["c"]}, "skipped": {"train": [], "val": []}}
    dropped = {**record, "skipped": {"train": [["b", "vertebrae out of order"]], "val": []}}
    assert train.used_ids(record) == {"train": ["a", "b"], "val": ["c"]}
    assert train.used_ids(dropped) != train.used_ids(record)


def test_dropping_disordered_labels_is_refused_outside_aasce(tmp_path):
    with pytest.raises(ValueError, match="AASCE dataset only"):
        run_train(tmp_path / "phantom", "--epochs", "1", "--drop-disordered-labels")


def train_one_step_at_lr_0(out, *flags, source):
    """One step at learning rate 0 into ``out``: the source's and the result's tensors."""
    assert run_train(out, "--epochs", "1", "--max-steps", "1", "--lr", "0", "--min-lr", "0", *flags) == 0
    return load_file(source / "model.safetensors"), load_file(out / "model.safetensors")


@pytest.mark.slow
def test_fine_tuning_starts_from_the_given_weights(tmp_path, trained):
    # lr 0: the learned weights must come out as they went in (BN running stats do move in train mode)
    tuned = tmp_path / "tuned"
    source, result = train_one_step_at_lr_0(
        tuned, "--lr-schedule", "cosine", "--init-from", str(trained), source=trained
    )
    learned = [key for key in source if "running_" not in key and "num_batches" not in key]
    assert len(learned) > 100
    assert all((source[key] == result[key]).all() for key in learned)
    assert json.loads((tuned / "checkpoint.json").read_text())["init_from"] == str(trained)


@pytest.mark.slow
def test_fine_tuning_refuses_another_architecture(tmp_path, trained):
    with pytest.raises(ValueError, match="differs in width"):
        run_train(tmp_path / "wide", "--epochs", "1", "--max-steps", "1", "--width", "16", "--init-from", str(trained))
    # every architecture field counts, also those the train command has no flag for
    other_head = dataclasses.replace(load_model(trained).config, ocr_mid_channels=24)
    with pytest.raises(ValueError, match="differs in ocr_mid_channels"):
        train.initial_weights(trained, other_head)
    # what runs after the network is no part of its weights: a shipped spine model has its field on
    with_field = dataclasses.replace(load_model(trained).config, correction_length=0.1, correction_noise=0.3)
    assert train.initial_weights(trained, with_field).keys() == load_model(trained).network.state_dict().keys()


@pytest.mark.slow
def test_transfer_takes_the_tensors_that_fit(tmp_path, trained):
    # a model without gating: every tensor but the gate's can come from the gated source
    target = tmp_path / "transfer"
    source, result = train_one_step_at_lr_0(target, "--no-gating", "--transfer-from", str(trained), source=trained)
    learned = [key for key in result if "running_" not in key and "num_batches" not in key]
    assert not any(key.startswith("gate.") for key in result) and any(key.startswith("gate.") for key in source)
    assert all((source[key] == result[key]).all() for key in learned)


def test_cosine_schedule_decays_from_lr_to_min_lr():
    args = recipe.OptimisationSection(lr=1e-3, min_lr=1e-5, epochs=10, lr_schedule="cosine")
    rates = [train.learning_rate(args, e) for e in range(11)]
    assert rates[0] == pytest.approx(1e-3) and rates[10] == pytest.approx(1e-5)
    assert all(a > b for a, b in zip(rates, rates[1:]))
    assert train.learning_rate(argparse.Namespace(lr=1e-3, lr_schedule="constant"), 7) == 1e-3


def test_cosine_schedule_runs_over_the_time_budget_when_there_is_one():
    args = recipe.OptimisationSection(lr=1e-3, min_lr=1e-5, epochs=300, lr_schedule="cosine", max_minutes=10)
    assert train.learning_rate(args, 0, elapsed_s=0) == pytest.approx(1e-3)
    assert train.learning_rate(args, 1, elapsed_s=300) == pytest.approx((1e-3 + 1e-5) / 2)
    assert train.learning_rate(args, 2, elapsed_s=600) == pytest.approx(1e-5)
    assert train.learning_rate(args, 2, elapsed_s=900) == pytest.approx(1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(
    "flags", [["--no-gating", "--morphology", "off"], ["--gating-pool", "avg", "--morphology", "high"]]
)
def test_ablation_switches_train(tmp_path, flags):
    assert run_train(tmp_path / "m", "--epochs", "1", "--max-steps", "1", *flags) == 0
    config = json.loads((tmp_path / "m" / "model.json").read_text())
    assert config["gating"] == ("--no-gating" not in flags)


@pytest.mark.slow
def test_torchrun_ddp_replicas_agree(tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "interactive_keypoints.train", *TINY, "--epochs", "2", "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["world_size"] == 2
    first, second = summary["replica_fingerprints"]
    assert first == second
    assert summary["steps"] == 2


@pytest.mark.slow
def test_evaluate_writes_the_protocol_outputs(tmp_path, trained):
    out = tmp_path / "eval"
    code = cli.main(["evaluate", "--model", str(trained), "--dataset", "phantom", "--phantom-images", "2",
                          "--max-clicks", "3", "--targets", "20", "40", "--out", str(out), "--quiet"])  # fmt: skip
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["images"] == 2
    assert set(metrics["NoC"]) == {"3@20", "3@40"} and set(metrics["FR"]) == {"3@20", "3@40"}
    model_curve, manual_curve = metrics["MRE_by_clicks"]["model"], metrics["MRE_by_clicks"]["manual"]
    assert len(model_curve) == len(manual_curve) == 4
    assert model_curve[0] == manual_curve[0]  # same start
    assert all(b <= a + 1e-9 for a, b in zip(manual_curve, manual_curve[1:]))  # manual fixes only help
    assert {"2mm", "2.5mm", "3mm", "4mm"} == set(metrics["SDR"])  # phantoms have a spacing
    rows = list(csv.DictReader(open(out / "per_image.csv")))
    assert len(rows) == 2
    per_image = np.array([[float(r[f"model_mre_px_{c}"]) for c in range(4)] for r in rows])
    np.testing.assert_allclose(per_image.mean(0), model_curve, rtol=1e-3)
    assert (out / "mre_vs_clicks.png").stat().st_size > 1000 and (out / "noc_vs_target.png").stat().st_size > 1000


@pytest.mark.slow
def test_evaluate_writes_the_propagation_gain(tmp_path, trained):
    out = tmp_path / "eval"
    code = cli.main(["evaluate", "--model", str(trained), "--dataset", "phantom", "--phantom-images", "2",
                     "--max-clicks", "4", "--targets", "20", "--threads", "1", "--out", str(out), "--quiet"])  # fmt: skip
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    gain = metrics["propagation_gain"]
    assert gain["clicks"] == [1, 2, 3]  # 5 is beyond --max-clicks 4
    assert gain["near_rule"].startswith("spine")
    model_curve, manual_curve = metrics["MRE_by_clicks"]["model"], metrics["MRE_by_clicks"]["manual"]
    expected = [manual_curve[c] - model_curve[c] for c in gain["clicks"]]
    np.testing.assert_allclose(gain["all"]["px"], expected)
    np.testing.assert_allclose(gain["all"]["percent"], [100 * e / manual_curve[c] for e, c in zip(expected, [1, 2, 3])])
    # phantoms have a spacing, so the gain is also in mm
    model_mm, manual_mm = metrics["MRE_by_clicks_mm"]["model"], metrics["MRE_by_clicks_mm"]["manual"]
    np.testing.assert_allclose(gain["all"]["mm"], [manual_mm[c] - model_mm[c] for c in gain["clicks"]])
    near = gain["near"]
    assert all(len(near[key]) == 3 for key in ("px", "percent", "mm", "model_px", "manual_px", "landmarks"))
    # one click on a spine: 3 to 11 other corners of that vertebra and its neighbours
    assert 3 <= near["landmarks"][0] <= 11 and near["landmarks"][2] >= near["landmarks"][0] - 2
    np.testing.assert_allclose(near["px"], np.array(near["manual_px"]) - np.array(near["model_px"]))
    rows = list(csv.DictReader(open(out / "propagation_gain.csv")))
    assert [r["clicks"] for r in rows] == ["1", "2", "3"]
    assert float(rows[1]["near_gain_px"]) == pytest.approx(near["px"][1], abs=1e-3)
    assert float(rows[2]["all_gain_mm"]) == pytest.approx(gain["all"]["mm"][2], abs=1e-3)
    assert (out / "propagation_gain.png").stat().st_size > 1000


@pytest.mark.slow
def test_near_errors_come_from_the_model_runs_clicks(trained, phantom):
    session = KeypointSession(load_model(trained), phantom.image)
    curves = evaluate.simulate_revision(session, phantom.points, max_clicks=3)
    assert set(curves.model_clicks.tolist()) == set(np.flatnonzero(session.prediction.fixed).tolist())
    assert curves.manual_errors_by_clicks.shape == (4, 68)
    np.testing.assert_allclose(curves.manual_errors_by_clicks.mean(-1), curves.manual)
    # the manual run's clicked points sit on the truth: three zero errors after three clicks
    assert (curves.manual_errors_by_clicks[3] == 0).sum() >= 3


@pytest.mark.slow
def test_evaluate_on_a_seeded_random_sample(tmp_path, trained):
    def sampled_ids(seed, out_name):
        out = tmp_path / out_name
        assert cli.main(["evaluate", "--model", str(trained), "--dataset", "phantom", "--phantom-images", "6",
                         "--sample", "3", "--sample-seed", str(seed), "--max-clicks", "1", "--targets", "20",
                         "--threads", "1", "--out", str(out), "--quiet"]) == 0  # fmt: skip
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["images"] == 3 and metrics["sample"]["seed"] == seed and metrics["sample"]["of"] == 6
        return metrics["sample"]["ids"]

    first = sampled_ids(0, "a")
    assert len(set(first)) == 3 and first == sorted(first)  # distinct, in split order
    assert sampled_ids(0, "b") == first
    assert any(sampled_ids(seed, f"s{seed}") != first for seed in (1, 2))


@pytest.mark.slow
def test_evaluate_refuses_a_sample_larger_than_the_split(tmp_path, trained, capsys):
    common = ["evaluate", "--model", str(trained), "--dataset", "phantom", "--phantom-images", "2",
              "--out", str(tmp_path / "eval"), "--quiet"]  # fmt: skip
    assert cli.main([*common, "--sample", "3"]) == 2  # a usage error: a message, exit 2
    assert "--sample 3 must be between 1 and the 2 images of phantom split 'val'" in capsys.readouterr().err
    assert cli.main([*common, "--sample", "1", "--limit", "1"]) == 2
    assert "exclude each other" in capsys.readouterr().err


@pytest.mark.slow
def test_evaluate_refuses_the_label_order_filter_outside_aasce(tmp_path, trained, capsys):
    assert cli.main(["evaluate", "--model", str(trained), "--dataset", "phantom", "--phantom-images", "2",
                     "--drop-disordered-labels", "--out", str(tmp_path / "eval"), "--quiet"]) == 2  # fmt: skip
    assert "AASCE dataset only" in capsys.readouterr().err


@pytest.mark.slow
def test_evaluate_can_leave_disordered_aasce_labels_out(tmp_path):
    root = shared_dataset("boostnet_labeldata")

    def skipped_ids(*flags):
        out = tmp_path / "eval"
        code = cli.main(["evaluate", "--model", str(REPO_ROOT / "models" / "aasce-spine-68"), "--dataset", "aasce",
                         "--data-root", str(root), "--split", "val", "--limit", "1", "--max-clicks", "0",
                         "--targets", "20", "--out", str(out), "--quiet", *flags])  # fmt: skip
        assert code == 0
        return dict(json.loads((out / "metrics.json").read_text())["skipped"])

    # its L5 is labelled above T1: kept by the protocol, left out on request
    assert "sunhl-1th-09-Jan-2017-212 A AP.jpg" not in skipped_ids()
    assert "out of order" in skipped_ids("--drop-disordered-labels")["sunhl-1th-09-Jan-2017-212 A AP.jpg"]


@pytest.mark.slow
def test_evaluate_counts_noc_within_a_smaller_click_budget(tmp_path, trained, capsys):
    # the ceph protocol: MRE curve over 0..10 clicks, NoC5 / FR5 from the same run
    out = tmp_path / "eval"
    code = cli.main(["evaluate", "--model", str(trained), "--dataset", "phantom", "--phantom-images", "2",
                     "--max-clicks", "3", "--noc-clicks", "1", "--targets", "1000", "0.001", "--threads", "1",
                     "--out", str(out), "--quiet"])  # fmt: skip
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["MRE_by_clicks"]["model"]) == 4 and metrics["noc_clicks"] == 1
    assert metrics["NoC"] == {"1@1000": 0.0, "1@0.001": 1.0}  # reached at once / never within 1 click
    assert metrics["FR"]["1@0.001"] == 100.0
    capsys.readouterr()
    assert cli.main(["evaluate", "--model", str(trained), "--dataset", "phantom", "--max-clicks", "3",
                     "--noc-clicks", "4", "--out", str(out)]) == 2  # fmt: skip
    assert "--noc-clicks 4" in capsys.readouterr().err


@pytest.mark.slow
def test_simulated_user_clicks_the_worst_point_each_time(trained, phantom):
    session = KeypointSession(load_model(trained), phantom.image)
    curves = evaluate.simulate_revision(session, phantom.points, max_clicks=3)
    fixed = session.prediction.fixed
    assert fixed.sum() == 3
    np.testing.assert_array_equal(session.prediction.points[fixed], phantom.points[fixed])
    assert curves.errors_by_clicks.shape == (4, 68)


def test_heatmap_loss_channel_weights():
    import torch

    from interactive_keypoints.losses import heatmap_loss

    torch.manual_seed(0)
    target = torch.rand(2, 3, 8, 8)
    out = {"logits": torch.randn(2, 3, 8, 8), "aux_logits": torch.randn(2, 3, 8, 8)}
    plain = heatmap_loss(out, target)
    assert torch.allclose(heatmap_loss(out, target, channel_weight=torch.ones(2, 3)), plain)
    weight = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    changed = {k: v.clone() for k, v in out.items()}
    changed["logits"][0, 1] += 5.0  # a channel with weight 0 does not count
    assert torch.allclose(
        heatmap_loss(changed, target, channel_weight=weight), heatmap_loss(out, target, channel_weight=weight)
    )
    assert not torch.allclose(heatmap_loss(changed, target), plain)


@pytest.mark.slow
@pytest.mark.parametrize("mode, extra_updates", [("eval", 0), ("train", 2)])
def test_click_passes_leave_batchnorm_statistics_to_the_graded_pass(mode, extra_updates):
    """The simulated user's no-grad passes run BatchNorm in eval mode (as the paper's and
    RITM's code): only the graded pass moves the running statistics."""
    import torch
    from torch import nn

    from interactive_keypoints.data import KeypointTrainingDataset, get_dataset
    from interactive_keypoints.model_io import build_model
    from interactive_keypoints.morphology import select_morphology

    interaction = recipe.InteractionSection(iterative_max=2, click_pass_bn=mode, train_prev="all")
    loss = recipe.LossSection(morphology_weight=0.01)
    split = get_dataset("phantom-hidden", split="train", num_images=2)
    model = build_model(
        train.make_config(
            train_arguments(
                [
                    "--dataset",
                    "phantom-hidden",
                    "--width",
                    "8",
                    "--input",
                    "64x64",
                    "--ocr-channels",
                    "32",
                    "16",
                    "--out",
                    "x",
                ]
            ).model,
            split,
            "phantom-hidden",
        )
    )
    data = KeypointTrainingDataset(split, (64, 64), augment=False)
    batch = torch.utils.data.default_collate([data[0], data[1]])
    selection = select_morphology(split.points_array(), split.image_sizes(), "off", 0, 0)
    network = model.network.train()
    bn = next(m for m in network.modules() if isinstance(m, nn.BatchNorm2d))

    class TwoPasses:  # the number of no-grad passes the step draws: always 2
        def integers(self, low, high):
            return 2

        def __getattr__(self, name):
            return getattr(np.random.default_rng(0), name)

    before = int(bn.num_batches_tracked)
    train.training_step(
        network, batch, TwoPasses(), model.config, selection, interaction, loss, torch.device("cpu"), nullcontext,
        channels_last=False,
    )  # fmt: skip
    assert int(bn.num_batches_tracked) - before == 1 + extra_updates
    assert network.training


def train_arguments(argv):
    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    return train.train_config(parser.parse_args(argv))


def test_previous_prediction_only_in_clicked_channels():
    import torch

    prev = torch.rand(2, 3, 4, 4)
    clicked = torch.tensor([[True, False, False], [False, False, True]])
    assert torch.equal(train.previous_input(prev, clicked, "all"), prev)
    masked = train.previous_input(prev, clicked, "clicked")
    assert torch.equal(masked[0, 0], prev[0, 0]) and torch.equal(masked[1, 2], prev[1, 2])
    assert masked[0, 1:].abs().sum() == 0 and masked[1, :2].abs().sum() == 0


@pytest.mark.slow
def test_the_gpu_code_path_on_cpu_with_workers_resumes_exactly_and_shards_weights(tmp_path):
    # the CUDA path less its CUDA-only switches (fused Adam, pinned memory): 2 workers, resumed, against
    # 0 workers straight through; one thread each, as float sums depend on the thread count
    straight_out, out = tmp_path / "straight", tmp_path / "workers"
    assert run_train(straight_out, "--epochs", "2", "--threads", "1", "--workers", "0") == 0
    fast = ["--device", "cpu", "--threads", "1", "--workers", "2", "--max-shard-mb", "2.5"]
    assert run_train(out, "--epochs", "1", *fast) == 0
    assert run_train(out, "--epochs", "2", "--resume", *fast) == 0
    straight = load_file(straight_out / "checkpoint.safetensors")
    again = load_file(out / "checkpoint.safetensors")
    assert straight.keys() == again.keys()
    for key in straight:
        assert (straight[key] == again[key]).all(), key
    columns = ["loss", "loss_heatmap", "loss_morphology", "val_mre_px", "val_mre3_px"]
    rows = [
        [{c: r[c] for c in columns} for r in csv.DictReader(open(folder / "training_log.csv"))]
        for folder in (straight_out, out)
    ]
    assert rows[0] == rows[1] and len(rows[0]) == 2
    shards = sorted(out.glob("model-*-of-*.safetensors"))
    assert len(shards) >= 3 and not (out / "model.safetensors").exists()
    assert all(p.stat().st_size <= 2_500_000 for p in shards)
    loaded = load_model(out).network.state_dict()
    reference = load_model(straight_out).network.state_dict()
    assert all((loaded[key] == reference[key]).all() for key in reference)
    config = recipe.from_json(json.loads((out / "train_config.json").read_text()))
    assert config.runtime.workers == 2 and config.output.max_shard_mb == 2.5 and config.model.input == (128, 64)
    assert config.output.resume


def test_train_config_round_trips_through_json_and_the_command_line(tmp_path):
    parser = train.build_parser()
    argv = [
        *TINY,
        "--out",
        str(tmp_path / "m"),
        "--lr",
        "0.0003",
        "--no-gating",
        "--init-from",
        str(tmp_path),
        "--select-on",
        "mre3",
        "--val-every",
        "5",
    ]
    config = train.train_config(parser.parse_args(argv))
    assert isinstance(config, recipe.Recipe)
    assert config.model.input == (128, 64) and config.start.init_from == tmp_path
    assert config.optimisation.lr == 0.0003 and config.model.no_gating
    assert config.optimisation.epochs == 300 and config.runtime.workers == 0  # defaults are fields too
    assert recipe.from_json(json.loads(json.dumps(recipe.to_json(config)))) == config
    command = recipe.command_line(config)
    assert command.startswith("interactive-keypoints train --dataset phantom ")
    assert train.train_config(parser.parse_args(command.split()[2:])) == config
    with pytest.raises(ValueError, match="unknown options"):
        data = recipe.to_json(config)
        recipe.from_json({**data, "model": {**data["model"], "colour": "red"}})


@pytest.mark.slow
def test_validation_every_n_epochs_checkpoint_at_the_end_and_time_budget(tmp_path):
    out = tmp_path / "sparse"
    assert run_train(out, "--epochs", "3", "--val-every", "2", "--checkpoint-every", "0", "--select-on", "mre3") == 0
    rows = list(csv.DictReader(open(out / "training_log.csv")))
    validated = [np.isfinite(float(r["val_mre_px"])) for r in rows]
    assert validated == [False, True, True]  # every second epoch and the last
    assert json.loads((out / "checkpoint.json").read_text())["epoch"] == 3
    best = json.loads((out / "val_metrics.json").read_text())
    assert best["select_on"] == "mre3" and best["epoch"] in (1, 2)
    assert best["propagation_gain_px"] == pytest.approx(best["manual3_px"] - best["mre3_px"])
    # a budget shorter than one epoch: that epoch is the last, validated, its weights written
    timed = tmp_path / "timed"
    assert run_train(timed, "--epochs", "50", "--max-minutes", "0.0001", "--lr-schedule", "cosine") == 0
    rows = list(csv.DictReader(open(timed / "training_log.csv")))
    assert len(rows) == 1 and np.isfinite(float(rows[0]["val_mre_px"]))
    assert (timed / "model.safetensors").is_file() and (timed / "val_metrics.json").is_file()


@pytest.mark.slow
def test_selection_on_cobb_smape_and_a_resume_that_switches_to_it(tmp_path):
    out = tmp_path / "spine"
    assert run_train(out, "--epochs", "1") == 0
    first_best = load_file(out / "model.safetensors")
    assert run_train(out, "--epochs", "2", "--resume", "--select-on", "cobb3") == 0
    kept = out / "best-mre0"  # the best by the old score stays a model folder
    assert json.loads((kept / "val_metrics.json").read_text())["select_on"] == "mre0"
    for name, tensor in load_file(kept / "model.safetensors").items():
        assert torch.equal(tensor, first_best[name]), name
    load_model(kept)
    best = json.loads((out / "val_metrics.json").read_text())
    assert best["select_on"] == "cobb3" and best["epoch"] == 1 and 0 <= best["cobb3_smape"] <= 100
    rows = list(csv.DictReader(open(out / "training_log.csv")))
    assert [r["epoch"] for r in rows] == ["0", "1"] and float(rows[1]["best_val_mre_px"]) == pytest.approx(
        best["cobb3_smape"], abs=1e-3
    )
    with pytest.raises(ValueError, match="needs a spine model"):
        train.main(
            [
                *TINY,
                "--dataset",
                "phantom-hidden",
                "--epochs",
                "1",
                "--select-on",
                "cobb3",
                "--out",
                str(tmp_path / "x"),
            ]
        )


@pytest.mark.slow
def test_validation_follows_the_evaluation_protocol():
    # the batched 0/3-click validation gives the MREs of evaluate.simulate_revision (session rule) on a trained model
    from interactive_keypoints.data import get_dataset
    from interactive_keypoints.data.training import KeypointTrainingDataset

    model = load_model(REPO_ROOT / "models" / "phantom-spine-68")
    samples = get_dataset("phantom", None, "val", num_images=2, seed=0)
    data = KeypointTrainingDataset(samples, model.config.input_size, model.config.intensity, augment=False)
    loader = torch.utils.data.DataLoader(data, batch_size=2)
    metrics = train.validation_metrics(model.network, loader, model.config, torch.device("cpu"))
    curves = [
        evaluate.simulate_revision(
            # the network alone: training validates the network, the correction field is set after training
            KeypointSession(model, evaluate.sample_radiograph(s), optimized=False, correction_length=0.0),
            s.points,
            3,
        )
        for s in samples.samples
    ]
    assert metrics["images"] == 2 and metrics["clicks"] == 3
    assert metrics["mre0_px"] == pytest.approx(np.mean([c.model[0] for c in curves]), abs=1e-3)
    assert metrics["mre3_px"] == pytest.approx(np.mean([c.model[3] for c in curves]), abs=1e-3)
    assert metrics["manual3_px"] == pytest.approx(np.mean([c.manual[3] for c in curves]), abs=1e-3)
    assert metrics["mre3_px"] < metrics["mre0_px"]
    # a spine model's validation also scores Cobb angles, as evaluate's challenge SMAPE does
    from interactive_keypoints.evaluate.report import sample_measurements
    from interactive_keypoints.metrics import cobb_smape

    def smape_after(clicks):
        angles = [
            [m.value for m in sample_measurements(c.points_by_clicks[clicks], s, "aasce-cobb")]
            for c, s in zip(curves, samples.samples)
        ]
        truth = [[m.value for m in sample_measurements(s.points, s, "aasce-cobb")] for s in samples.samples]
        return cobb_smape(angles, truth)

    assert metrics["cobb0_smape"] == pytest.approx(smape_after(0), abs=0.05)
    assert metrics["cobb3_smape"] == pytest.approx(smape_after(3), abs=0.05)


def test_cobb_smape_of_validation_points():
    from interactive_keypoints.data import get_dataset

    truth = get_dataset("phantom", None, "val", num_images=2, seed=0).points_array()
    heights = np.array([512.0, 512.0])
    assert train.cobb_smape_of(truth, truth, heights) == 0.0
    tilted = truth.copy()
    tilted[:, 4:8:2, 1] += 6.0  # T2's left corners lower: a tilted vertebra
    assert 0.0 < train.cobb_smape_of(tilted, truth, heights) < 100.0
    flat = truth.copy()
    flat[0, 0:4] = flat[0, 0]  # T1 collapsed to one point: no angle; that image scores the worst
    assert train.cobb_smape_of(flat, truth, heights) == pytest.approx(50.0)


@pytest.mark.slow
def test_bf16_autocast_path_trains_and_validates(tmp_path, monkeypatch):
    # the dtype CUDA gets, forced on this CPU (emulated where there is no native bf16)
    monkeypatch.setattr(train, "fast_dtype", lambda device, fast, training=False: torch.bfloat16 if fast else None)
    out = tmp_path / "bf16"
    assert run_train(out, "--epochs", "1", "--max-steps", "1") == 0
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["fast_path"] == "torch.bfloat16"
    row = next(csv.DictReader(open(out / "training_log.csv")))
    assert all(np.isfinite(float(row[c])) for c in ["loss", "val_mre_px", "val_mre3_px", "propagation_gain_px"])
    assert all(t.dtype == torch.float32 for t in load_model(out).network.state_dict().values() if t.is_floating_point())
