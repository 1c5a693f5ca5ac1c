"""stm_core: STM for one video and one model. No Ray, no fsspec: arrays in, arrays out.

Names are imported lazily (PEP 562), so ``from stm_core.errors import InputError`` or
``stm_core.io`` do not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "STM": "stm_core.model.network",
    "CheckpointError": "stm_core.errors",
    "FrameResult": "stm_core.propagation",
    "InputError": "stm_core.errors",
    "STMLabelError": "stm_core.errors",
    "VideoSession": "stm_core.propagation",
    "load_model": "stm_core.checkpoint",
    "pick_device": "stm_core.checkpoint",
    "propagate": "stm_core.propagation",
    "save_checkpoint": "stm_core.checkpoint",
}

__all__ = [
    "STM",
    "CheckpointError",
    "FrameResult",
    "InputError",
    "STMLabelError",
    "VideoSession",
    "load_model",
    "pick_device",
    "propagate",
    "save_checkpoint",
]

if TYPE_CHECKING:
    from .checkpoint import load_model, pick_device, save_checkpoint
    from .errors import CheckpointError, InputError, STMLabelError
    from .model.network import STM
    from .propagation import FrameResult, VideoSession, propagate


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'stm_core' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
