"""The training loop without Ray: that it learns, its schedule, its sample order, BatchNorm
freezing, config validation, and the local runner's checkpoints and resume (also via the CLI).

Everything runs on a resnet18 STM with 64 x 64 crops and one torch thread (on this shared
2-core machine more threads make steps slower and erratic, not faster).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import yaml
from pydantic import ValidationError

from pipeline.training.worker import build_dataset
from schemas.common import load_config
from schemas.training import TrainConfig
from stm_core import STM, load_model
from stm_core.checkpoint import read_metadata
from stm_core.training.clip_model import bootstrap_top_p, clip_loss
from stm_core.training.datasets import ClipDataset, collate_clips
from stm_core.training.loop import StepBatches, Trainer, batch_for_step, lr_factor, step_batches
from stm_core.training.video_clips import max_skip_schedule

CROP = (64, 64)
MAX_OBJECTS = 2
CHECKPOINT_FILES = {"model.pt", "trainer.pt", "history.json", "loss_curve.png"}


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread during each test (the local runner sets it too); restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_dataset(length: int = 8) -> ClipDataset:
    return ClipDataset(length=length, seed=0, stage="static", crop=CROP, max_objects=MAX_OBJECTS)


@pytest.fixture(scope="module")
def fixed_batch() -> dict[str, torch.Tensor]:
    """Two static clips (B=2, T=3, 64 x 64), the same in every test."""
    return batch_for_step(tiny_dataset(), step=0, batch_size=2)


def make_trainer(
    lr: float, freeze_bn: bool = False, steps: int = 15, seed: int = 0, **options: object
) -> Trainer:
    torch.manual_seed(seed)
    return Trainer(
        STM("resnet18"),
        lr=lr,
        weight_decay=0.0,
        warmup_steps=3,
        total_steps=steps,
        freeze_bn=freeze_bn,
        device=torch.device("cpu"),
        bf16=None,  # native only: emulated bf16 made the overfitting test 7x slower
        **options,
    )


# --- learning -------------------------------------------------------------------------------


def test_overfits_a_fixed_batch(fixed_batch):
    """15 steps on the same two clips must cut the loss by more than 30%; the same run with a
    learning rate of 0 (the control) keeps the loss where it was."""
    trainer = make_trainer(lr=1e-3)
    losses = [trainer.train_step(fixed_batch) for _ in range(15)]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.7 * losses[0], losses
    assert trainer.step == 15
    assert [s for s, _ in trainer.history] == list(range(15))
    assert [v for _, v in trainer.history] == losses

    frozen = make_trainer(lr=0.0)
    still = [frozen.train_step(fixed_batch) for _ in range(3)]
    assert still[-1] >= 0.7 * still[0], still
    assert still[-1] == pytest.approx(still[0], rel=1e-5)  # BN uses batch stats: same output
    # Same seed, same weights, same batch: the two runs start from the same loss.
    assert still[0] == pytest.approx(losses[0], rel=1e-5)


def test_train_step_applies_the_schedule(fixed_batch):
    trainer = make_trainer(lr=1e-3)
    trainer.train_step(fixed_batch)  # step 0 of a 3-step warm-up: lr = 1/3 of the peak
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 / 3)


# --- bootstrapped cross-entropy ------------------------------------------------------------


def random_logits(seed: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Two predicted frames of a batch of 2 with 3 classes at 8 x 8, and their labels."""
    gen = torch.Generator().manual_seed(seed)
    logits = [torch.randn(2, 3, 8, 8, generator=gen) for _ in range(2)]
    labels = torch.randint(0, 3, (2, 3, 8, 8), generator=gen)
    return logits, labels


def test_clip_loss_keeps_each_frames_hardest_pixels():
    logits, labels = random_logits(0)
    per_frame = [
        nn.functional.cross_entropy(lg, labels[:, i + 1], reduction="none").flatten()
        for i, lg in enumerate(logits)
    ]
    plain = torch.stack([p.mean() for p in per_frame]).mean()
    assert clip_loss(logits, labels) == pytest.approx(float(plain), rel=1e-6)
    assert clip_loss(logits, labels, top_p=1.0) == pytest.approx(float(plain), rel=1e-6)
    # 128 pixels per frame (2 x 8 x 8): a quarter keeps the 32 largest losses of each frame.
    hardest = torch.stack([p.sort(descending=True).values[:32].mean() for p in per_frame])
    assert clip_loss(logits, labels, top_p=0.25) == pytest.approx(float(hardest.mean()), rel=1e-6)
    assert clip_loss(logits, labels, top_p=0.25) > plain
    # A fraction too small for one pixel still keeps the hardest one.
    worst = torch.stack([p.max() for p in per_frame]).mean()
    assert clip_loss(logits, labels, top_p=1e-6) == pytest.approx(float(worst), rel=1e-6)
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="top_p"):
            clip_loss(logits, labels, top_p=bad)


def test_bootstrap_top_p_warms_linearly_between_its_steps():
    assert bootstrap_top_p(0, 0.15, (10, 20)) == 1.0
    assert bootstrap_top_p(9, 0.15, (10, 20)) == 1.0
    assert bootstrap_top_p(10, 0.15, (10, 20)) == pytest.approx(1.0)
    assert bootstrap_top_p(15, 0.15, (10, 20)) == pytest.approx(0.575)
    assert bootstrap_top_p(20, 0.15, (10, 20)) == pytest.approx(0.15)
    assert bootstrap_top_p(10_000, 0.15, (10, 20)) == pytest.approx(0.15)
    assert bootstrap_top_p(0, 0.15, (0, 0)) == pytest.approx(0.15)  # no warm-up
    assert bootstrap_top_p(5, 1.0, (0, 10)) == 1.0  # the plain mean throughout


def test_trainer_trains_on_the_bootstrapped_loss(fixed_batch):
    """Same seed, same batch: the bootstrapped trainer's first loss is its hardest pixels' mean,
    above the plain trainer's; and it still learns the batch."""
    plain = make_trainer(lr=1e-3).train_step(fixed_batch)
    trainer = make_trainer(lr=1e-3, loss_top_p=0.15)
    losses = [trainer.train_step(fixed_batch) for _ in range(15)]
    assert losses[0] > 1.5 * plain, (losses[0], plain)
    assert losses[-1] < 0.7 * losses[0], losses
    with pytest.raises(ValueError, match="loss_top_p"):
        make_trainer(lr=1e-3, loss_top_p=0.0)
    with pytest.raises(ValueError, match="loss_top_p_warm"):
        make_trainer(lr=1e-3, loss_top_p=0.5, loss_top_p_warm=(20, 10))


def test_lr_factor_warmup_then_cosine():
    warmup, total = 10, 110
    # Linear warm-up: (step + 1) / warmup.
    assert lr_factor(0, warmup, total) == pytest.approx(0.1)
    assert lr_factor(4, warmup, total) == pytest.approx(0.5)
    assert lr_factor(9, warmup, total) == pytest.approx(1.0)
    # Cosine from 1 at the end of warm-up down to the floor at the last step, halfway between
    # them at the middle (cos(pi/2) = 0), and no lower afterwards.
    assert lr_factor(10, warmup, total) == pytest.approx(1.0)
    assert lr_factor(60, warmup, total) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(110, warmup, total) == pytest.approx(0.1)
    assert lr_factor(500, warmup, total) == pytest.approx(0.1)
    assert lr_factor(60, warmup, total, floor=0.0) == pytest.approx(0.5)
    decay = [lr_factor(s, warmup, total) for s in range(warmup, total + 1)]
    assert all(a >= b for a, b in zip(decay, decay[1:], strict=False))
    # No warm-up: the first step already runs at the peak.
    assert lr_factor(0, 0, 100) == pytest.approx(1.0)


# --- sample order ---------------------------------------------------------------------------


def assert_batches_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_batch_for_step_is_a_pure_function_of_step_and_rank():
    """Step 1 on rank 1 of 2 with B=1 is item (1*2 + 1)*1 = 3, whichever dataset object (same
    seed) produces it; rank 0 gets item 2, a different clip."""
    first, second = tiny_dataset(), tiny_dataset()
    batch = batch_for_step(first, step=1, batch_size=1, rank=1, world_size=2)
    again = batch_for_step(second, step=1, batch_size=1, rank=1, world_size=2)
    assert_batches_equal(batch, again)
    assert_batches_equal(batch, collate_clips([second[3]], max_objects=MAX_OBJECTS))
    other_rank = batch_for_step(first, step=1, batch_size=1, rank=0, world_size=2)
    assert other_rank["frames"].shape == batch["frames"].shape
    assert not torch.equal(other_rank["frames"], batch["frames"])


def test_loader_workers_build_the_batches_one_process_would():
    """Batches built ahead by two DataLoader workers are, step for step, the ones the training
    process builds itself, including the growing skip of a video stage (a worker holds its own
    copy of the dataset, so the skip must travel with the step, not with ``set_max_skip``)."""
    dataset = ClipDataset(length=12, seed=3, stage="video", crop=CROP, max_objects=MAX_OBJECTS)
    batches = StepBatches(dataset, batch_size=2, total_steps=6, skip_range=(0, 10))
    assert [batches.max_skip(s) for s in range(6)] == [
        max_skip_schedule(s, 6, 0, 10) for s in range(6)
    ]
    assert batches.max_skip(0) != batches.max_skip(5)
    in_process = list(step_batches(batches, first_step=2))
    ahead = list(step_batches(batches, first_step=2, loader_workers=2))
    assert [s for s, _ in ahead] == [s for s, _ in in_process] == [2, 3, 4, 5]
    for (_, mine), (_, theirs) in zip(in_process, ahead, strict=True):
        assert_batches_equal(mine, theirs)
    dataset.set_max_skip(max_skip_schedule(4, 6, 0, 10))
    assert_batches_equal(in_process[2][1], batch_for_step(dataset, 4, batch_size=2))


# --- BatchNorm freezing ---------------------------------------------------------------------


def batchnorm_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of every BatchNorm's running statistics and affine parameters, by name."""
    return {
        f"{name}.{key}": tensor.detach().clone()
        for name, module in model.named_modules()
        if isinstance(module, nn.BatchNorm2d)
        for key, tensor in module.state_dict().items()
        if key in ("running_mean", "running_var", "weight", "bias")
    }


@pytest.mark.parametrize("frozen", [True, False])
def test_batchnorm_freezing(fixed_batch, frozen):
    """Frozen: one step leaves every BN running statistic and affine weight as it was, while the
    convolutions do learn. Unfrozen: the running statistics move."""
    trainer = make_trainer(lr=1e-3, freeze_bn=frozen)
    conv_before = trainer.stm.Encoder_Q.conv1.weight.detach().clone()
    bn_before = batchnorm_state(trainer.stm)
    assert bn_before, "found no BatchNorm tensors"
    trainer.train_step(fixed_batch)
    bn_after = batchnorm_state(trainer.stm)
    changed = [name for name in bn_before if not torch.equal(bn_before[name], bn_after[name])]
    assert not torch.equal(conv_before, trainer.stm.Encoder_Q.conv1.weight)
    if frozen:
        assert changed == []
        assert all(
            not m.training for m in trainer.module.modules() if isinstance(m, nn.BatchNorm2d)
        )
    else:
        running_means = [name for name in bn_before if name.endswith("running_mean")]
        assert set(running_means) <= set(changed)


# --- config ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"crop": [40, 64]}, "crop"),  # 40 is not a multiple of 16
        ({"crop": [16, 16]}, "crop"),  # too small for the 1/16 feature map
        ({"lerning_rate": 1e-3}, "lerning_rate"),  # unknown key
        ({"stage": "pretrain"}, "stage"),
        ({"steps": 0}, "steps"),
        ({"data": {"seed": 0, "max_skip_start": 5, "max_skip_end": 2}}, "max_skip_end"),
        ({"data": {"recolour_prob": 1.5}}, "recolour_prob"),
        ({"data": {"lookalike_prob": -0.5}}, "lookalike_prob"),
        ({"data": {"sensor_look_prob": 2}}, "sensor_look_prob"),
        ({"loss_top_p": 0}, "loss_top_p"),
        ({"loss_top_p": 1.5}, "loss_top_p"),
        ({"loss_top_p_warm": [50, 10]}, "loss_top_p_warm"),
    ],
)
def test_train_config_errors_name_the_field(settings, field):
    with pytest.raises(ValidationError) as excinfo:
        TrainConfig.model_validate(settings)
    assert field in str(excinfo.value)


def test_train_config_bn_frozen_default_follows_the_stage():
    assert TrainConfig(stage="static").bn_frozen is False
    assert TrainConfig(stage="video").bn_frozen is True
    assert TrainConfig(stage="video", freeze_bn=False).bn_frozen is False


def test_train_config_recolour_reaches_the_dataset():
    assert build_dataset(TrainConfig()).recolour_prob == 0.0
    config = TrainConfig.model_validate({"data": {"recolour_prob": 0.5}})
    assert build_dataset(config).recolour_prob == 0.5
    config = TrainConfig.model_validate({"data": {"lookalike_prob": 0.3, "sensor_look_prob": 0.2}})
    dataset = build_dataset(config)
    assert (dataset.lookalike_prob, dataset.sensor_look_prob) == (0.3, 0.2)


TRAIN_CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("train_*.yaml"))


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=lambda p: p.name)
def test_shipped_training_configs_load(path):
    """The configs that made the shipped model stay valid as the schema changes, and each names
    its run after its file, so a copied config never resumes another stage's run."""
    config = load_config(TrainConfig, path)
    assert config.name == path.stem.replace("train_", "stm-").replace("_", "-")


def test_there_are_training_configs_to_check():
    assert len(TRAIN_CONFIGS) >= 4


# --- local runner and CLI -------------------------------------------------------------------


def local_settings(storage: Path, **overrides) -> dict:
    settings = {
        "name": "tiny",
        "stage": "static",
        "trunk": "resnet18",
        "crop": list(CROP),
        "max_objects": MAX_OBJECTS,
        "steps": 2,
        "batch_size": 1,
        "warmup_steps": 0,
        "checkpoint_every": 1,
        "threads_per_worker": 1,
        "storage_path": str(storage),
        "data": {"seed": 0},
    }
    return settings | overrides


def checkpoint_names(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.iterdir())


def test_train_local_checkpoints_and_resumes(tmp_path, caplog):
    from pipeline.training.local import train_local

    config = TrainConfig.model_validate(local_settings(tmp_path / "runs"))
    run_dir = tmp_path / "runs" / "tiny"
    first = train_local(config)
    assert first.step == 2
    assert checkpoint_names(run_dir) == ["checkpoint_0000001", "checkpoint_0000002"]
    for name in checkpoint_names(run_dir):
        assert {p.name for p in (run_dir / name).iterdir()} == CHECKPOINT_FILES
    second_ckpt = run_dir / "checkpoint_0000002"
    assert json.loads((second_ckpt / "history.json").read_text()) == [
        list(entry) for entry in first.history
    ]
    assert (second_ckpt / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    untouched = (second_ckpt / "model.pt").stat().st_mtime_ns

    with caplog.at_level(logging.INFO, logger="pipeline.training.worker"):
        second = train_local(config.model_copy(update={"steps": 3}))
    # Resumed at step 2: one new step, the old history kept as is, the old checkpoint untouched
    # (a restart would have rewritten it).
    assert "resumed tiny at step 2" in caplog.text
    assert second.step == 3
    assert [s for s, _ in second.history] == [0, 1, 2]
    assert second.history[:2] == first.history
    assert checkpoint_names(run_dir)[-1] == "checkpoint_0000003"
    assert (second_ckpt / "model.pt").stat().st_mtime_ns == untouched

    newest = run_dir / "checkpoint_0000003" / "model.pt"
    model = load_model(newest, device="cpu")
    assert model.spec.name == "resnet18"
    assert read_metadata(newest)["step"] == 3
    trained = second.stm.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(value, trained[key].cpu()), key


def test_cli_train_local(tmp_path, capsys):
    """``stm-label train --local --config FILE --set ...``: the overrides win over the file."""
    from jobs.cli import main

    config_file = tmp_path / "train.yaml"
    config_file.write_text(yaml.safe_dump(local_settings(tmp_path / "runs", steps=5)))
    argv = ["train", "--local", "--config", str(config_file), "--set", "steps=1"]
    assert main([*argv, "--set", "bf16=false"]) == 0
    run_dir = tmp_path / "runs" / "tiny"
    assert checkpoint_names(run_dir) == ["checkpoint_0000001"]
    metadata = read_metadata(run_dir / "checkpoint_0000001" / "model.pt")
    assert metadata["step"] == 1
    assert metadata["config"]["bf16"] is False
    assert metadata["config"]["steps"] == 1
    assert "trained tiny to step 1" in capsys.readouterr().out


# --- precision --------------------------------------------------------------------------------


@pytest.mark.parametrize("native", [True, False])
def test_bf16_default_follows_the_device(monkeypatch, native: bool):
    """A config or caller that leaves bf16 unset gets autocast only where the device computes
    bfloat16 natively (emulated bf16 made a step 12x slower on an AVX2 CPU); an explicit
    choice is kept either way."""
    import stm_core.training.loop as loop

    monkeypatch.setattr(loop, "native_bf16", lambda device: native)
    common = dict(lr=1e-4, weight_decay=0.0, warmup_steps=1, total_steps=1, freeze_bn=True)
    device = torch.device("cpu")
    assert Trainer(STM("resnet18"), device=device, **common).bf16 is native
    assert Trainer(STM("resnet18"), device=device, bf16=True, **common).bf16 is True
    assert Trainer(STM("resnet18"), device=device, bf16=False, **common).bf16 is False
    assert TrainConfig().bf16 is None


def test_a_bf16_autocast_step_matches_a_float32_step(fixed_batch):
    """Autocast is still a working mode where it is chosen: the same first step from the same
    weights gives the loss of float32 to bfloat16's precision."""
    losses = {}
    for bf16 in (False, True):
        torch.manual_seed(0)
        trainer = Trainer(
            STM("resnet18"),
            lr=1e-3,
            weight_decay=0.0,
            warmup_steps=1,
            total_steps=1,
            freeze_bn=False,
            device=torch.device("cpu"),
            bf16=bf16,
        )
        losses[bf16] = trainer.train_step(fixed_batch)
    assert math.isfinite(losses[True])
    assert losses[True] == pytest.approx(losses[False], rel=0.05)


def test_native_bf16_answers_for_the_cpu_and_never_for_unknown_devices():
    from stm_core.checkpoint import native_bf16

    assert native_bf16(torch.device("cpu")) is bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert native_bf16(torch.device("meta")) is False


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).parents[2] / "configs").glob("train_*.yaml"))
)
def test_training_configs_validate_and_hold_only_relative_paths(path: Path):
    """A config names its checkpoints and storage relative to the repository (or they are set
    on the command line): an absolute path is one machine's."""
    config = load_config(TrainConfig, path)
    paths = [config.storage_path, config.init_checkpoint, *config.data.folders]
    paths += config.data.photo_folders
    absolute = [p for p in paths if p is not None and Path(p).is_absolute()]
    assert not absolute, f"{path.name}: {absolute}"
