"""An inference copy of an STM: the EfficientNet-Lite trunks' BatchNorms folded into the
convolutions before them and, on a CPU, their weights in channels-last layout.

Why: in eval mode a BatchNorm is a fixed per-channel scale and shift, so it can be computed by
the convolution in front of it at no cost; in an EfficientNet-Lite trunk it is otherwise an
eighth of the encoders' time on a CPU (one pass over every feature map, 33 of them). oneDNN's
depthwise convolutions run faster on channels-last maps, and a convolution whose weight is
channels-last makes its output so, which carries through the trunk (about 0.87x the encoders'
time here; the decoder gained nothing and keeps its layout). The copy computes the same
function up to float rounding (tested). The ResNet trunks are left as they are: the official
STM's inference is reproduced op for op (``spec/stm_semantics.md``), and only the
EfficientNet-Lite trunks are this project's own.

The copy is for propagation only: training and first-frame fine-tuning change the weights and
must see the BatchNorms (and the checkpoint format keeps them), so they use the model itself.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from .efficientnet_lite import MBConv
from .encoders import LiteMemoryEncoder, LiteQueryEncoder
from .network import STM

_MARK = "_inference_copy"  # set on a copy: its BatchNorms are gone


def inference_copy(stm: STM) -> STM:
    """``stm`` with its BatchNorms folded (and channels-last encoders on a CPU), as a new model
    on the same device; ``stm`` itself
    when there is nothing to fold (a ResNet trunk) or it is in training mode (BatchNorm then
    uses the batch's statistics, not a fixed scale), or is such a copy already."""
    if stm.training or stm.spec.family != "efficientnet_lite" or getattr(stm, _MARK, False):
        return stm  # nothing to fold, or folded already (a second fold would fail)
    folded = copy.deepcopy(stm)
    setattr(folded, _MARK, True)
    on_cpu = next(stm.parameters()).device.type == "cpu"
    for encoder in (folded.Encoder_Q, folded.Encoder_M):
        _fold_lite_encoder(encoder)
        if on_cpu:  # measured on a CPU only; a GPU keeps the layout it was given
            encoder.to(memory_format=torch.channels_last)
    return folded


@torch.no_grad()
def _fold(convs: list[nn.Conv2d], bn: nn.BatchNorm2d) -> None:
    """Fold ``bn`` into the convolutions whose outputs are summed in front of it: each weight
    is scaled, and the shift becomes the first convolution's bias."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    for conv in convs:
        if conv.bias is not None:
            raise ValueError("folding expects convolutions without a bias")
        conv.weight.mul_(scale.view(-1, 1, 1, 1).to(conv.weight.dtype))
    convs[0].bias = nn.Parameter(shift.to(convs[0].weight.dtype))


def _fold_lite_encoder(encoder: LiteQueryEncoder | LiteMemoryEncoder) -> None:
    trunk = encoder.trunk
    stem = [trunk._conv_stem]
    if isinstance(encoder, LiteMemoryEncoder):  # the mask stems add to the stem before its BN
        stem += [encoder.conv1_m, encoder.conv1_o]
    _fold(stem, trunk._bn0)
    trunk._bn0 = nn.Identity()
    for block in trunk._blocks:
        assert isinstance(block, MBConv)
        if block.expand:
            _fold([block._expand_conv], block._bn0)
            block._bn0 = nn.Identity()
        _fold([block._depthwise_conv], block._bn1)
        block._bn1 = nn.Identity()
        _fold([block._project_conv], block._bn2)
        block._bn2 = nn.Identity()
