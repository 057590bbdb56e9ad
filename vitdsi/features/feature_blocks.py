"""A pretrained CNN cut into an ordered list of blocks whose composition gives its last
spatial feature map (before global pooling and the classifier), for a borrowed DSI encoder.

The encoder's feature map, not its pooled vector, is what the id decoder reads (one token per
cell; docs/design.md, "Borrowed encoders").

    efficientnet-lite0   stem, the 16 MBConv blocks, head conv: 1280 x 7 x 7 at 224 px
    torchvision:NAME     any torchvision CNN with a `features` sequence (EfficientNet,
                         MobileNet, ConvNeXt, VGG, DenseNet, ...), the ResNet layout
                         (stem, layer1-4) or the RegNet layout (stem, trunk stages)

Weights come from local files only (`vitdsi.features.backbones`). Blocks are listed from the
input on, so "the last N blocks" are the ones nearest the output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vitdsi.errors import VitDSIError
from vitdsi.features.backbones import (
    EFFICIENTNET_LITE0_SIZE,
    TFLITE_MEAN,
    TFLITE_STD,
    efficientnet_lite0_net,
    torchvision_net,
)


@dataclass
class FeatureBlocks:
    name: str  # the encoder as given ('efficientnet-lite0', 'torchvision:resnet18', ...)
    blocks: list[nn.Module]  # in order from the input; their composition maps images to [B, C, h, w]
    input_size: int  # square input side the weights were trained at (images are resized to it)
    mean: tuple[float, float, float]  # per-channel normalisation of [0, 1] pixels
    std: tuple[float, float, float]


class _MBConv(nn.Module):
    """An EfficientNet block with its drop-connect rate bound (the package passes it per call)."""

    def __init__(self, block: nn.Module, drop_connect_rate: float) -> None:
        super().__init__()
        self.block, self.rate = block, drop_connect_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x, drop_connect_rate=self.rate)


def _efficientnet_lite0_blocks() -> FeatureBlocks:
    net = efficientnet_lite0_net()
    rate = net._global_params.drop_connect_rate or 0.0
    n = len(net._blocks)
    blocks = [
        nn.Sequential(net._conv_stem, net._bn0, net._swish),
        *(_MBConv(b, rate * i / n) for i, b in enumerate(net._blocks)),  # rates as in extract_features
        nn.Sequential(net._conv_head, net._bn1, net._swish),
    ]
    return FeatureBlocks("efficientnet-lite0", blocks, EFFICIENTNET_LITE0_SIZE, TFLITE_MEAN, TFLITE_STD)


def _torchvision_blocks(spec: str) -> FeatureBlocks:
    model, size, mean, std = torchvision_net(spec)
    if isinstance(getattr(model, "features", None), nn.Sequential):
        blocks = list(model.features)
    elif all(hasattr(model, a) for a in ("conv1", "bn1", "relu", "maxpool", "layer4")):  # ResNet / ResNeXt
        blocks = [
            nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool),
            model.layer1,
            model.layer2,
            model.layer3,
            model.layer4,
        ]
    elif hasattr(model, "stem") and isinstance(getattr(model, "trunk_output", None), nn.Sequential):  # RegNet
        blocks = [model.stem, *model.trunk_output]
    else:
        raise VitDSIError(
            f"encoder 'torchvision:{spec}': no spatial feature map found (a `features` sequence, the ResNet "
            "or the RegNet layout); use a convolutional model such as resnet18, mobilenet_v3_small or "
            "convnext_tiny"
        )
    return FeatureBlocks(f"torchvision:{spec}", blocks, size, mean, std)


def load_feature_blocks(encoder: str) -> FeatureBlocks:
    """The pretrained blocks of `encoder` ('efficientnet-lite0' or 'torchvision:NAME[:WEIGHTS]'), on the
    CPU."""
    if encoder == "efficientnet-lite0":
        return _efficientnet_lite0_blocks()
    if encoder.startswith("torchvision:") and encoder != "torchvision:":
        return _torchvision_blocks(encoder[len("torchvision:") :])
    raise VitDSIError(
        f"unknown encoder '{encoder}'; use 'vit' (trained from scratch), 'efficientnet-lite0' or "
        "'torchvision:NAME'"
    )
