"""STM unrolled over a short training clip, as in the paper's training.

Frame 0 goes into memory with its ground-truth masks; each later frame is segmented against the
memory of all earlier frames, and its soft prediction (with gradients) is encoded into memory for
the next one. Only real objects are computed: a batch's (sample, object) pairs are packed into
rows, so padding a clip to K objects costs nothing. The clip module holds an :class:`STM`, so
checkpoints store the inner network's state dict and load strictly for inference.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..model.network import STM, QueryFeatures
from ..model.ops import others_mask, soft_aggregate


class ClipSTM(nn.Module):
    def __init__(self, stm: STM) -> None:
        super().__init__()
        self.stm = stm

    def forward(
        self, frames: torch.Tensor, first_masks: torch.Tensor, valid: torch.Tensor
    ) -> list[torch.Tensor]:
        """Unroll over a clip.

        ``frames``: B x T x 3 x H x W in [0, 1] (H, W multiples of 16); ``first_masks``: B x K x H
        x W ground-truth masks of frame 0 (K = max objects, padded objects all zero); ``valid``:
        B x K bool, which objects are real (at least one per sample). -> T-1 tensors of
        B x (1+K) x H x W logits (background first) for frames 1..T-1; padded objects get
        probability ~0 so they never win a pixel.
        """
        b, t, _, h, w = frames.shape
        k = first_masks.shape[1]
        rows = valid.flatten().nonzero().squeeze(1)  # R packed (sample, object) rows
        sample_of_row = rows // k
        others = torch.stack([others_mask(m) for m in first_masks])  # B x K x H x W
        mem_keys, mem_values = self.stm.encode_memory(
            frames[:, 0][sample_of_row],
            first_masks.flatten(0, 1)[rows],
            others.flatten(0, 1)[rows],
        )
        outputs = []
        for i in range(1, t):
            query = _select(self.stm.encode_query(frames[:, i]), sample_of_row)
            probs = frames.new_zeros(b * k, h, w)
            probs[rows] = self.stm.segment(query, mem_keys, mem_values).to(probs.dtype)
            logits = soft_aggregate(probs.view(b, k, h, w))
            outputs.append(logits)
            if i + 1 < t:
                soft = F.softmax(logits, dim=1)[:, 1:] * valid[..., None, None]
                others = torch.stack([others_mask(m) for m in soft])
                keys, values = self.stm.encode_memory(
                    frames[:, i][sample_of_row],
                    soft.flatten(0, 1)[rows],
                    others.flatten(0, 1)[rows],
                )
                mem_keys = torch.cat([mem_keys, keys], dim=1)
                mem_values = torch.cat([mem_values, values], dim=1)
        return outputs


def _select(query: QueryFeatures, index: torch.Tensor) -> QueryFeatures:
    """Per-sample query features -> one row per packed object."""
    return QueryFeatures(
        key=query.key[index], value=query.value[index], f8=query.f8[index], f4=query.f4[index]
    )


def clip_loss(logits: list[torch.Tensor], labels: torch.Tensor, top_p: float = 1.0) -> torch.Tensor:
    """Mean cross-entropy over the predicted frames, optionally over each frame's hardest pixels.

    ``labels``: B x T x H x W long, 0 = background, k = the k-th object slot (1-based).
    ``top_p`` < 1 is the bootstrapped cross-entropy of STCN and XMem: each frame's loss is the
    mean over the ``top_p`` fraction of its pixels (across the batch) with the largest loss. Once
    a model gets the bulk of an object right, the plain mean is dominated by easy pixels; the
    hard ones (thin parts, boundaries, a look-alike taken for the object) are where it still
    learns.
    """
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    losses = []
    for i, lg in enumerate(logits):
        if top_p == 1.0:
            losses.append(F.cross_entropy(lg, labels[:, i + 1]))
            continue
        per_pixel = F.cross_entropy(lg, labels[:, i + 1], reduction="none").flatten()
        kept = max(1, int(per_pixel.numel() * top_p))
        losses.append(per_pixel.topk(kept, sorted=False).values.mean())
    return torch.stack(losses).mean()


def bootstrap_top_p(step: int, top_p: float, warm: tuple[int, int]) -> float:
    """The fraction of pixels :func:`clip_loss` keeps at ``step``: all of them before
    ``warm[0]``, then linearly down to ``top_p`` at ``warm[1]`` and after, as in XMem (its
    main training goes from 1 to 0.15 between iterations 20k and 70k of 150k)."""
    start, end = warm
    if step < start:
        return 1.0
    if step >= end:
        return top_p
    return top_p + (1.0 - top_p) * (end - step) / (end - start)


def set_batchnorm_frozen(module: nn.Module, frozen: bool) -> None:
    """Frozen BatchNorm uses (and keeps) its running statistics and stops learning its affine
    parameters; unfrozen BN trains on batch statistics. Call after ``module.train()``."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.train(not frozen)
            for p in m.parameters():
                p.requires_grad_(not frozen)
