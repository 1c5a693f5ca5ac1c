"""Pure tensor functions shared by training and inference: padding, memory read, aggregation.

Shapes use B (batch of objects), C (channels), T (memory frames), H x W (pixels); a stride suffix
(``f16``) marks a feature map's scale. Memory is kept as tokens: B x (T*h*w) x C.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Pad = tuple[int, int, int, int]  # left, right, top, bottom, as F.pad takes it

PROB_EPS = 1e-7  # soft aggregation clamps probabilities to [eps, 1 - eps], as the release does


def pad_to_multiple(x: torch.Tensor, multiple: int = 16) -> tuple[torch.Tensor, Pad]:
    """Zero-pad the last two axes up to a multiple; the odd pixel goes after (bottom/right)."""
    h, w = x.shape[-2:]
    dh, dw = -h % multiple, -w % multiple
    pad = (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2)
    if dh == 0 and dw == 0:
        return x, pad
    return F.pad(x, pad), pad


def unpad(x: torch.Tensor, pad: Pad) -> torch.Tensor:
    """Undo :func:`pad_to_multiple` on the last two axes."""
    left, right, top, bottom = pad
    h, w = x.shape[-2:]
    return x[..., top : h - bottom, left : w - right]


def to_tokens(feature: torch.Tensor) -> torch.Tensor:
    """B x C x h x w -> B x (h*w) x C."""
    return feature.flatten(2).transpose(1, 2)


def read_memory(
    memory_keys: torch.Tensor, memory_values: torch.Tensor, query_key: torch.Tensor
) -> torch.Tensor:
    """Space-time memory read.

    ``memory_keys``: B x M x Ck, ``memory_values``: B x M x Cv (M = T*h*w memory positions),
    ``query_key``: B x N x Ck (N = h*w query positions) -> B x N x Cv.

    Each query position takes a softmax over all M memory positions of key dot products scaled by
    1/sqrt(Ck): exactly scaled dot-product attention, so torch's fused kernel does it without
    materialising the M x N affinity when it can.
    """
    return F.scaled_dot_product_attention(
        query_key.unsqueeze(1), memory_keys.unsqueeze(1), memory_values.unsqueeze(1)
    ).squeeze(1)


def soft_aggregate(object_probs: torch.Tensor) -> torch.Tensor:
    """Merge independent per-object probabilities into one set of logits.

    ``object_probs``: ... x N x H x W (object i's foreground probability) -> ... x (N+1) x H x W
    logits, background first. Background = product of the complements; each channel is clamped to
    [eps, 1 - eps] and mapped through logit(), so a softmax over channels gives the frame's
    probabilities and a cross-entropy over them is the paper's training loss.
    """
    background = torch.prod(1 - object_probs, dim=-3, keepdim=True)
    merged = torch.cat([background, object_probs], dim=-3).clamp(PROB_EPS, 1 - PROB_EPS)
    return torch.log(merged / (1 - merged))


def others_mask(masks: torch.Tensor) -> torch.Tensor:
    """For each object, the union of all the other objects' masks, clamped to [0, 1].

    ``masks``: N x H x W soft masks -> N x H x W.
    """
    return (masks.sum(dim=0, keepdim=True) - masks).clamp(0, 1)
