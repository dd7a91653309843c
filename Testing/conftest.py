"""Shared fixtures. Tests that need ../shared/data skip with a reason when it is absent."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

torch.set_num_threads(min(2, torch.get_num_threads()))


def tiny_config(num_keypoints=68, **overrides):
    """A narrow model that runs in milliseconds: same architecture, fewer channels."""
    from interactive_keypoints.config import compact_config

    options = dict(input_size=(128, 64), width=8, ocr_mid_channels=32, ocr_key_channels=16)
    options.update(overrides)
    return compact_config(num_keypoints, **options)


@pytest.fixture
def tiny_model():
    from interactive_keypoints.model_io import build_model

    torch.manual_seed(0)
    model = build_model(tiny_config())
    model.network.eval()
    return model


@pytest.fixture(scope="session")
def phantom():
    from interactive_keypoints.phantom import make_spine_phantom

    return make_spine_phantom(0, height=512, width=256)


def shared_dataset(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} is not present (the shared datasets are needed for this test)")
    return path
