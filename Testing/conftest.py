"""Shared fixtures. Tests that need ../shared/data skip with a reason when it is absent."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def tiny_model():
    """The tiny untrained spine model of :mod:`interactive_keypoints.tiny_model` (the in-Slicer test uses it too)."""
    from interactive_keypoints.tiny_model import tiny_model as build_tiny_model

    return build_tiny_model()


@pytest.fixture(scope="session")
def phantom():
    from interactive_keypoints.phantom import make_spine_phantom

    return make_spine_phantom(0, height=512, width=256)


def shared_dataset(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} is not present (the shared datasets are needed for this test)")
    return path


def pytest_collection_modifyitems(items):
    # a browser test is always slow: it starts a server, chromium and a model
    for item in items:
        if item.get_closest_marker("browser") is not None:
            item.add_marker(pytest.mark.slow)
