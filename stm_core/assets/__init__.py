"""Files that ship inside the package: the default model."""

from __future__ import annotations

from pathlib import Path

DEFAULT_CHECKPOINT_NAME = "stm_resnet18_synthetic.pt"


def default_checkpoint_path() -> Path | None:
    """The shipped model, or None if this installation has none."""
    path = Path(__file__).with_name(DEFAULT_CHECKPOINT_NAME)
    return path if path.is_file() else None
