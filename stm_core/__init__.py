"""stm_core: STM for one video and one model. No Ray, no fsspec: arrays in, arrays out."""

from .checkpoint import load_model, pick_device, save_checkpoint
from .errors import CheckpointError, InputError, STMLabelError
from .model.network import STM
from .propagation import FrameResult, VideoSession, propagate

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
