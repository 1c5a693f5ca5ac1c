"""The shipped default model loads (without naming its trunk) and labels real footage: a few
frames of real clips at reduced size, scored against their ground truth. v4, the previous
default, stays loadable as a second asset."""

from __future__ import annotations

import numpy as np
import pytest

from stm_core import load_model, propagate
from stm_core.assets import V4_CHECKPOINT_NAME, asset_path, default_checkpoint_path
from stm_core.metrics import jaccard

SIZE = (428, 240)  # W x H: half of 480p, so the test stays small
FRAMES = 10


@pytest.fixture(scope="module")
def shipped():
    path = default_checkpoint_path()
    if path is None:
        pytest.skip("no shipped model in this installation")
    return load_model(path, device="cpu")


def test_the_default_is_the_imagenet_trunk_model_and_v4_still_loads(shipped) -> None:
    assert shipped.spec.name == "efficientnet_lite0"
    v4 = asset_path(V4_CHECKPOINT_NAME)
    assert v4 is not None and load_model(v4, device="cpu").spec.name == "resnet18"


@pytest.mark.parametrize("sequence", ["blackswan", "car-shadow"])
def test_shipped_model_labels_real_clips(shipped, read_real_clip, sequence: str) -> None:
    clip = read_real_clip(sequence, FRAMES, size=SIZE)
    results = list(propagate(shipped, clip.frames, {0: clip.masks[0]}))
    later = range(1, FRAMES)
    pred = np.stack([results[t].labels == 1 for t in later])
    truth = np.stack([clip.masks[t] == 1 for t in later])
    scores = jaccard(pred, truth)
    # A model that matched colours, not objects (v4 on these frames), stays far below this.
    assert float(np.mean(scores)) > 0.6, scores
