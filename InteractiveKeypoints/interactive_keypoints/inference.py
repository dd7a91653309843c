"""Device choice and the fast inference path.

On CPUs with native bf16 (AVX512-BF16 / AMX) a bf16 copy of the network with BatchNorm
folded, in channels_last, is several times faster than fp32 and decodes to the same
keypoints within a fraction of a pixel (see bench/latency.py). CUDA uses fp16, others fp32.

Training autocasts to bf16 instead (CUDA with bf16, CPUs with native bf16): fp16 has no
exponent range for the small loss gradients at the logits (without a loss scaler they
flush to zero), bf16 has fp32's range.
"""

from __future__ import annotations

import copy
import functools
import os

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .click_decoder import ClickDecoder
from .local_stage import LocalStage
from .model_io import KeypointModel

DEVICE_ENV = "INTERACTIVE_KEYPOINTS_DEVICE"


def pick_device(preference: str | torch.device | None = "auto") -> torch.device:
    """'auto' (or None) -> cuda, else mps, else cpu; the env var overrides 'auto'."""
    if preference is None or str(preference) == "auto":
        preference = os.environ.get(DEVICE_ENV, "auto")
    if str(preference) != "auto":
        device = torch.device(preference)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' was requested but no CUDA GPU is available")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise RuntimeError("device 'mps' was requested but MPS is not available")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@functools.cache
def cpu_info() -> tuple[str, frozenset] | None:
    """(model name, feature flags) of the first CPU in /proc/cpuinfo; None where there is none."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return None
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields.get("model name", "unknown"), frozenset(fields.get("flags", "").split())


def cpu_description() -> str:
    """Model name and the vector extensions that decide the CPU path (bf16 needs AVX512-BF16/AMX):
    what every benchmark prints next to its figures."""
    info = cpu_info()
    if info is None:
        return "unknown"
    name, flags = info
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{name} ({', '.join(isa) or 'no AVX2'})"


@functools.cache
def cpu_has_native_bf16() -> bool:
    info = cpu_info()
    if info is None:  # not Linux: let oneDNN decide whether bf16 is worth it
        return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return bool({"avx512_bf16", "amx_bf16"} & info[1])


def fast_dtype(device: torch.device, optimized: bool, training: bool = False) -> torch.dtype | None:
    """The reduced precision to run in on ``device``; None: float32."""
    if not optimized:
        return None
    if device.type == "cuda":
        if training:  # older GPUs without bf16 train in fp32 rather than underflow in fp16
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
        return torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return None


def fold_batchnorm(network: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm into the conv before it (same Sequential)."""
    for module in network.modules():
        if not isinstance(module, nn.Sequential):
            continue
        for i in range(len(module) - 1):
            conv, bn = module[i], module[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                module[i] = fuse_conv_bn_eval(conv, bn)
                module[i + 1] = nn.Identity()
    return network


def inference_network(network: nn.Module, device: torch.device, dtype: torch.dtype | None) -> nn.Module:
    """An eval-only copy for fast inference: BN folded, weights in ``dtype``, channels_last."""
    fast = fold_batchnorm(copy.deepcopy(network).eval())
    fast = fast.to(device=device, dtype=dtype or torch.float32)
    return fast.to(memory_format=torch.channels_last)


class Predictor:
    """Runs a KeypointModel on one image at a time; the image-only part is computed once.

    ``optimized=False`` is plain fp32 eager PyTorch on the training network (the reference
    point of bench/latency.py); ``optimized=True`` runs an inference copy with BN folded,
    bf16/fp16 weights where the device supports them and channels_last.
    """

    def __init__(self, model: KeypointModel, device=None, optimized: bool = True):
        self.model = model
        self.device = pick_device(device)
        self.optimized = optimized
        self.dtype = fast_dtype(self.device, optimized) or torch.float32
        if optimized:
            self.network = inference_network(model.network, self.device, self.dtype)
        else:
            self.network = model.network.to(self.device).eval()
        # the model's full-resolution local stage, when it has one (same device and precision)
        self.local_stage = (
            LocalStage(model.local_stage_config, copy.deepcopy(model.local_stage), self.device, self.dtype)
            if model.local_stage is not None and model.local_stage_config is not None
            else None
        )
        # the click decoder, when it has one (small: CPU, fp32, whatever the device)
        self.click_decoder = (
            ClickDecoder(model.click_decoder_config, copy.deepcopy(model.click_decoder))
            if model.click_decoder is not None and model.click_decoder_config is not None
            else None
        )

    def _prepare(self, t: torch.Tensor) -> torch.Tensor:
        t = t.to(self.device, self.dtype)
        return t.contiguous(memory_format=torch.channels_last) if self.optimized else t

    @torch.inference_mode()
    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) normalised image -> the click-independent features."""
        return self.network.encode_image(self._prepare(image))

    @torch.inference_mode()
    def logits(self, image_features, clicks, prev, channels=None, output_size=None) -> torch.Tensor:
        """Main logits in float32: (B, K, H/4, W/4), or at ``output_size`` when given.
        ``clicks``/``prev`` hold either all K channels or only ``channels``."""
        out = self.network.forward_cached(
            image_features,
            self._prepare(clicks),
            self._prepare(prev),
            output_size,
            None if channels is None else torch.as_tensor(channels, device=self.device, dtype=torch.long),
        )
        return out["logits"].float()
