"""Model folders: safetensors + model.json, checked against each other on load."""

import json
import os
from pathlib import Path

import pytest
import torch

from interactive_keypoints.config import ModelConfig, ModelFormatError
from interactive_keypoints.model_io import CONFIG_FILE, WEIGHTS_FILE, build_model, load_model, save_model
from interactive_keypoints.tiny_model import tiny_config


def outputs(model):
    torch.manual_seed(1)
    k, (h, w) = model.config.num_keypoints, model.config.input_size
    with torch.no_grad():
        return model.network.eval()(torch.randn(1, 1, h, w), torch.zeros(1, k, h, w), torch.zeros(1, k, h, w))["logits"]


@pytest.mark.slow
def test_round_trip_keeps_weights_and_config(tmp_path, tiny_model):
    tiny_model.config.landmark_names = [f"P{i}" for i in range(68)]
    save_model(tmp_path / "m", tiny_model)
    loaded = load_model(tmp_path / "m")
    assert loaded.config == tiny_model.config
    torch.testing.assert_close(outputs(loaded), outputs(tiny_model))
    assert json.loads((tmp_path / "m" / CONFIG_FILE).read_text())["format_version"] == 1


def test_half_precision_storage_loads_as_float32(tmp_path, tiny_model):
    save_model(tmp_path / "m", tiny_model, dtype=torch.float16)
    loaded = load_model(tmp_path / "m")
    assert all(p.dtype == torch.float32 for p in loaded.network.parameters())
    assert (tmp_path / "m" / WEIGHTS_FILE).stat().st_size < 0.6 * sum(
        p.numel() * 4 for p in tiny_model.network.parameters()
    )


def test_config_that_does_not_match_the_weights_is_refused(tmp_path, tiny_model):
    save_model(tmp_path / "m", tiny_model)
    other = tiny_config(num_keypoints=19)
    other.save(tmp_path / "m" / CONFIG_FILE)
    with pytest.raises(ModelFormatError, match="do not match"):
        load_model(tmp_path / "m")


def test_corrupt_weights_file_is_refused(tmp_path, tiny_model):
    save_model(tmp_path / "m", tiny_model)
    (tmp_path / "m" / WEIGHTS_FILE).write_bytes(b"\x80\x04 not safetensors at all")
    with pytest.raises(ModelFormatError, match="not a readable safetensors"):
        load_model(tmp_path / "m")


def test_missing_or_broken_config_is_refused(tmp_path, tiny_model):
    with pytest.raises(ModelFormatError, match="does not exist"):
        load_model(tmp_path / "nowhere")
    save_model(tmp_path / "m", tiny_model)
    (tmp_path / "m" / CONFIG_FILE).write_text("{ not json")
    with pytest.raises(ModelFormatError, match="not valid JSON"):
        load_model(tmp_path / "m")
    (tmp_path / "m" / CONFIG_FILE).write_text(json.dumps({"num_keypoints": 68, "colour": "red"}))
    with pytest.raises(ModelFormatError, match="unknown keys"):
        load_model(tmp_path / "m")


def test_config_validation_names_the_problem():
    with pytest.raises(ModelFormatError, match="landmark names"):
        ModelConfig(num_keypoints=3, landmark_names=["a", "b"])
    with pytest.raises(ModelFormatError, match="multiples of 32"):
        ModelConfig(num_keypoints=3, input_size=(100, 64))
    with pytest.raises(ModelFormatError, match="flip pair"):
        ModelConfig(num_keypoints=3, flip_pairs=[(0, 5)])


def test_build_model_is_untrained_but_complete():
    model = build_model(tiny_config(num_keypoints=5))
    assert model.config.landmark_names == ["L1", "L2", "L3", "L4", "L5"]


def test_default_model_follows_preference_and_the_models_env(tmp_path, tiny_model, monkeypatch):
    from interactive_keypoints import model_folders

    monkeypatch.setenv(model_folders.MODELS_ENV, str(tmp_path))
    save_model(tmp_path / "mine", tiny_model)
    assert model_folders.default_model_dir(("mine",)) == tmp_path / "mine"
    assert tmp_path / "mine" in model_folders.shipped_models()
    with pytest.raises(ModelFormatError, match="no shipped model"):
        model_folders.default_model_dir(("absent-model",))
    monkeypatch.delenv(model_folders.MODELS_ENV)
    assert tmp_path / "mine" not in model_folders.shipped_models()


def test_installed_extension_layout_finds_its_models_without_torch(tmp_path, tiny_model):
    """An installed extension has qt-scripted-modules/{interactive_keypoints,Resources/Models}:
    the package alone (no panel, no $INTERACTIVE_KEYPOINTS_MODELS) finds the models there."""
    import shutil
    import subprocess
    import sys

    import interactive_keypoints

    modules_dir = tmp_path / "lib" / "Slicer-5.10" / "qt-scripted-modules"
    shutil.copytree(
        Path(interactive_keypoints.__file__).parent,
        modules_dir / "interactive_keypoints",
        ignore=shutil.ignore_patterns("__pycache__", "web", "data"),
    )
    save_model(modules_dir / "Resources" / "Models" / "aasce-spine-68", tiny_model)
    save_model(modules_dir / "Resources" / "Models" / "other-model", tiny_model)
    script = (
        "import sys, json\n"
        "from interactive_keypoints.model_folders import default_model_dir, shipped_models\n"
        "print(json.dumps([str(default_model_dir()), [str(p) for p in shipped_models()], 'torch' in sys.modules]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "INTERACTIVE_KEYPOINTS_MODELS"}
    env["PYTHONPATH"] = str(modules_dir)
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout
    default, found, torch_imported = json.loads(out)
    models = modules_dir / "Resources" / "Models"
    assert default == str(models / "aasce-spine-68")
    assert found == [str(models / "aasce-spine-68"), str(models / "other-model")]
    assert not torch_imported


@pytest.mark.slow
def test_large_weights_are_sharded_under_the_limit_and_load_back(tmp_path, tiny_model):
    from interactive_keypoints.model_folders import WEIGHTS_INDEX_FILE, has_weights

    folder = tmp_path / "m"
    save_model(folder, tiny_model)  # a single file first: sharding must replace it
    limit = 3_100_000  # above the largest tensor (2.99 MB), below the 10.4 MB whole
    save_model(folder, tiny_model, max_shard_bytes=limit)
    shards = sorted(folder.glob("model-*-of-*.safetensors"))
    assert len(shards) >= 4 and not (folder / WEIGHTS_FILE).exists() and has_weights(folder)
    assert all(p.stat().st_size <= limit for p in shards)
    assert shards[0].name == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((folder / WEIGHTS_INDEX_FILE).read_text())
    assert set(index["weight_map"]) == set(tiny_model.network.state_dict())
    torch.testing.assert_close(outputs(load_model(folder)), outputs(tiny_model))
    save_model(folder, tiny_model)  # and back to one file: no stale shards left to confuse a reader
    assert (
        (folder / WEIGHTS_FILE).is_file()
        and not list(folder.glob("model-*"))
        and not (folder / WEIGHTS_INDEX_FILE).exists()
    )


def test_a_missing_or_foreign_shard_is_refused(tmp_path, tiny_model):
    folder = tmp_path / "m"
    save_model(folder, tiny_model, max_shard_bytes=3_100_000)
    shards = sorted(folder.glob("model-*-of-*.safetensors"))
    shards[0].write_bytes(shards[1].read_bytes())  # the wrong tensors under the first shard's name
    with pytest.raises(ModelFormatError, match="other tensors than"):
        load_model(folder)
    shards[1].unlink()
    with pytest.raises(ModelFormatError, match="names the shard"):
        load_model(folder)
