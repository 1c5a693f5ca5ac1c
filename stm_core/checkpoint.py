"""Load and save STM weights: the official release's checkpoint and this project's own format.

The project's format is a dict ``{"format": FORMAT, "arch": {...}, "state_dict": ..., "metadata":
...}`` so a caller never has to say which trunk a file holds. A bare state dict (the official
``STM_weights.pth``, saved from ``nn.DataParallel`` hence the ``module.`` prefix) is recognised too;
its trunk is read off the key head's input width.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import torch

from .errors import CheckpointError
from .io import file_sha256
from .model.network import STM
from .model.trunks import TRUNKS

FORMAT = "stm-label/1"
_KEY_HEAD = "KV_Q_r4.Key.weight"  # its input width names the trunk
_MAX_LISTED = 8

CheckpointSource = str | os.PathLike[str] | IO[bytes] | Mapping[str, Any]


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """CUDA when present (honouring CUDA_VISIBLE_DEVICES), else the CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 in hardware (CUDA with bf16, CPUs with AVX-512 BF16
    or AMX). Elsewhere oneDNN emulates it: on an AVX2-only CPU a bf16-autocast training step
    is many times slower than float32 (``bench_training_precision``, docs/benchmarks.md), so
    autocast must be chosen per device, not switched on everywhere."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def load_model(source: CheckpointSource, device: str | torch.device | None = None) -> STM:
    """Build STM from a checkpoint and put it on ``device`` in eval mode.

    ``source`` is a path, a binary file object, or an already-loaded dict (either format).
    Raises :class:`CheckpointError` naming the missing/unexpected keys or mismatched shapes.
    """
    checkpoint = _read(source)
    name = _describe(source)
    if checkpoint.get("format") == FORMAT:
        trunk = checkpoint.get("arch", {}).get("trunk")
        state = checkpoint.get("state_dict")
        if not isinstance(state, Mapping):
            raise CheckpointError(f"{name}: checkpoint has no state_dict")
    else:
        state = _strip_prefix(checkpoint)
        trunk = _infer_trunk(state, name)
    try:
        model = STM(trunk)
    except ValueError as exc:
        raise CheckpointError(f"{name}: {exc}") from None
    _load_strict(model, state, name)
    return model.to(pick_device(device)).eval()


def save_checkpoint(
    model: STM,
    path: str | os.PathLike[str] | IO[bytes],
    metadata: Mapping[str, Any] | None = None,
    half: bool = False,
) -> None:
    """Write ``model`` in the project's format; ``half`` stores float tensors as float16."""
    state = {
        k: (v.detach().cpu().half() if half and v.is_floating_point() else v.detach().cpu())
        for k, v in model.state_dict().items()
    }
    payload = {
        "format": FORMAT,
        "arch": {"trunk": model.spec.name},
        "state_dict": state,
        "metadata": dict(metadata or {}),
    }
    torch.save(payload, path)


def checkpoint_sha256(path: str | os.PathLike[str]) -> str:
    """Content hash of a checkpoint file: the identity recorded next to every label it makes."""
    return file_sha256(path)


def read_metadata(source: CheckpointSource) -> dict[str, Any]:
    """The metadata dict of a project checkpoint ({} for the official format)."""
    checkpoint = _read(source)
    return dict(checkpoint.get("metadata", {})) if checkpoint.get("format") == FORMAT else {}


def _describe(source: CheckpointSource) -> str:
    if isinstance(source, str | os.PathLike):
        return str(source)
    if isinstance(source, Mapping):
        return "<state dict>"
    return str(getattr(source, "name", "<file object>"))


def _read(source: CheckpointSource) -> Mapping[str, Any]:
    if isinstance(source, Mapping):
        return source
    name = _describe(source)
    if isinstance(source, str | os.PathLike) and not Path(source).is_file():
        raise CheckpointError(f"{name}: checkpoint file not found")
    try:
        loaded = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file; all mean "unreadable"
        detail = (str(exc).strip().splitlines() or [""])[0]  # torch's messages run to pages
        raise CheckpointError(
            f"{name}: not a readable PyTorch checkpoint ({type(exc).__name__}: {detail})"
        ) from None
    if not isinstance(loaded, Mapping):
        raise CheckpointError(f"{name}: expected a dict of tensors, found {type(loaded).__name__}")
    return loaded


def _strip_prefix(state: Mapping[str, Any]) -> dict[str, Any]:
    """Drop the ``module.`` prefix that nn.DataParallel adds to every key."""
    return {k.removeprefix("module."): v for k, v in state.items()}


def _infer_trunk(state: Mapping[str, Any], name: str) -> str:
    head = state.get(_KEY_HEAD)
    if not isinstance(head, torch.Tensor):
        raise CheckpointError(f"{name}: no {_KEY_HEAD!r} tensor; this is not an STM checkpoint")
    for trunk, spec in TRUNKS.items():
        if head.ndim == 4 and head.shape[1] == spec.f16 and head.shape[0] == spec.key_dim:
            return trunk
    raise CheckpointError(
        f"{name}: {_KEY_HEAD} has shape {list(head.shape)}, which matches no known trunk "
        f"({', '.join(TRUNKS)})"
    )


def _load_strict(model: STM, state: Mapping[str, Any], name: str) -> None:
    expected = model.state_dict()
    state = dict(state)
    # Older PyTorch did not save BatchNorm's counter; it plays no part in eval mode.
    for key, value in expected.items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = value
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k}: checkpoint {list(state[k].shape)} vs model {list(expected[k].shape)}"
        for k in expected
        if k in state
        and isinstance(state[k], torch.Tensor)
        and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({_listing(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({_listing(unexpected)})")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches ({_listing(mismatched)})")
    if problems:
        raise CheckpointError(
            f"{name}: does not fit STM({model.spec.name}): " + "; ".join(problems)
        )
    state = {k: v.to(expected[k].dtype) if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, strict=True)


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f", ... {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else "")


def to_bytes(model: STM, metadata: Mapping[str, Any] | None = None, half: bool = False) -> bytes:
    """The checkpoint as bytes, for object stores that take whole objects."""
    buffer = io.BytesIO()
    save_checkpoint(model, buffer, metadata, half=half)
    return buffer.getvalue()
