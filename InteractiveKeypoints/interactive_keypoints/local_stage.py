"""The local stage: each landmark refined in a full-resolution patch around its first estimate.

The first stage sees the whole radiograph at a few hundred pixels (a cephalogram at 0.75 mm
per input pixel), so its precision is capped by resolution. The local stage cuts, for each
landmark that is not user-fixed, a small patch of the *original* image centred on the current
estimate and finds the landmark in it:

    image (original, normalised once) --> P x P patch, fine pixels --------------+
                                      --> same centre, ``context`` x coarser ---+--> U-Net --> heatmap
                                                                                     --> soft-argmax --> point

The two channels share a centre: the fine one gives precision, the coarse one tells which
landmark is which. The patch's pixel is a fixed fraction of the image height
(``pixels_per_height``), the same rule as the first stage's whole-image resize, so a
radiograph scanned at another resolution gets the same anatomy in its patch.

Landmark identity: ``identity="output"`` gives the U-Net one output channel per landmark
(the patch of landmark k reads channel k); ``identity="input"`` gives it one input plane per
landmark (one-hot) and a single output. Both are one network for all landmarks.

Patches are cut with one ``grid_sample`` per image for all its patches (a crop of the whole
image per patch, as :class:`.augment.ApplyGeometryd` does for the first stage, would copy the
full-resolution image each time). The geometry follows :mod:`.augment`'s convention: a (3, 3)
matrix maps original pixels (x, y) to patch pixels. Outside the image the patch reads the
normalised image's lowest value (padding, never a shifted patch).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.nets import UNet
from torch import nn

from .heatmaps import decode_heatmaps
from .imaging import Radiograph, about_centre, normalise_transform

# the config is plain data in part_configs.py (config.py validates it without torch); re-exported
from .part_configs import HEADS, IDENTITIES, LocalStageConfig  # noqa: F401
from .part_configs import LOCAL_STAGE_WEIGHTS_FILE as WEIGHTS_FILE  # noqa: F401
from .weights_file import add_model_part, load_part_weights, save_part_weights

OUTPUT_BIAS_PRIOR = -4.0


class LocalStageNet(nn.Module):
    """MONAI's U-Net on (fine, context[, identity planes]) patches -> heatmap logits at patch size."""

    def __init__(self, config: LocalStageConfig):
        super().__init__()
        self.config = config
        self.unet = UNet(
            spatial_dims=2,
            in_channels=config.in_channels,
            out_channels=config.out_channels,
            channels=config.channels,
            strides=(2,) * (len(config.channels) - 1),
            num_res_units=1,
            norm="batch",
        )
        # heatmaps are almost all background: start every output near sigmoid = 0.02 (the focal-loss
        # prior of RetinaNet), so early steps learn the peak instead of first unlearning a grey map
        last_conv = [m for m in self.unet.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))][-1]
        if last_conv.bias is not None:
            nn.init.constant_(last_conv.bias, OUTPUT_BIAS_PRIOR)

    def forward(self, patches: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
        """patches (N, 2, P, P), landmarks (N,) long -> (N, 1, P, P) logits of each patch's landmark."""
        n, _, p, _ = patches.shape
        k = self.config.num_keypoints
        if self.config.identity == "input":
            planes = F.one_hot(landmarks, k).to(patches.dtype)[:, :, None, None].expand(n, k, p, p)
            return self.unet(torch.cat([patches, planes], dim=1))
        logits = self.unet(patches)
        return logits.gather(1, landmarks.view(n, 1, 1, 1).expand(n, 1, p, p))


# ------------------------------------------------------------------------ patches


@dataclass(frozen=True)
class PatchSource:
    """One radiograph ready for patches: the original pixels normalised as the first stage
    normalises them, stored minus their minimum (``fill``) so that grid_sample's zero padding
    reads as the image's darkest value."""

    shifted: torch.Tensor  # (1, 1, H, W) float32, normalised image - fill
    fill: float

    @property
    def height(self) -> int:
        return int(self.shifted.shape[-2])

    @classmethod
    def from_image(cls, radiograph: Radiograph | np.ndarray, intensity: dict) -> PatchSource:
        array = radiograph.array if isinstance(radiograph, Radiograph) else np.asarray(radiograph)
        image = normalise_transform(intensity)(np.asarray(array, dtype=np.float32)[None])
        image = image.reshape(1, 1, *array.shape[-2:])
        fill = float(image.amin())
        return cls(image.sub_(fill), fill)


def patch_matrices(centres: np.ndarray, patch_size: int, fine_pixel: float, rotation_deg=None, zoom=None) -> np.ndarray:
    """(N, 3, 3) maps original pixel (x, y) -> fine patch pixel, the centre at the patch's middle.

    ``rotation_deg`` / ``zoom`` (N,) (augmentation; None = none) act about the patch centre as in
    :mod:`.augment`: positive rotation counter-clockwise on screen, zoom > 1 magnifies."""
    centres = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
    n = len(centres)
    middle = (patch_size - 1) / 2
    matrices = np.zeros((n, 3, 3))
    for i, (cx, cy) in enumerate(centres):
        shift = np.array([[1 / fine_pixel, 0, middle - cx / fine_pixel], [0, 1 / fine_pixel, middle - cy / fine_pixel]])
        m = np.vstack([shift, [0, 0, 1.0]])
        if rotation_deg is not None or zoom is not None:
            t = np.deg2rad(0.0 if rotation_deg is None else rotation_deg[i])
            z = 1.0 if zoom is None else zoom[i]
            linear = z * np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])
            m = about_centre(linear, (patch_size, patch_size)) @ m
        matrices[i] = m
    return matrices


def cut_patches(source: PatchSource, matrices: np.ndarray, patch_size: int, context: float) -> torch.Tensor:
    """(N, 2, P, P) patches: channel 0 through ``matrices`` (N, 3, 3), channel 1 the same about the
    patch centre at ``context`` x coarser pixels. Outside the image: the image's minimum (padding)."""
    h, w = source.shifted.shape[-2:]
    n, p = len(matrices), patch_size
    middle = (p - 1) / 2
    grid_xy = np.stack(np.meshgrid(np.arange(p), np.arange(p)), axis=-1).reshape(-1, 2).astype(np.float64)
    inverse = np.linalg.inv(matrices)  # patch pixel -> original pixel
    grids = []
    for scale in (1.0, context):
        patch_xy = (grid_xy - middle) * scale + middle  # the patch grid, scaled about its middle
        original_xy = np.einsum("nij,pj->npi", inverse[:, :2, :2], patch_xy) + inverse[:, None, :2, 2]
        # original pixel -> grid_sample's normalised coordinates (align_corners=False)
        normalised = (2 * (original_xy + 0.5) / np.array([w, h])) - 1
        grids.append(torch.from_numpy(normalised.reshape(n, p, p, 2)).float())
    image = source.shifted.expand(n, 1, h, w)  # a view: one image, n grids
    patches = [F.grid_sample(image, g, mode="bilinear", padding_mode="zeros", align_corners=False) for g in grids]
    return torch.cat(patches, dim=1) + source.fill


def to_patch(points: np.ndarray, matrices: np.ndarray) -> np.ndarray:
    """(N, 2) original pixels -> (N, 2) patch pixels, each through its own matrix."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return np.einsum("nij,nj->ni", matrices[:, :2, :2], points) + matrices[:, :2, 2]


def from_patch(points: np.ndarray, matrices: np.ndarray) -> np.ndarray:
    """The inverse of :func:`to_patch`."""
    inverse = np.linalg.inv(matrices)
    return np.einsum("nij,nj->ni", inverse[:, :2, :2], np.asarray(points, np.float64)) + inverse[:, :2, 2]


# ------------------------------------------------------------------------ runtime


class LocalStage:
    """A trained local stage, ready to refine points on one image after another.

    ``refine(image, points, movable)`` moves each movable point to where the stage finds its
    landmark; the others are returned unchanged. It holds no state between calls: the session
    decides which points to run (see :class:`.session.KeypointSession`).
    """

    def __init__(self, config: LocalStageConfig, network: LocalStageNet, device="cpu", dtype=None):
        self.config = config
        self.device = torch.device(device)
        self.dtype = dtype or torch.float32
        self.network = network.eval().to(self.device, self.dtype)

    @torch.inference_mode()
    def refine(self, source: PatchSource, points: np.ndarray, movable: np.ndarray) -> np.ndarray:
        """points (K, 2) original pixels -> the same with every ``movable`` one refined."""
        refined = np.array(points, dtype=np.float64, copy=True)
        indices = np.flatnonzero(np.asarray(movable, bool))
        if len(indices) == 0:
            return refined
        fine_pixel = self.config.fine_pixel(source.height)
        landmarks = torch.as_tensor(indices, dtype=torch.long, device=self.device)
        for _ in range(self.config.passes):
            matrices = patch_matrices(refined[indices], self.config.patch_size, fine_pixel)
            patches = cut_patches(source, matrices, self.config.patch_size, self.config.context)
            logits = self.network(patches.to(self.device, self.dtype), landmarks)
            found = decode_patch_logits(logits.float(), self.config.head)
            refined[indices] = from_patch(found.cpu().numpy().astype(np.float64), matrices)
        return refined


def decode_patch_logits(logits: torch.Tensor, head: str) -> torch.Tensor:
    """(N, 1, P, P) logits -> (N, 2) patch pixels (x, y): the heatmap's peak refined by the local
    soft-argmax (``heatmap``) or the expectation of the softmax over the patch (``integral``)."""
    if head == "integral":
        n, _, p, _ = logits.shape
        weights = torch.softmax(logits.reshape(n, p * p), dim=1).reshape(n, p, p)
        axis = torch.arange(p, dtype=weights.dtype, device=weights.device)
        return torch.stack([(weights.sum(1) * axis).sum(1), (weights.sum(2) * axis).sum(1)], dim=1)
    found, _ = decode_heatmaps(torch.sigmoid(logits).permute(1, 0, 2, 3))
    return found[0]


def save_local_stage_weights(folder: str | Path, network: LocalStageNet, dtype=torch.float16) -> Path:
    """Write the stage's weights (fp16 by default, upcast on load) into a model folder."""
    return save_part_weights(Path(folder) / network.config.weights, network, "local-stage", dtype)


def add_local_stage(folder: str | Path, network: LocalStageNet) -> Path:
    """Give an existing model folder this stage: its weights (fp16), and ``local_stage`` in ``model.json``."""
    return add_model_part(folder, "local_stage", network, "local-stage", torch.float16)


def load_local_stage_network(folder: Path, config: LocalStageConfig) -> LocalStageNet:
    """The stage's network from ``folder``, checked against its config (like :func:`.model_io.load_model`)."""
    described = f"K={config.num_keypoints}, channels={config.channels}"
    network = load_part_weights(LocalStageNet(config), folder / config.weights, described, "local_stage")
    assert isinstance(network, LocalStageNet)
    return network
