"""The untrained model the browser tests serve (host, launcher e2e): one definition."""

from pathlib import Path


def save_web_test_model(folder: Path) -> Path:
    """An untrained, deterministic, small spine network saved to ``folder``: fast on CPU, at
    the 256 x 128 input whose view sizes the browser tests were written against."""
    import torch

    from interactive_keypoints.config import ModelConfig
    from interactive_keypoints.conventions import SPINE
    from interactive_keypoints.model_io import build_model, save_model

    torch.manual_seed(0)
    config = ModelConfig(
        num_keypoints=SPINE.num_keypoints,
        input_size=(256, 128),
        landmark_names=list(SPINE.names),
        width=8,
        stage_modules=(1, 1, 1),
        stage_blocks=1,
        stem_blocks=1,
        ocr_mid_channels=32,
        ocr_key_channels=16,
        hint_channels=8,
        name="tiny-untrained-test",
        measurements="aasce-cobb",
    )
    return save_model(folder, build_model(config))
