"""Model configuration: plain data, saved as ``model.json`` next to ``model.safetensors``.

Coordinates everywhere in this package are (x, y) = (column, row) in pixels, with pixel
centres at integer positions.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from .conventions import write_text_atomic
from .errors import ModelFormatError  # also imported from here (config.ModelFormatError)
from .part_configs import ClickDecoderConfig, LocalStageConfig

FORMAT_VERSION = 1


@dataclass
class ModelConfig:
    num_keypoints: int
    input_size: tuple[int, int] = (512, 256)  # (H, W) of the network input
    landmark_names: list[str] = field(default_factory=list)
    # HRNet: branch widths are width * (1, 2, 4, 8); stage depth is data too, so that
    # compact variants (HRNet-small style) are a config, not a new class.
    width: int = 32
    stage_modules: tuple[int, int, int] = (1, 4, 3)
    stage_blocks: int = 4
    stem_blocks: int = 4
    in_channels: int = 1
    # OCR head (HRNet-OCR with the reference's mid/key sizes)
    ocr_mid_channels: int = 256
    ocr_key_channels: int = 128
    # interaction
    hint_channels: int = 16
    gating: bool = True
    gating_pool: str = "max"  # "max" (paper) or "avg" (ablation)
    gate_channels: int = 256  # the gate's conv width (paper: 256); narrow it for small demo models
    # correction field (correction_field.py): unfixed points follow the residuals at the clicks;
    # length as a fraction of the landmarks' extent, 0 = off (the paper's rule: the network alone)
    correction_length: float = 0.0
    correction_noise: float = 0.3
    # a user's correction farther than this fraction of the landmarks' extent from the network's
    # first point is kept where the user put it but passed on to nothing (the network's hints, the
    # field, the click decoder): a drag across half the spine is a slip or a wrong label, and
    # propagating it drags every point off. 0 = every correction propagates (session.py)
    propagation_limit: float = 0.0
    # heatmaps: Gaussian sigma in network-input pixels
    sigma: float = 7.5
    # intensity normalisation of the grey image before the network
    intensity: dict = field(default_factory=lambda: {"mode": "minmax", "range": [-1.0, 1.0]})
    # left/right landmark index pairs swapped by a horizontal flip
    flip_pairs: list[tuple[int, int]] = field(default_factory=list)
    name: str = ""
    description: str = ""
    # clinical measurements shown with the points: "aasce-cobb", "isbi-ceph" or "" (none)
    measurements: str = ""
    # the full-resolution local stage (part_configs.LocalStageConfig as a dict); empty: none
    local_stage: dict = field(default_factory=dict)
    # the click decoder (part_configs.ClickDecoderConfig as a dict); empty: none
    click_decoder: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self):
        self.input_size = tuple(int(v) for v in self.input_size)
        self.stage_modules = tuple(int(v) for v in self.stage_modules)
        self.flip_pairs = [tuple(int(i) for i in p) for p in self.flip_pairs]
        if not self.landmark_names:
            self.landmark_names = [f"L{i + 1}" for i in range(self.num_keypoints)]
        self.validate()

    def validate(self) -> None:
        problems = []
        if self.num_keypoints < 1:
            problems.append(f"num_keypoints must be >= 1, got {self.num_keypoints}")
        if len(self.landmark_names) != self.num_keypoints:
            problems.append(f"{len(self.landmark_names)} landmark names for {self.num_keypoints} keypoints")
        if len(self.input_size) != 2 or any(v % 32 for v in self.input_size):
            problems.append(f"input_size {self.input_size} must be (H, W), multiples of 32")
        if self.correction_length < 0 or self.correction_noise <= 0:
            problems.append(
                f"correction_length must be >= 0 and correction_noise > 0, got "
                f"{self.correction_length} and {self.correction_noise}"
            )
        if self.propagation_limit < 0:
            problems.append(f"propagation_limit must be >= 0 (0 = off), got {self.propagation_limit}")
        if self.gate_channels < 1:
            problems.append(f"gate_channels must be positive, got {self.gate_channels}")
        if self.gating_pool not in ("max", "avg"):
            problems.append(f"gating_pool must be 'max' or 'avg', got {self.gating_pool!r}")
        for a, b in self.flip_pairs:
            if not (0 <= a < self.num_keypoints and 0 <= b < self.num_keypoints):
                problems.append(f"flip pair ({a}, {b}) outside 0..{self.num_keypoints - 1}")
        if self.measurements:
            from .measurements import MEASUREMENT_SETS, MEASUREMENT_TEMPLATES

            if self.measurements not in MEASUREMENT_SETS:
                problems.append(f"measurements must be one of {MEASUREMENT_SETS} or '', got {self.measurements!r}")
            elif self.num_keypoints != MEASUREMENT_TEMPLATES[self.measurements].num_keypoints:
                problems.append(f"measurements {self.measurements!r} do not fit {self.num_keypoints} keypoints")
        parts = (
            (self.local_stage, LocalStageConfig, "local stage"),
            (self.click_decoder, ClickDecoderConfig, "click decoder"),
        )
        for entry, part_class, name in parts:
            if entry:
                problems += part_problems(part_class, entry, name, self.num_keypoints)
        if self.format_version > FORMAT_VERSION:
            problems.append(f"format_version {self.format_version} is newer than this code ({FORMAT_VERSION})")
        if problems:
            raise ModelFormatError("invalid model config: " + "; ".join(problems))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["input_size"] = list(self.input_size)
        d["stage_modules"] = list(self.stage_modules)
        d["flip_pairs"] = [list(p) for p in self.flip_pairs]
        if not self.local_stage:
            del d["local_stage"]  # a folder without a stage writes model.json as before
        if not self.click_decoder:
            del d["click_decoder"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ModelFormatError(f"unknown keys in model config: {unknown}")
        if "num_keypoints" not in d:
            raise ModelFormatError("model config has no 'num_keypoints'")
        return cls(**d)

    def save(self, path: str | Path) -> None:
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")  # a training run rewrites it

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        try:
            d = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ModelFormatError(f"no model config at {path}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ModelFormatError(f"model config {path} is not valid JSON: {e}") from None
        if not isinstance(d, dict):
            raise ModelFormatError(f"model config {path} is not a JSON object")
        return cls.from_dict(d)


def paper_config(num_keypoints: int = 68, **overrides) -> ModelConfig:
    """The paper's AASCE setting: HRNet-W32 + OCR, 512 x 256 input."""
    return ModelConfig(num_keypoints=num_keypoints, **overrides)


def compact_config(num_keypoints: int, input_size=(256, 128), **overrides) -> ModelConfig:
    """A small HRNet (W18, HRNet-small depth) for CPU training and small weights in git."""
    base = dict(width=18, stage_modules=(1, 1, 1), stage_blocks=2, stem_blocks=2)
    base.update(overrides)
    return ModelConfig(num_keypoints=num_keypoints, input_size=input_size, **base)


def part_problems(part_class, entry: dict, name: str, num_keypoints: int) -> list[str]:
    """What is wrong with the model part ``name``'s ``model.json`` entry: its own checks, and its landmark count."""
    try:
        part = part_class.from_dict(entry)
    except ModelFormatError as e:
        return [str(e)]
    if part.num_keypoints != num_keypoints:
        return [f"the {name} has {part.num_keypoints} landmarks, the model {num_keypoints}"]
    return []
