"""The training loop itself, without Ray: optimiser, schedule, one step, and resumable state.

Ray Train (pipeline/training) and the quick local path both drive :class:`Trainer`; only where
checkpoints go and how workers synchronise gradients differ. Sample order is a pure function of
(seed, step, rank): step s on rank r of w workers takes dataset items
``[(s*w + r)*B, (s*w + r + 1)*B)``, so a resumed run sees exactly the batches an undisturbed run
would have seen.

Mixed precision: ``bf16=True`` runs the forward pass under bfloat16 autocast (loss and soft
aggregation stay float32); ``None`` (the default) uses it where the device computes bfloat16
natively (:func:`stm_core.checkpoint.native_bf16`): faster on CUDA and on CPUs with AMX or
AVX-512 BF16, many times slower where it is emulated.

Optimiser: AdamW (lr 2e-4 by default, weight decay 1e-4) with linear warm-up and cosine decay to
10% of the peak, instead of the paper's Adam at 1e-5: the paper fine-tunes an ImageNet-pretrained
trunk, while our trunk starts from random weights and needs larger steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from ..checkpoint import native_bf16
from ..model.network import STM
from .clip_model import ClipSTM, bootstrap_top_p, clip_loss, set_batchnorm_frozen
from .datasets import ClipDataset, collate_clips
from .video_clips import max_skip_schedule


def lr_factor(step: int, warmup_steps: int, total_steps: int, floor: float = 0.1) -> float:
    """Multiplier of the peak learning rate: linear warm-up, then cosine down to ``floor``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


class Trainer:
    """Owns the clip model, optimiser and step counter of one worker.

    ``wrap`` lets a distributed runner put the clip model in DistributedDataParallel; the inner
    :class:`STM` (``self.stm``) is what checkpoints store.
    """

    def __init__(
        self,
        stm: STM,
        *,
        lr: float,
        weight_decay: float,
        warmup_steps: int,
        total_steps: int,
        freeze_bn: bool,
        device: torch.device,
        bf16: bool | None = None,
        wrap: Callable[[nn.Module], nn.Module] = lambda m: m,
        trunk_lr_scale: float = 1.0,
        loss_top_p: float = 1.0,
        loss_top_p_warm: tuple[int, int] = (0, 0),
    ) -> None:
        """``loss_top_p`` / ``loss_top_p_warm``: bootstrapped cross-entropy, see
        :func:`~stm_core.training.clip_model.bootstrap_top_p` (1.0: the plain mean)."""
        if not 0.0 < loss_top_p <= 1.0:
            raise ValueError(f"loss_top_p must be in (0, 1], got {loss_top_p}")
        if not 0 <= loss_top_p_warm[0] <= loss_top_p_warm[1]:
            raise ValueError(f"loss_top_p_warm must be 0 <= start <= end, got {loss_top_p_warm}")
        self.loss_top_p, self.loss_top_p_warm = loss_top_p, tuple(loss_top_p_warm)
        self.stm = stm.to(device)
        self.bf16 = native_bf16(device) if bf16 is None else bf16
        self.device = device
        self.freeze_bn = freeze_bn
        clip = ClipSTM(self.stm)
        self._set_mode(clip)
        self.module = wrap(clip)
        self.optimizer = torch.optim.AdamW(
            _param_groups(self.stm, trunk_lr_scale), lr=lr, weight_decay=weight_decay
        )
        self.warmup_steps, self.total_steps = warmup_steps, total_steps
        self.peak_lr = lr
        self.step = 0
        self.history: list[tuple[int, float]] = []  # (step, loss)

    def _set_mode(self, clip: nn.Module) -> None:
        clip.train()
        set_batchnorm_frozen(clip, self.freeze_bn)

    def train_step(self, batch: dict[str, torch.Tensor]) -> float:
        """One optimiser step on a :func:`collate_clips` batch; returns the loss."""
        for group in self.optimizer.param_groups:
            group["lr"] = (
                self.peak_lr
                * group["lr_scale"]
                * lr_factor(self.step, self.warmup_steps, self.total_steps)
            )
        frames = batch["frames"].to(self.device)
        labels = batch["masks"].to(self.device)
        first = batch["one_hot"][:, 0, 1:].to(self.device)  # B x K x H x W, frame 0
        valid = batch["valid"][:, 1:].to(self.device)  # B x K
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.module(frames, first, valid)
        loss = clip_loss([lg.float() for lg in logits], labels, self.loss_share(self.step))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.stm.parameters(), 5.0)
        self.optimizer.step()
        value = float(loss.detach())
        self.history.append((self.step, value))
        self.step += 1
        return value

    def loss_share(self, step: int) -> float:
        """The share of each frame's pixels the loss averages at ``step`` (1.0: all of them)."""
        return bootstrap_top_p(step, self.loss_top_p, self.loss_top_p_warm)

    def state_dict(self) -> dict[str, Any]:
        """Everything but the network weights, which go into the model checkpoint."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "history": self.history,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.history = [(int(s), float(v)) for s, v in state["history"]]


def _param_groups(stm: STM, trunk_lr_scale: float) -> list[dict[str, Any]]:
    """Trainable parameters in two groups: the encoders' pretrained trunks at
    ``trunk_lr_scale`` times the peak rate (a pretrained trunk is fine-tuned gently, as in
    segmentation transfer), everything else at the peak rate. The mask stems of the memory
    encoder are new layers, so they are not "trunk"."""
    trunk, rest = [], []
    for name, param in stm.named_parameters():
        if not param.requires_grad:
            continue
        in_trunk = name.startswith(("Encoder_M.", "Encoder_Q.")) and ".conv1_" not in name
        (trunk if in_trunk else rest).append(param)
    groups = [{"params": rest, "lr_scale": 1.0}]
    if trunk:
        groups.append({"params": trunk, "lr_scale": trunk_lr_scale})
    return groups


def batch_for_step(
    dataset: ClipDataset, step: int, batch_size: int, rank: int = 0, world_size: int = 1
) -> dict[str, torch.Tensor]:
    """The batch that ``rank`` trains on at ``step`` (see the module docstring)."""
    first = (step * world_size + rank) * batch_size
    items = [dataset[(first + i) % len(dataset)] for i in range(batch_size)]
    return collate_clips(items, max_objects=dataset.max_objects)


class StepBatches(Dataset):
    """Item ``s`` is the batch ``rank`` trains on at step ``s``, drawn with the curriculum's skip
    at ``s``: what :func:`batch_for_step` gives after ``set_max_skip``, so DataLoader workers
    can build batches ahead of the optimiser without changing a single sample."""

    def __init__(
        self,
        dataset: ClipDataset,
        batch_size: int,
        total_steps: int,
        skip_range: tuple[int, int],
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.total_steps = total_steps
        self.skip_range = skip_range
        self.rank = rank
        self.world_size = world_size

    def __len__(self) -> int:
        return self.total_steps

    def max_skip(self, step: int) -> int:
        return max_skip_schedule(step, self.total_steps, *self.skip_range)

    def __getitem__(self, step: int) -> dict[str, torch.Tensor]:
        self.dataset.set_max_skip(self.max_skip(step))
        return batch_for_step(self.dataset, step, self.batch_size, self.rank, self.world_size)


def step_batches(
    batches: StepBatches, first_step: int, loader_workers: int = 0, pin_memory: bool = False
) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """``(step, batch)`` from ``first_step`` to the last step, in order.

    Why workers: on a GPU the optimiser step takes a fraction of the time one process needs to
    draw a batch of clips (decode, warp, paste, render), so with ``loader_workers`` > 0 the
    batches are built ahead by that many processes. Each item is a pure function of its step,
    so the batches, and a resumed run's, are the ones a single process gives.
    """
    steps = range(first_step, len(batches))
    if loader_workers == 0:
        for step in steps:
            yield step, batches[step]
        return
    loader = DataLoader(
        batches,
        batch_size=None,  # an item is already a batch
        sampler=steps,
        num_workers=loader_workers,
        prefetch_factor=4,
        pin_memory=pin_memory,
    )
    yield from zip(steps, loader, strict=True)
