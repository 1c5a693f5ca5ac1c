"""Files that ship inside the package: the default model, and the previous one.

``stm_lite0_real.pt`` (v8, the default) is STM on an ImageNet-pretrained EfficientNet-Lite0
trained on real photos and the DAVIS 2016 train videos; ``stm_resnet18_synthetic.pt`` (v4) is the
ResNet-18 model trained on synthetic clips only, kept so earlier runs can be reproduced
(docs/model_card.md).
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_CHECKPOINT_NAME = "stm_lite0_real.pt"
V4_CHECKPOINT_NAME = "stm_resnet18_synthetic.pt"


def default_checkpoint_path() -> Path | None:
    """The shipped model, or None if this installation has none."""
    return asset_path(DEFAULT_CHECKPOINT_NAME)


def asset_path(name: str) -> Path | None:
    """A shipped checkpoint by file name, or None if this installation lacks it."""
    path = Path(__file__).with_name(name)
    return path if path.is_file() else None
