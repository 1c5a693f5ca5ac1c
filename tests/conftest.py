"""Shared fixtures: the real test clips and a well-conditioned random STM.

A freshly initialised STM is a poor test subject: BatchNorm running stats of (0, 1) blow
activations up layer after layer, the memory read's softmax is nearly uniform, and the decoder's
probabilities sit near 0.5 whatever the memory holds, so a wrong memory schedule or mask would go
unnoticed. Calibrated naively (BatchNorm stats only), a random ResNet-50 is chaotic instead: float32
rounding grows about 4x per frame through the mask -> memory -> mask loop, and two correct
implementations drift apart by 1e-2 within six frames. ``calibrated_stm`` gives a model that is
neither, without trained weights; see :func:`calibrate`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from stm_core.model.resnet import BasicBlock, Bottleneck

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"
TRAIN_DATA = REAL_DATA.with_name("train")

CALIBRATION_CLIP = "car-shadow"  # not used by the equivalence tests, so they see unseen frames
CALIBRATION_FRAMES = (0, 10, 20, 30)
CALIBRATION_SIZE = (160, 90)  # W x H
RESIDUAL_GAIN = 0.2  # damps each ResNet block's residual branch: a contractive, stable trunk
AFFINITY_STD = 3.0  # target spread of the memory read's scaled key dot products
LOGIT_STD = 1.5  # target spread of the decoder's (foreground - background) logit; at 3, several
# objects near p = 1 on the same pixel make float32 soft aggregation lose 1e-3


@dataclass(frozen=True)
class Clip:
    """Frames (H x W x 3 uint8 RGB) and the label maps (H x W uint8) that exist among them."""

    frames: list[np.ndarray]
    masks: dict[int, np.ndarray]


def read_clip(
    root: Path, seq: str, frames: int | Sequence[int], size: tuple[int, int] | None = None
) -> Clip:
    """Frames of a DAVIS-layout clip (the first ``frames``, or those indices), resized to
    ``size`` (W x H) if given; masks are keyed by position in the returned list.

    Masks: palette PNGs give object ids as stored; 'L' {0, 255} PNGs give id 1.
    """
    folder = root / "JPEGImages" / "480p" / seq
    paths = sorted(folder.glob("*.jpg"))
    indices = range(frames) if isinstance(frames, int) else frames
    if not paths or max(indices) >= len(paths):
        raise FileNotFoundError(f"{folder}: has {len(paths)} frames, need index {max(indices)}")
    images, masks = [], {}
    for position, index in enumerate(indices):
        image = Image.open(paths[index]).convert("RGB")
        if size is not None:
            image = image.resize(size, Image.BILINEAR)
        images.append(np.asarray(image, dtype=np.uint8))
        mask_path = root / "Annotations" / "480p" / seq / f"{paths[index].stem}.png"
        if mask_path.is_file():
            mask = Image.open(mask_path)
            if size is not None:
                mask = mask.resize(size, Image.NEAREST)
            labels = np.asarray(mask)
            masks[position] = (labels > 0 if mask.mode == "L" else labels).astype(np.uint8)
    return Clip(images, masks)


@pytest.fixture(scope="session")
def real_data_root() -> Path:
    """``/work/shared/data/real`` (the repo's ../shared/data/real); skips when absent."""
    if not (REAL_DATA / "JPEGImages").is_dir():
        pytest.skip(f"real test clips not found at {REAL_DATA}")
    return REAL_DATA


@pytest.fixture(scope="session")
def train_data_root() -> Path:
    """``../shared/data/train`` (DAVIS 2016 train, ECSSD, DUTS-TR); skips when absent."""
    if not (TRAIN_DATA / "davis16-train").is_dir():
        pytest.skip(f"real training data not found at {TRAIN_DATA}")
    return TRAIN_DATA


@pytest.fixture(scope="session")
def read_real_clip(real_data_root: Path) -> Callable[..., Clip]:
    """``read_real_clip(seq, frames, size=None) -> Clip``: :func:`read_clip` on the real clips."""

    def read(seq: str, frames: int | Sequence[int], size: tuple[int, int] | None = None) -> Clip:
        return read_clip(real_data_root, seq, frames, size)

    return read


def _to_batch(clip: Clip) -> tuple[torch.Tensor, torch.Tensor]:
    frames = torch.from_numpy(np.stack(clip.frames)).permute(0, 3, 1, 2).float() / 255.0
    masks = torch.from_numpy(np.stack([clip.masks[t] for t in range(len(clip.frames))]) > 0)
    return frames, masks.float()


@torch.no_grad()
def calibrate(model: nn.Module, frames: torch.Tensor, masks: torch.Tensor) -> nn.Module:
    """Make a randomly initialised ``stm_core.model.network.STM`` well conditioned, in place.

    ``frames``: B x 3 x H x W in [0, 1], ``masks``: B x H x W {0, 1} (H, W multiples of 16);
    frame i's mask is the object, the other frames' masks stand in for "other objects".
    1. The last BatchNorm of every ResNet block is scaled by ``RESIDUAL_GAIN`` (as in
       zero-init-residual training), so blocks stay close to identity and small input changes do
       not explode with depth (a random BatchNorm ResNet-50 otherwise amplifies them).
    2. BatchNorm running stats of both encoders = the statistics of these frames (momentum None
       is a plain average over the passes), so every layer sees roughly unit activations.
    3. Both key heads are scaled so the memory read's logits q.k / sqrt(Ck) have std
       ``AFFINITY_STD``: attention then prefers some memory positions over others.
    4. ``Decoder.pred2`` is scaled and shifted so (foreground - background) logits have mean 0
       and std ``LOGIT_STD`` on these frames: probabilities spread over (0, 1) unsaturated.
    """
    from stm_core.model.ops import others_mask

    for block in model.modules():
        if isinstance(block, Bottleneck | BasicBlock):
            last_bn = block.bn3 if isinstance(block, Bottleneck) else block.bn2
            last_bn.weight.mul_(RESIDUAL_GAIN)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    others = others_mask(masks)
    for i in range(frames.shape[0]):
        model.Encoder_Q(frames[i : i + 1])
        model.Encoder_M(frames[i : i + 1], masks[i : i + 1, None], others[i : i + 1, None])
    for bn in bns:
        bn.momentum = 0.1
    model.eval()

    mem_keys = model.encode_memory(frames[:1], masks[:1], others[:1])[0]  # 1 x (h*w) x Ck
    query = model.encode_query(frames[1:2])
    spread = (query.key @ mem_keys.transpose(1, 2)).std() / mem_keys.shape[-1] ** 0.5
    scale = (AFFINITY_STD / spread.item()) ** 0.5  # both sides of the dot product
    for head in (model.KV_M_r4.Key, model.KV_Q_r4.Key):
        head.weight.mul_(scale)
        head.bias.mul_(scale)

    mem_keys, mem_values = model.encode_memory(frames[:1], masks[:1], others[:1])
    captured: list[torch.Tensor] = []
    hook = model.Decoder.pred2.register_forward_hook(lambda _m, _i, out: captured.append(out))
    for i in range(1, frames.shape[0]):
        model.segment(model.encode_query(frames[i : i + 1]), mem_keys, mem_values)
    hook.remove()
    diff = torch.cat([(c[:, 1] - c[:, 0]).flatten() for c in captured])
    gain = LOGIT_STD / diff.std().item()
    pred2 = model.Decoder.pred2
    pred2.weight.mul_(gain)
    pred2.bias.mul_(gain)
    pred2.bias[1] -= gain * diff.mean().item()
    return model


@pytest.fixture(scope="session")
def calibrated_stm(real_data_root: Path) -> Callable[[str], nn.Module]:
    """``calibrated_stm(trunk) -> STM``: seeded, random, calibrated weights, in eval mode.

    Cached per trunk for the session: treat the returned model as read-only.
    """
    from stm_core.model.network import STM

    clip = read_clip(real_data_root, CALIBRATION_CLIP, CALIBRATION_FRAMES, CALIBRATION_SIZE)
    frames, masks = _to_batch(clip)
    pad_h, pad_w = -frames.shape[-2] % 16, -frames.shape[-1] % 16
    frames = nn.functional.pad(frames, (0, pad_w, 0, pad_h))
    masks = nn.functional.pad(masks, (0, pad_w, 0, pad_h))
    cache: dict[str, nn.Module] = {}

    def make(trunk: str) -> nn.Module:
        if trunk not in cache:
            torch.manual_seed(0)
            cache[trunk] = calibrate(STM(trunk), frames, masks)
        return cache[trunk]

    return make
