"""A functional reference of the official STM release's inference, written from the spec.

Why this exists: ``stm_core`` promises the release's per-frame probabilities to 1e-4 when run with
the release's settings (``/work/shared/spec/stm_semantics.md``). This module is the yardstick for
that promise, so it deliberately shares no code with ``stm_core.model``: it takes a plain state
dict with the official key names (``Encoder_M.res3.0.conv2.weight``, ``KV_Q_r4.Key.bias``, ...;
the ``module.`` prefix of the official file is accepted) and computes everything with
``torch.nn.functional``, walking the ResNet blocks by key name.

It mirrors the release's structure rather than ours:

- masks carry ``K = 11`` channels (background + 10 object slots), and memory tensors are padded to
  ``1 x K x C x T x h x w`` with the object in slot ``o`` (slot 0 stays empty);
- ``segment`` returns 11-channel logits, where empty slots become logit(1e-7);
- the memory read is an explicit ``bmm`` + softmax over the ``T*h*w`` memory positions;
- ``run_video`` is the release's evaluation loop with a memory step ``mem_every``.

Shapes: frames ``1 x 3 x H x W`` float in [0, 1]; ``h x w`` = padded size / 16.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import torch
import torch.nn.functional as F

MAX_OBJECTS = 10
NUM_SLOTS = MAX_OBJECTS + 1  # K: background + 10 objects, as the release allocates
PROB_EPS = 1e-7
BN_EPS = 1e-5  # torch.nn.BatchNorm2d's default, which the release's torchvision ResNet uses
LAYER_STRIDES = {"res2": 1, "res3": 2, "res4": 2}  # ResNet layer1..layer3; stride in block 0

Pad = tuple[int, int, int, int]  # left, right, top, bottom (F.pad order)


def pad_divide_by(x: torch.Tensor, d: int = 16) -> tuple[torch.Tensor, Pad]:
    """Zero-pad the last two axes up to a multiple of ``d``: ``pad // 2`` before, the rest after."""
    h, w = x.shape[-2:]
    total_h = (d - h % d) % d
    total_w = (d - w % d) % d
    pad = (total_w // 2, total_w - total_w // 2, total_h // 2, total_h - total_h // 2)
    return F.pad(x, pad), pad


def crop_pad(x: torch.Tensor, pad: Pad) -> torch.Tensor:
    """Remove the padding that :func:`pad_divide_by` added."""
    left, right, top, bottom = pad
    h, w = x.shape[-2:]
    return x[..., top : h - bottom, left : w - right]


def one_hot_slots(labels: torch.Tensor, num_objects: int) -> torch.Tensor:
    """``labels``: H x W integer ids (0 = background) -> 1 x K x H x W float one-hot.

    Slots above ``num_objects`` stay zero, as in the release's DAVIS loader.
    """
    masks = torch.zeros(1, NUM_SLOTS, *labels.shape)
    for k in range(num_objects + 1):
        masks[0, k] = (labels == k).float()
    return masks


class ReleaseSTM:
    """The release's network as functions of a state dict (BatchNorm in eval mode, no autograd)."""

    def __init__(
        self, state_dict: Mapping[str, torch.Tensor], dtype: torch.dtype = torch.float32
    ) -> None:
        self.dtype = dtype
        self.params: dict[str, torch.Tensor] = {}
        for key, value in state_dict.items():
            name = key.removeprefix("module.")
            value = value.detach().to("cpu")
            self.params[name] = value.to(dtype) if value.is_floating_point() else value
        for needed in (
            "Encoder_M.conv1_m.weight",
            "Encoder_Q.conv1.weight",
            "Decoder.pred2.weight",
        ):
            if needed not in self.params:
                raise KeyError(f"state dict has no {needed!r}: not an STM state dict")

    # ----------------------------------------------------------------- primitives by key name
    def _w(self, name: str) -> torch.Tensor:
        try:
            return self.params[name]
        except KeyError:
            raise KeyError(f"state dict has no {name!r}") from None

    def _conv(self, x: torch.Tensor, name: str, stride: int = 1) -> torch.Tensor:
        """A conv whose padding keeps the size (k // 2), as every conv in STM has."""
        weight = self._w(f"{name}.weight")
        bias = self.params.get(f"{name}.bias")
        return F.conv2d(x, weight, bias, stride=stride, padding=weight.shape[-1] // 2)

    def _bn(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.batch_norm(
            x,
            self._w(f"{name}.running_mean"),
            self._w(f"{name}.running_var"),
            self._w(f"{name}.weight"),
            self._w(f"{name}.bias"),
            training=False,
            eps=BN_EPS,
        )

    def _block_indices(self, layer: str) -> list[int]:
        pattern = re.compile(rf"^{re.escape(layer)}\.(\d+)\.conv1\.weight$")
        found = sorted(int(m.group(1)) for k in self.params if (m := pattern.match(k)))
        if not found:
            raise KeyError(f"state dict has no blocks under {layer!r}")
        return found

    def _bottleneck(self, x: torch.Tensor, name: str, stride: int) -> torch.Tensor:
        """torchvision's Bottleneck (stride on the 3x3 conv)."""
        out = F.relu(self._bn(self._conv(x, f"{name}.conv1"), f"{name}.bn1"))
        out = F.relu(self._bn(self._conv(out, f"{name}.conv2", stride), f"{name}.bn2"))
        out = self._bn(self._conv(out, f"{name}.conv3"), f"{name}.bn3")
        return F.relu(out + self._shortcut(x, name, stride))

    def _basic(self, x: torch.Tensor, name: str, stride: int) -> torch.Tensor:
        """torchvision's BasicBlock (two 3x3 convs)."""
        out = F.relu(self._bn(self._conv(x, f"{name}.conv1", stride), f"{name}.bn1"))
        out = self._bn(self._conv(out, f"{name}.conv2"), f"{name}.bn2")
        return F.relu(out + self._shortcut(x, name, stride))

    def _shortcut(self, x: torch.Tensor, name: str, stride: int) -> torch.Tensor:
        if f"{name}.downsample.0.weight" not in self.params:
            return x
        return self._bn(self._conv(x, f"{name}.downsample.0", stride), f"{name}.downsample.1")

    def _layer(self, x: torch.Tensor, name: str) -> torch.Tensor:
        layer = name.rsplit(".", 1)[-1]
        for i in self._block_indices(name):
            block = f"{name}.{i}"
            stride = LAYER_STRIDES[layer] if i == 0 else 1
            if f"{block}.conv3.weight" in self.params:
                x = self._bottleneck(x, block, stride)
            else:
                x = self._basic(x, block, stride)
        return x

    def _trunk(
        self, encoder: str, stem: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """bn1, ReLU, maxpool, res2..res4 -> (r4 at 1/16, r3 at 1/8, r2 at 1/4)."""
        x = F.relu(self._bn(stem, f"{encoder}.bn1"))
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        r2 = self._layer(x, f"{encoder}.res2")
        r3 = self._layer(r2, f"{encoder}.res3")
        r4 = self._layer(r3, f"{encoder}.res4")
        return r4, r3, r2

    def _normalise(self, encoder: str, frame: torch.Tensor) -> torch.Tensor:
        return (frame - self._w(f"{encoder}.mean")) / self._w(f"{encoder}.std")

    def _conv1(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """The ResNet stem: 7x7, stride 2, padding 3, no bias."""
        return F.conv2d(x, self._w(f"{name}.weight"), None, stride=2, padding=3)

    # ------------------------------------------------------------------------ network parts
    def encoder_m(self, frame: torch.Tensor, m: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        """``frame``: N x 3 x H x W, ``m``/``o``: N x H x W -> r4: N x C16 x H/16 x W/16."""
        stem = (
            self._conv1(self._normalise("Encoder_M", frame), "Encoder_M.conv1")
            + self._conv1(m.unsqueeze(1), "Encoder_M.conv1_m")
            + self._conv1(o.unsqueeze(1), "Encoder_M.conv1_o")
        )
        return self._trunk("Encoder_M", stem)[0]

    def encoder_q(self, frame: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``frame``: 1 x 3 x H x W -> (r4, r3, r2)."""
        stem = self._conv1(self._normalise("Encoder_Q", frame), "Encoder_Q.conv1")
        return self._trunk("Encoder_Q", stem)

    def key_value(self, r4: torch.Tensor, head: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self._conv(r4, f"{head}.Key"), self._conv(r4, f"{head}.Value")

    @staticmethod
    def memory_read(
        m_in: torch.Tensor, m_out: torch.Tensor, q_in: torch.Tensor, q_out: torch.Tensor
    ) -> torch.Tensor:
        """Space-time memory read, spelled out.

        ``m_in``: N x Ck x T x h x w, ``m_out``: N x Cv x T x h x w, ``q_in``: N x Ck x h x w,
        ``q_out``: N x Cv x h x w -> N x 2Cv x h x w (read first, then the query value).
        """
        n, ck, t, h, w = m_in.shape
        cv = m_out.shape[1]
        mi = m_in.reshape(n, ck, t * h * w).transpose(1, 2)  # N x THW x Ck
        qi = q_in.reshape(n, ck, h * w)  # N x Ck x HW
        affinity = torch.bmm(mi, qi) / math.sqrt(ck)  # N x THW x HW
        affinity = F.softmax(affinity, dim=1)  # over the memory positions
        mo = m_out.reshape(n, cv, t * h * w)  # N x Cv x THW
        read = torch.bmm(mo, affinity).reshape(n, cv, h, w)
        return torch.cat([read, q_out], dim=1)

    def _res_block(self, x: torch.Tensor, name: str) -> torch.Tensor:
        r = self._conv(F.relu(self._conv(F.relu(x), f"{name}.conv1")), f"{name}.conv2")
        if f"{name}.downsample.weight" in self.params:
            x = self._conv(x, f"{name}.downsample")
        return x + r

    def _refine(self, skip: torch.Tensor, coarse: torch.Tensor, name: str) -> torch.Tensor:
        s = self._res_block(self._conv(skip, f"{name}.convFS"), f"{name}.ResFS")
        up = F.interpolate(coarse, scale_factor=2, mode="bilinear", align_corners=False)
        return self._res_block(s + up, f"{name}.ResMM")

    def decoder(self, m4: torch.Tensor, r3: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
        """N x 2Cv x h x w readout + skips -> N x 2 x H x W logits at the padded size."""
        x = self._res_block(self._conv(m4, "Decoder.convFM"), "Decoder.ResMM")
        x = self._refine(r3, x, "Decoder.RF3")
        x = self._refine(r2, x, "Decoder.RF2")
        p = self._conv(F.relu(x), "Decoder.pred2")
        return F.interpolate(p, scale_factor=4, mode="bilinear", align_corners=False)

    @staticmethod
    def soft_aggregation(ps: torch.Tensor, num_slots: int = NUM_SLOTS) -> torch.Tensor:
        """``ps``: N x H x W foreground probabilities -> 1 x K x H x W logits.

        Slot 0 = prod(1 - p), slots 1..N = p, the remaining slots 0; clamped to [eps, 1 - eps].
        """
        n, h, w = ps.shape
        em = torch.zeros(1, num_slots, h, w, dtype=ps.dtype)
        em[0, 0] = torch.prod(1 - ps, dim=0)
        em[0, 1 : n + 1] = ps
        em = em.clamp(PROB_EPS, 1 - PROB_EPS)
        return torch.log(em / (1 - em))

    # ------------------------------------------------------------------ the release's API
    @torch.no_grad()
    def memorize(
        self, frame: torch.Tensor, masks: torch.Tensor, num_objects: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Memory entry of one frame.

        ``frame``: 1 x 3 x H x W, ``masks``: 1 x K x H x W (slot 0 background, soft or one-hot)
        -> keys 1 x K x Ck x 1 x h x w and values 1 x K x Cv x 1 x h x w; slot o holds object o.
        """
        frame, _ = pad_divide_by(frame.to(self.dtype))
        masks, _ = pad_divide_by(masks.to(self.dtype))
        ms, os_ = [], []
        for obj in range(1, num_objects + 1):
            ms.append(masks[:, obj])
            others = masks[:, 1:obj].sum(dim=1) + masks[:, obj + 1 : num_objects + 1].sum(dim=1)
            os_.append(others.clamp(0, 1))
        r4 = self.encoder_m(frame.expand(num_objects, -1, -1, -1), torch.cat(ms), torch.cat(os_))
        k4, v4 = self.key_value(r4, "KV_M_r4")
        return self._pad_slots(k4), self._pad_slots(v4)

    @staticmethod
    def _pad_slots(mem: torch.Tensor) -> torch.Tensor:
        """N x C x h x w -> 1 x K x C x 1 x h x w with object o in slot o."""
        n, c, h, w = mem.shape
        out = torch.zeros(1, NUM_SLOTS, c, 1, h, w, dtype=mem.dtype)
        out[0, 1 : n + 1, :, 0] = mem
        return out

    @torch.no_grad()
    def segment(
        self, frame: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, num_objects: int
    ) -> torch.Tensor:
        """``frame``: 1 x 3 x H x W; ``keys``/``values``: 1 x K x C x T x h x w -> 1 x K x H x W
        soft-aggregated logits, cropped back to H x W."""
        frame, pad = pad_divide_by(frame.to(self.dtype))
        r4, r3, r2 = self.encoder_q(frame)
        k4, v4 = self.key_value(r4, "KV_Q_r4")
        n = num_objects
        m4 = self.memory_read(
            keys[0, 1 : n + 1],
            values[0, 1 : n + 1],
            k4.expand(n, -1, -1, -1),
            v4.expand(n, -1, -1, -1),
        )
        logits = self.decoder(m4, r3.expand(n, -1, -1, -1), r2.expand(n, -1, -1, -1))
        ps = F.softmax(logits, dim=1)[:, 1]  # N x H x W
        return crop_pad(self.soft_aggregation(ps), pad)

    @torch.no_grad()
    def run_video(
        self, frames: torch.Tensor, first_mask: torch.Tensor, num_objects: int, mem_every: int = 5
    ) -> torch.Tensor:
        """The release's evaluation loop.

        ``frames``: T x 3 x H x W in [0, 1]; ``first_mask``: H x W ids 0..num_objects on frame 0
        -> T x K x H x W probabilities (frame 0 = the one-hot mask).

        At step t the entry of frame t-1 (encoded with its own probabilities) is appended after
        the permanent entries; it becomes permanent when t-1 is a multiple of ``mem_every``.
        """
        if not 1 <= num_objects <= MAX_OBJECTS:
            raise ValueError(f"num_objects must be in 1..{MAX_OBJECTS}, got {num_objects}")
        num_frames = frames.shape[0]
        to_memorize = set(range(0, num_frames, mem_every))
        probs = torch.zeros(num_frames, NUM_SLOTS, *frames.shape[-2:], dtype=self.dtype)
        probs[0] = one_hot_slots(first_mask, num_objects)[0]
        keys = values = None
        for t in range(1, num_frames):
            prev_key, prev_value = self.memorize(frames[t - 1 : t], probs[t - 1 : t], num_objects)
            if keys is None:
                this_keys, this_values = prev_key, prev_value
            else:
                this_keys = torch.cat([keys, prev_key], dim=3)
                this_values = torch.cat([values, prev_value], dim=3)
            logit = self.segment(frames[t : t + 1], this_keys, this_values, num_objects)
            probs[t] = F.softmax(logit, dim=1)[0]
            if t - 1 in to_memorize:
                keys, values = this_keys, this_values
        return probs
