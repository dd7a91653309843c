"""The click decoder: a light network that moves the unconfirmed points after a click.

After a refine the session has, for every landmark, the network's own estimate (``raw``),
its estimate before any click (``raw0``) and what the correction field shows (``shown``,
with the user-fixed points where the user put them). The decoder reads these as one token
per group of landmarks (a vertebra's four corners: ``group=4``; one landmark: ``group=1``),
mixes the tokens with a small transformer encoder and returns an offset for every point that
is not fixed:

    per landmark: shown (centred), raw - shown (free), shown - raw (fixed: the user's
    correction), raw - raw0 (what the click pass moved), fixed flag, clicks / 10
        --> tokens --> transformer --> offsets (landmark-extent units) --> shown + offset

It is trained on the network's own outputs under the simulated user (``train-decoder``),
in CPU-minutes: the network runs once per training image and click, the decoder trains on
those cached states in seconds. Its output layer starts at zero, so an untrained decoder
shows the field's points. It is used for 1..``max_clicks`` fixed points (the click counts it
was trained on); beyond those, and with no click, the field's points stand.

A decoder may carry a "check next" head (``review_members`` > 0): networks of the same shape
that read the decoded points' features and give, per landmark, the expected error of the
point now shown (0..``max_clicks`` fixed points). The session's ``decoder`` review score
(:mod:`.review`) ranks by it.
The model folder declares it in ``model.json`` (``click_decoder``) next to its weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

# the config is plain data in part_configs.py (config.py validates it without torch); re-exported
from .part_configs import CLICK_DECODER_WEIGHTS_FILE as WEIGHTS_FILE
from .part_configs import ClickDecoderConfig
from .weights_file import add_model_part, load_part_weights, save_part_weights

FEATURES = 10  # per landmark, see decoder_features


def decoder_features(
    raw: np.ndarray, raw0: np.ndarray, shown: np.ndarray, fixed: np.ndarray, clicks: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(..., K, FEATURES) decoder input and (...,) the landmark extent that scales it.

    ``raw``, ``raw0``, ``shown``: (..., K, 2) px; ``fixed``: (..., K) bool; ``clicks``: (...,)
    the number of fixed points. Positions are centred on the shown points' mean and divided
    by their extent, so images of any size and placement look alike."""
    raw, raw0, shown = (np.asarray(a, np.float64) for a in (raw, raw0, shown))
    fixed = np.asarray(fixed, bool)[..., None]
    extent = np.ptp(shown, axis=-2).max(axis=-1) + 1e-6
    scale = extent[..., None, None]
    centred = (shown - shown.mean(axis=-2, keepdims=True)) / scale
    free_offset = np.where(fixed, 0.0, raw - shown) / scale
    correction = np.where(fixed, shown - raw, 0.0) / scale
    moved = (raw - raw0) / scale
    count = np.broadcast_to((np.asarray(clicks, np.float64) / 10.0)[..., None, None], fixed.shape)
    features = np.concatenate([centred, free_offset, correction, moved, fixed.astype(np.float64), count], axis=-1)
    return features.astype(np.float32), extent


class DecoderMember(nn.Module):
    """Landmark-group tokens -> transformer encoder -> ``outputs`` values per landmark: an
    offset (2, extent units) or, for the check-next head, a log expected error (1)."""

    def __init__(self, config: ClickDecoderConfig, outputs: int = 2):
        super().__init__()
        self.group, self.outputs = config.group, outputs
        tokens, width = config.num_keypoints // config.group, config.width
        self.embed = nn.Linear(FEATURES * config.group, width)
        self.position = nn.Parameter(torch.zeros(tokens, width))  # which group a token is
        layer = nn.TransformerEncoderLayer(width, config.heads, 2 * width, dropout=0.1, batch_first=True)
        self.mix = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.offsets = nn.Linear(width, outputs * config.group)  # named for the offsets (weight files)
        nn.init.zeros_(self.offsets.weight)  # untrained: no offset, the field's points stand
        nn.init.zeros_(self.offsets.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, K, FEATURES) -> (B, K, outputs)."""
        b, k, _ = features.shape
        tokens = self.embed(features.reshape(b, k // self.group, -1)) + self.position
        return self.offsets(self.mix(tokens)).reshape(b, k, self.outputs)


class ClickDecoderNet(nn.Module):
    """The decoder: the mean offset of ``config.members`` members, each trained on its own;
    and the check-next head's ``config.review_members`` members (none by default)."""

    def __init__(self, config: ClickDecoderConfig):
        super().__init__()
        self.config = config
        self.members = nn.ModuleList(DecoderMember(config) for _ in range(config.members))
        # the head draws its initial weights from a forked generator: the offsets' training (its
        # dropout masks) is the same with or without a head
        with torch.random.fork_rng():
            self.review = nn.ModuleList(DecoderMember(config, outputs=1) for _ in range(config.review_members))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, K, FEATURES) -> (B, K, 2) offsets."""
        return torch.stack([member(features) for member in self.members]).mean(0)

    def log_error(self, features: torch.Tensor) -> torch.Tensor:
        """(B, K, FEATURES) of the decoded points -> (B, K) the head's log(1 + error / extent * 100)."""
        return torch.stack([member(features)[..., 0] for member in self.review]).mean(0)


def error_from_log(log_error, extent):
    """The head's output back in px (see :meth:`ClickDecoderNet.log_error`)."""
    return np.expm1(np.asarray(log_error, np.float64)) * np.asarray(extent, np.float64)[..., None] / 100.0


def log_error_target(error_px, extent) -> torch.Tensor:
    """What the head learns: log(1 + error / extent * 100), error in 1 % of the landmarks' extent."""
    return torch.tensor(np.log1p(np.asarray(error_px) / np.asarray(extent)[..., None] * 100.0), dtype=torch.float32)


class ClickDecoder:
    """A trained click decoder, applied to one session step at a time."""

    def __init__(self, config: ClickDecoderConfig, network: ClickDecoderNet):
        self.config = config
        self.network = network.eval()

    def applies(self, clicks: int) -> bool:
        return 1 <= clicks <= self.config.max_clicks

    @torch.inference_mode()
    def correct(self, raw: np.ndarray, raw0: np.ndarray, shown: np.ndarray, fixed: np.ndarray) -> np.ndarray:
        """``shown`` (K, 2) with every point that is not ``fixed`` moved by the decoder's offset;
        unchanged outside 1..max_clicks fixed points."""
        fixed = np.asarray(fixed, bool)
        clicks = int(fixed.sum())
        if not self.applies(clicks):
            return np.asarray(shown, np.float64)
        features, extent = decoder_features(raw, raw0, shown, fixed, np.array(clicks))
        offsets = self.network(torch.from_numpy(features)[None])[0].double().numpy() * float(extent)
        return np.where(fixed[:, None], shown, shown + offsets)

    @property
    def has_review_head(self) -> bool:
        return self.config.review_members > 0

    @torch.inference_mode()
    def expected_error(
        self, raw: np.ndarray, raw0: np.ndarray, decoded: np.ndarray, fixed: np.ndarray
    ) -> np.ndarray | None:
        """(K,) the check-next head's expected error (px) of the ``decoded`` points (what
        :meth:`correct` gave, or the field's points with no click); None without a head or
        outside 0..max_clicks fixed points."""
        fixed = np.asarray(fixed, bool)
        clicks = int(fixed.sum())
        if not self.has_review_head or clicks > self.config.max_clicks:
            return None
        features, extent = decoder_features(raw, raw0, decoded, fixed, np.array(clicks))
        log_error = self.network.log_error(torch.from_numpy(features)[None])[0]
        return error_from_log(log_error.numpy(), extent)


def save_click_decoder_weights(folder: str | Path, network: ClickDecoderNet, dtype=torch.float16) -> Path:
    """Write the decoder's weights (fp16 by default, upcast on load) into a model folder."""
    return save_part_weights(Path(folder) / network.config.weights, network, "click-decoder", dtype)


def add_click_decoder(folder: str | Path, network: ClickDecoderNet) -> Path:
    """Give an existing model folder this decoder: its weights (fp16), and ``click_decoder`` in ``model.json``."""
    return add_model_part(folder, "click_decoder", network, "click-decoder", torch.float16)


def load_click_decoder_network(folder: Path, config: ClickDecoderConfig) -> ClickDecoderNet:
    """The decoder's network from ``folder``, checked against its config."""
    described = (
        f"K={config.num_keypoints}, width={config.width}, layers={config.layers}, members={config.members}, "
        f"review_members={config.review_members}"
    )
    network = load_part_weights(ClickDecoderNet(config), folder / config.weights, described, "click_decoder")
    assert isinstance(network, ClickDecoderNet)
    return network


__all__ = [
    "FEATURES", "WEIGHTS_FILE", "ClickDecoder", "ClickDecoderConfig", "ClickDecoderNet", "DecoderMember", "add_click_decoder",
    "decoder_features", "error_from_log", "load_click_decoder_network", "log_error_target", "save_click_decoder_weights",
]  # fmt: skip
