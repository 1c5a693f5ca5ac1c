"""One training worker's loop, shared by Ray Train and the local (no Ray) runner.

A checkpoint directory holds ``model.pt`` (the STM in the project's checkpoint format, loadable
by ``stm_core.load_model``), ``trainer.pt`` (optimiser, step, loss history), ``history.json`` and
``loss_curve.png``. Only rank 0 writes one; every rank reports at the same steps, as Ray Train
requires.
"""

from __future__ import annotations

import io
import json
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

from schemas.training import TrainConfig
from stm_core import STM, load_model, save_checkpoint
from stm_core.training.datasets import ClipDataset
from stm_core.training.loop import StepBatches, Trainer, step_batches
from stm_core.training.photo_clips import PhotoSource

from .folders import folder_video_source
from .loss_plot import plot_loss

log = logging.getLogger(__name__)

MODEL_FILE = "model.pt"
TRAINER_FILE = "trainer.pt"

# report(metrics, checkpoint_dir or None): persists the directory if given.
Report = Callable[[dict[str, float], Path | None], None]


def build_dataset(config: TrainConfig) -> ClipDataset:
    sources: list = [
        folder_video_source(root, config.data.folder_resolution) for root in config.data.folders
    ]
    prob = config.data.folder_prob
    if config.data.selection_uri is not None:
        from pipeline.engine.selection_source import SelectionSource

        sources.append(
            SelectionSource(
                config.data.selection_uri,
                config.data.corpus_uri or "",
                config.storage,
                config.data.seeds_uri,
                config.data.seeds_format,
                config.data.max_frame_side,
            )
        )
        prob = config.data.selection_prob
    return ClipDataset(
        length=config.steps * config.workers * config.batch_size,
        seed=config.data.seed,
        stage=config.stage,
        crop=config.crop,
        num_frames=config.num_frames,
        max_objects=config.max_objects,
        max_skip=config.data.max_skip_start,
        video_length=config.data.video_length,
        sources=sources,
        source_prob=prob if sources else 0.0,
        recolour_prob=config.data.recolour_prob,
        lookalike_prob=config.data.lookalike_prob,
        sensor_look_prob=config.data.sensor_look_prob,
        scale_range=config.data.folder_scale_range,
        photos=[PhotoSource(root) for root in config.data.photo_folders],
        photo_prob=config.data.photo_prob,
    )


def initial_model(config: TrainConfig) -> STM:
    if config.init_checkpoint is None:
        return STM(config.trunk, pretrained_trunk=config.imagenet_trunk)
    uri = config.init_checkpoint
    if "://" in uri and not uri.startswith("file://"):  # object storage: read it whole first
        from pipeline import table_io

        source = io.BytesIO(table_io.read_bytes(uri, config.storage))
        source.name = uri  # load_model's errors name the checkpoint
        model = load_model(source, device="cpu")
    else:
        model = load_model(uri.removeprefix("file://"), device="cpu")
    if model.spec.name != config.trunk:
        raise ValueError(
            f"init_checkpoint {config.init_checkpoint} holds a {model.spec.name} STM, "
            f"but the config says trunk={config.trunk}"
        )
    return model


def run_worker(
    config: TrainConfig,
    *,
    rank: int,
    world_size: int,
    resume_dir: Path | None,
    report: Report,
    device: torch.device,
    wrap: Callable[[nn.Module], nn.Module] = lambda m: m,
) -> Trainer:
    """Train from ``resume_dir`` (or from scratch / ``init_checkpoint``) up to ``config.steps``."""
    if config.threads_per_worker:
        torch.set_num_threads(config.threads_per_worker)
    stm = load_model(resume_dir / MODEL_FILE, device="cpu") if resume_dir else initial_model(config)
    trainer = Trainer(
        stm,
        lr=config.lr,
        weight_decay=config.weight_decay,
        warmup_steps=config.warmup_steps,
        total_steps=config.steps,
        freeze_bn=config.bn_frozen,
        device=device,
        bf16=config.bf16,
        wrap=wrap,
        trunk_lr_scale=config.trunk_lr_scale,
        loss_top_p=config.loss_top_p,
        loss_top_p_warm=config.loss_top_p_warm,
    )
    log.info(
        "%s on %s (torch %s, bf16 autocast %s)",
        config.name,
        torch.cuda.get_device_name(device) if device.type == "cuda" else device,
        torch.__version__,
        "on" if trainer.bf16 else "off",
    )
    if resume_dir is not None:
        trainer.load_state_dict(torch.load(resume_dir / TRAINER_FILE, weights_only=False))
        log.info("resumed %s at step %d", config.name, trainer.step)
    batches = StepBatches(
        build_dataset(config),
        config.batch_size,
        config.steps,
        (config.data.max_skip_start, config.data.max_skip_end),
        rank,
        world_size,
    )
    started = time.monotonic()
    deadline = None if config.time_limit_minutes is None else config.time_limit_minutes * 60
    window_start, window_losses = started, []
    stream = step_batches(
        batches, trainer.step, config.data.loader_workers, pin_memory=device.type == "cuda"
    )
    for step, batch in stream:
        window_losses.append(trainer.train_step(batch))
        out_of_time = deadline is not None and _any_rank(
            time.monotonic() - started >= deadline, device
        )
        due = trainer.step % config.checkpoint_every == 0 or trainer.step == config.steps
        if due or out_of_time:
            elapsed = time.monotonic() - window_start
            metrics = {
                "step": trainer.step,
                "loss": sum(window_losses) / len(window_losses),
                "samples_per_s": len(window_losses) * config.batch_size * world_size / elapsed,
                "max_skip": batches.max_skip(step),
                "lr": trainer.optimizer.param_groups[0]["lr"],
                "loss_top_p": trainer.loss_share(step),
            }
            log.info("%s step %d: %s", config.name, trainer.step, metrics)
            with tempfile.TemporaryDirectory() as tmp:
                ckpt = write_checkpoint(trainer, config, Path(tmp)) if rank == 0 else None
                report(metrics, ckpt)
            window_start, window_losses = time.monotonic(), []
        if out_of_time:
            log.info(
                "%s: time limit of %s minutes reached at step %d of %d; the same name resumes",
                config.name,
                config.time_limit_minutes,
                trainer.step,
                config.steps,
            )
            break
    stream.close()  # a run stopped early shuts its loader processes down now
    return trainer


def _any_rank(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` is set on any rank: every rank must stop at the same step, or the
    ones still training wait forever in the gradient all-reduce."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return flag
    votes = torch.tensor([int(flag)], device=device)
    torch.distributed.all_reduce(votes, op=torch.distributed.ReduceOp.MAX)
    return bool(votes.item())


def write_checkpoint(trainer: Trainer, config: TrainConfig, directory: Path) -> Path:
    metadata = {
        "name": config.name,
        "stage": config.stage,
        "step": trainer.step,
        "crop": list(config.crop),
        "config": config.model_dump(mode="json", exclude={"storage"}),
    }
    save_checkpoint(trainer.stm, directory / MODEL_FILE, metadata=metadata)
    torch.save(trainer.state_dict(), directory / TRAINER_FILE)
    (directory / "history.json").write_text(json.dumps(trainer.history))
    plot_loss(trainer.history, directory / "loss_curve.png", f"{config.name} ({config.stage})")
    return directory
