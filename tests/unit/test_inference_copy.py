"""The inference copy of an STM (stm_core/model/inference.py): BatchNorms of the
EfficientNet-Lite trunks folded into their convolutions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from stm_core import STM, load_model, propagate
from stm_core.assets import default_checkpoint_path
from stm_core.model.inference import inference_copy
from stm_core.propagation import VideoSession


def lite_with_real_statistics(seed: int = 0) -> STM:
    """A Lite0 STM whose BatchNorms hold statistics and affines far from the identity, so a
    wrong fold shows."""
    torch.manual_seed(seed)
    stm = STM("efficientnet_lite0")
    for module in stm.modules():
        if isinstance(module, nn.BatchNorm2d):
            with torch.no_grad():
                module.running_mean.normal_(0, 0.5)
                module.running_var.uniform_(0.2, 3.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.3)
    for conv in (stm.Encoder_M.conv1_m, stm.Encoder_M.conv1_o):  # trained mask stems
        nn.init.normal_(conv.weight, std=0.1)
    return stm.eval()


def batchnorms(module: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in module.modules())


def test_folded_encoders_compute_the_same_features():
    stm = lite_with_real_statistics()
    before = {k: v.clone() for k, v in stm.state_dict().items()}
    folded = inference_copy(stm)
    assert batchnorms(folded.Encoder_Q) == batchnorms(folded.Encoder_M) == 0
    assert inference_copy(folded) is folded  # a copy is folded once
    assert batchnorms(stm.Encoder_Q) > 30  # the model itself is untouched
    stem = folded.Encoder_Q.trunk._conv_stem.weight
    assert stem.is_contiguous(memory_format=torch.channels_last)  # on a CPU
    assert not stm.Encoder_Q.trunk._conv_stem.weight.is_contiguous(
        memory_format=torch.channels_last
    )
    assert all(torch.equal(v, before[k]) for k, v in stm.state_dict().items())
    frame = torch.rand(2, 3, 96, 128)
    mask = (torch.rand(2, 1, 96, 128) > 0.5).float()
    others = (torch.rand(2, 1, 96, 128) > 0.7).float()
    with torch.inference_mode():
        for mine, theirs in zip(stm.Encoder_Q(frame), folded.Encoder_Q(frame), strict=True):
            assert torch.allclose(mine, theirs, rtol=1e-4, atol=1e-4 * mine.abs().max())
        mine = stm.Encoder_M(frame, mask, others)
        theirs = folded.Encoder_M(frame, mask, others)
        assert torch.allclose(mine, theirs, rtol=1e-4, atol=1e-4 * mine.abs().max())


def test_propagation_with_the_folded_copy_gives_the_same_masks(read_real_clip):
    """The shipped model on a real clip: ``propagate`` folds, a session on the model itself
    does not; the probabilities agree to float rounding and the masks pixel for pixel."""
    stm = load_model(default_checkpoint_path(), device="cpu")
    clip = read_real_clip("blackswan", 4, size=(224, 128))
    folded = list(propagate(stm, clip.frames, {0: clip.masks[0]}))
    session = VideoSession(stm)
    seed = clip.masks[0]
    plain = [session.step(t, f, seed if t == 0 else None) for t, f in enumerate(clip.frames)]
    for a, b in zip(folded, plain, strict=True):
        assert np.abs(a.probs - b.probs).max() < 1e-4
        assert np.array_equal(a.labels, b.labels)
    assert folded[-1].labels.any()


def test_resnets_and_training_mode_are_not_copied():
    """The ResNet trunks keep the release's arithmetic op for op; a model in training mode
    normalises with its batch's statistics, which no fold can stand for."""
    resnet = STM("resnet18").eval()
    assert inference_copy(resnet) is resnet
    training = lite_with_real_statistics().train()
    assert inference_copy(training) is training


@pytest.mark.parametrize("dtype", [torch.float16])
def test_a_half_precision_model_folds_in_its_own_dtype(dtype):
    stm = lite_with_real_statistics().to(dtype)
    folded = inference_copy(stm)
    assert {p.dtype for p in folded.parameters()} == {dtype}
