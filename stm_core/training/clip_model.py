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


def clip_loss(logits: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the predicted frames.

    ``labels``: B x T x H x W long, 0 = background, k = the k-th object slot (1-based).
    """
    losses = [F.cross_entropy(lg, labels[:, i + 1]) for i, lg in enumerate(logits)]
    return torch.stack(losses).mean()


def set_batchnorm_frozen(module: nn.Module, frozen: bool) -> None:
    """Frozen BatchNorm uses (and keeps) its running statistics and stops learning its affine
    parameters; unfrozen BN trains on batch statistics. Call after ``module.train()``."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.train(not frozen)
            for p in m.parameters():
                p.requires_grad_(not frozen)
