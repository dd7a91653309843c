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

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
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


def _stack(tensors) -> torch.Tensor:
    """One tensor per member -> (members, ...)."""
    return torch.stack([t.detach() for t in tensors])


def _stack_encoder_layers(layers: Sequence[nn.TransformerEncoderLayer]) -> dict[str, torch.Tensor]:
    """The same encoder layer of every member, its weights stacked and transposed for bmm."""
    return {
        "qkv_weight": _stack(layer.self_attn.in_proj_weight.T for layer in layers),
        "qkv_bias": _stack(layer.self_attn.in_proj_bias[None] for layer in layers),
        "out_weight": _stack(layer.self_attn.out_proj.weight.T for layer in layers),
        "out_bias": _stack(layer.self_attn.out_proj.bias[None] for layer in layers),
        "norm1_weight": _stack(layer.norm1.weight[None] for layer in layers),
        "norm1_bias": _stack(layer.norm1.bias[None] for layer in layers),
        "ff1_weight": _stack(layer.linear1.weight.T for layer in layers),
        "ff1_bias": _stack(layer.linear1.bias[None] for layer in layers),
        "ff2_weight": _stack(layer.linear2.weight.T for layer in layers),
        "ff2_bias": _stack(layer.linear2.bias[None] for layer in layers),
        "norm2_weight": _stack(layer.norm2.weight[None] for layer in layers),
        "norm2_bias": _stack(layer.norm2.bias[None] for layer in layers),
    }


class StackedMembers:
    """Inference for several trained members at once: their weights stacked on a leading
    members axis, so each layer is one batched matmul for all members instead of one module
    call per member. The same maths as the members' own forward (post-norm encoder layers,
    ReLU, eval: no dropout), equal to float rounding, in a quarter of the time for four members
    (bench/latency.py). Built once from weights that no longer change (a loaded decoder)."""

    def __init__(self, modules: Iterable[nn.Module]):
        given = list(modules)
        if not given or not all(isinstance(m, DecoderMember) for m in given):
            raise TypeError("StackedMembers needs one or more DecoderMember modules")
        members = cast(list[DecoderMember], given)
        first = members[0].mix.layers[0]
        if first.norm_first or first.activation_relu_or_gelu != 1 or not first.self_attn.batch_first:
            raise ValueError("StackedMembers implements post-norm, ReLU, batch-first encoder layers only")
        self.group, self.outputs = members[0].group, members[0].outputs
        self.heads, self.eps = first.self_attn.num_heads, first.norm1.eps
        self.embed_weight = _stack(m.embed.weight.T for m in members)  # M, in, width
        self.embed_bias = _stack(m.embed.bias + m.position for m in members)  # M, tokens, width
        self.layers = [
            _stack_encoder_layers([m.mix.layers[i] for m in members]) for i in range(len(members[0].mix.layers))
        ]
        self.out_weight = _stack(m.offsets.weight.T for m in members)
        self.out_bias = _stack(m.offsets.bias[None] for m in members)

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        """(B, K, FEATURES) -> (members, B, K, outputs), each member's output."""
        members = self.embed_weight.shape[0]
        b, k, _ = features.shape
        tokens = k // self.group
        x = torch.bmm(features.reshape(1, b * tokens, -1).expand(members, -1, -1), self.embed_weight)
        x = (x.view(members, b, tokens, -1) + self.embed_bias[:, None]).view(members, b * tokens, -1)
        width, head_width = x.shape[-1], x.shape[-1] // self.heads
        for p in self.layers:
            qkv = torch.baddbmm(p["qkv_bias"], x, p["qkv_weight"])
            query, key, value = qkv.view(members * b, tokens, 3, self.heads, head_width).permute(2, 0, 3, 1, 4)
            attended = F.scaled_dot_product_attention(query, key, value)
            attended = attended.transpose(1, 2).reshape(members, b * tokens, width)
            x = x + torch.baddbmm(p["out_bias"], attended, p["out_weight"])
            x = torch.addcmul(p["norm1_bias"], F.layer_norm(x, (width,), eps=self.eps), p["norm1_weight"])
            hidden = torch.baddbmm(p["ff1_bias"], x, p["ff1_weight"]).relu_()
            x = x + torch.baddbmm(p["ff2_bias"], hidden, p["ff2_weight"])
            x = torch.addcmul(p["norm2_bias"], F.layer_norm(x, (width,), eps=self.eps), p["norm2_weight"])
        return torch.baddbmm(self.out_bias, x, self.out_weight).view(members, b, k, self.outputs)


class ClickDecoder:
    """A trained click decoder, applied to one session step at a time."""

    def __init__(self, config: ClickDecoderConfig, network: ClickDecoderNet):
        self.config = config
        self.network = network.eval()
        # the members run stacked (same result, fewer ops); the check-next head's likewise
        self._offset_members = StackedMembers(self.network.members)
        self._review_members = StackedMembers(self.network.review) if config.review_members else None

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
        offsets = self._offset_members(torch.from_numpy(features)[None]).mean(0)[0].double().numpy() * float(extent)
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
        assert self._review_members is not None
        log_error = self._review_members(torch.from_numpy(features)[None])[..., 0].mean(0)[0]
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
    "FEATURES", "WEIGHTS_FILE", "ClickDecoder", "ClickDecoderConfig", "ClickDecoderNet", "DecoderMember", "StackedMembers",
    "add_click_decoder", "decoder_features", "error_from_log", "load_click_decoder_network", "log_error_target", "save_click_decoder_weights",
]  # fmt: skip
