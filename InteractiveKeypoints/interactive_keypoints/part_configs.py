"""The model folder's optional parts as plain data: ``model.json``'s ``local_stage`` and
``click_decoder`` entries, checked when read.

No torch here: config.py validates a model.json with them, and the GUI thread reads model
configs without importing torch. The networks that use them live in local_stage.py and
click_decoder.py (which re-export these names).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from .errors import ModelFormatError

PartConfig = TypeVar("PartConfig", "LocalStageConfig", "ClickDecoderConfig")

LOCAL_STAGE_WEIGHTS_FILE = "local_stage.safetensors"
IDENTITIES = ("output", "input")  # the local stage's landmark identity (see local_stage.py)
HEADS = ("heatmap", "integral")
CLICK_DECODER_WEIGHTS_FILE = "click_decoder.safetensors"


@dataclass
class LocalStageConfig:
    """The local stage of a model folder: ``model.json``'s ``local_stage`` entry (plain data)."""

    num_keypoints: int
    patch_size: int = 64  # P: the patch is P x P fine pixels
    pixels_per_height: float = 1200.0  # the image height in fine patch pixels (ISBI ceph: 2 original px)
    context: float = 4.0  # the second channel's pixel, in fine pixels
    identity: str = "output"  # "output": K output channels; "input": K one-hot input planes
    channels: tuple[int, ...] = (16, 32, 64, 128)  # U-Net widths per level (MONAI UNet)
    # "heatmap": Gaussian target, BCE, peak + local soft-argmax (as the first stage);
    # "integral": softmax over the patch, its expected position, L1 (an offset regression)
    head: str = "heatmap"
    sigma: float = 2.0  # heatmap Gaussian, fine pixels
    passes: int = 1  # re-centre on the refined point and run again this many times in all
    weights: str = LOCAL_STAGE_WEIGHTS_FILE
    # how it was trained (recorded, not used at inference)
    trained: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.channels = tuple(int(c) for c in self.channels)
        problems = []
        if self.identity not in IDENTITIES:
            problems.append(f"identity must be one of {IDENTITIES}, got {self.identity!r}")
        if self.head not in HEADS:
            problems.append(f"head must be one of {HEADS}, got {self.head!r}")
        if self.patch_size < 16 or self.patch_size % 8:
            problems.append(f"patch_size must be a multiple of 8, at least 16, got {self.patch_size}")
        if self.pixels_per_height <= 0 or self.context < 1 or self.sigma <= 0 or self.passes < 1:
            problems.append("pixels_per_height and sigma must be > 0, context >= 1, passes >= 1")
        if len(self.channels) < 2:
            problems.append(f"channels needs at least two levels, got {self.channels}")
        if Path(self.weights).name != self.weights:
            problems.append(f"weights must be a file name in the model folder, got {self.weights!r}")
        if problems:
            raise ModelFormatError("invalid local stage config: " + "; ".join(problems))

    @property
    def in_channels(self) -> int:
        return 2 + (self.num_keypoints if self.identity == "input" else 0)

    @property
    def out_channels(self) -> int:
        return self.num_keypoints if self.identity == "output" else 1

    def fine_pixel(self, image_height: int) -> float:
        """Original pixels per fine patch pixel for an image ``image_height`` pixels high."""
        return image_height / self.pixels_per_height

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> LocalStageConfig:
        return part_from_dict(cls, d, "local_stage")


@dataclass
class ClickDecoderConfig:
    """A model folder's click decoder: ``model.json``'s ``click_decoder`` entry (plain data)."""

    num_keypoints: int
    group: int = 1  # landmarks per token, consecutive indices (AASCE: 4 corners of a vertebra)
    width: int = 64
    layers: int = 3
    heads: int = 4
    max_clicks: int = 4  # used with 1..max_clicks fixed points
    members: int = 1  # independently trained decoders whose offsets are averaged (seed noise halves with 4)
    review_members: int = 0  # the check-next head's members (expected error per landmark); 0: no head
    weights: str = CLICK_DECODER_WEIGHTS_FILE
    # how it was trained (recorded, not used at inference)
    trained: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        problems = []
        if self.num_keypoints < 1 or self.group < 1 or self.num_keypoints % self.group:
            problems.append(f"group ({self.group}) must divide num_keypoints ({self.num_keypoints})")
        if self.width < 1 or self.layers < 1 or self.heads < 1 or self.width % self.heads:
            problems.append(f"width ({self.width}) must be a positive multiple of heads ({self.heads}); layers >= 1")
        if self.max_clicks < 1 or self.members < 1 or self.review_members < 0:
            problems.append(
                f"max_clicks and members must be >= 1 and review_members >= 0, got {self.max_clicks}, "
                f"{self.members} and {self.review_members}"
            )
        if Path(self.weights).name != self.weights:
            problems.append(f"weights must be a file name in the model folder, got {self.weights!r}")
        if problems:
            raise ModelFormatError("invalid click decoder config: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ClickDecoderConfig:
        return part_from_dict(cls, d, "click_decoder")


def part_from_dict(cls: type[PartConfig], d: dict, entry: str) -> PartConfig:
    """``model.json``'s ``entry`` (an object) as the part's config; unknown or missing keys are
    a ModelFormatError naming the entry."""
    if not isinstance(d, dict):
        raise ModelFormatError(f"model.json's {entry} must be an object, got {type(d).__name__}")
    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})  # type: ignore[arg-type]
    if unknown:
        raise ModelFormatError(f"unknown keys in model.json's {entry}: {unknown}")
    try:
        return cls(**d)
    except TypeError as e:
        raise ModelFormatError(f"model.json's {entry} is incomplete: {e}") from None
