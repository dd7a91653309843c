"""The tiny untrained model the tests share: the pytest suite and the in-Slicer test
(``InteractiveKeypointsTest``) build the same one, so they exercise the same network.

Same architecture as a real model, a few channels wide: a detect or a refine takes
milliseconds on a CPU. The logic's behaviour does not depend on training.
"""

from __future__ import annotations

from .config import ModelConfig, compact_config
from .conventions import SPINE

TINY_ARCHITECTURE = {"input_size": (128, 64), "width": 8, "ocr_mid_channels": 32, "ocr_key_channels": 16}
# an untrained hint-fusion layer barely passes the clicks on; this makes them matter
CLICK_SCALE = 20.0


def tiny_config(num_keypoints: int = SPINE.num_keypoints, **overrides) -> ModelConfig:
    """A tiny model's config; ``overrides`` go to :func:`config.compact_config`."""
    return compact_config(num_keypoints, **(TINY_ARCHITECTURE | overrides))


def tiny_model(landmark_names=SPINE.names, seed: int = 0, click_scale: float | None = CLICK_SCALE, **overrides):
    """A tiny untrained :class:`model_io.KeypointModel` (eval mode), the same for a given seed."""
    import torch

    from .model_io import build_model

    torch.manual_seed(seed)
    model = build_model(tiny_config(len(landmark_names), landmark_names=list(landmark_names), **overrides))
    if click_scale is not None:
        with torch.no_grad():
            model.network.hint_fusion.scale.fill_(click_scale)
    model.network.eval()
    return model


def with_tiny_local_stage(model, seed: int = 0, **overrides):
    """``model`` with a tiny untrained local stage attached (as if its folder declared one)."""
    import torch

    from .local_stage import LocalStageConfig, LocalStageNet

    torch.manual_seed(seed)
    settings = {"patch_size": 16, "pixels_per_height": 256.0, "channels": (4, 8), "identity": "input"} | overrides
    config = LocalStageConfig(model.config.num_keypoints, **settings)
    model.config.local_stage = config.to_dict()
    model.config.validate()
    model.local_stage = LocalStageNet(config).eval()
    return model


def with_tiny_click_decoder(model, seed: int = 0, **overrides):
    """``model`` with a tiny click decoder attached (as if its folder declared one), its output
    layer drawn at random so that it moves the free points (a trained one starts at zero); with
    ``review_members`` its check-next head's too, so that it ranks the points."""
    import torch

    from .click_decoder import ClickDecoderConfig, ClickDecoderNet

    torch.manual_seed(seed)
    settings = {"group": 4, "width": 16, "layers": 1, "heads": 2, "max_clicks": 2} | overrides
    config = ClickDecoderConfig(model.config.num_keypoints, **settings)
    model.config.click_decoder = config.to_dict()
    model.config.validate()
    model.click_decoder = ClickDecoderNet(config).eval()
    with torch.no_grad():
        for member in [*model.click_decoder.members, *model.click_decoder.review]:
            torch.nn.init.normal_(member.offsets.weight, std=0.01)
    return model
