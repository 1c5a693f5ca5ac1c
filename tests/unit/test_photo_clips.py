"""Real-data clip sources: photo/mask folders (ECSSD, DUTS-TR layout) and the DAVIS 2016 train
videos at 360p, both deterministic from a seed, masks aligned with their frames, bad files
skipped by name; and a tiny training run on the shared data that lowers the loss."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.training.folders import folder_video_source
from schemas.training import TrainConfig
from stm_core.errors import InputError
from stm_core.training import ClipDataset
from stm_core.training.photo_clips import PhotoSource, photo_clip, photo_composite

REPO = Path(__file__).resolve().parents[2]


def _photo_folder(root: Path, count: int = 4, size: tuple[int, int] = (80, 96)) -> Path:
    """Photos whose object is a bright square on a dark background, so a mask that is aligned
    with its frame covers bright pixels only."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    h, w = size
    for i in range(count):
        image = rng.integers(0, 40, (h, w, 3), dtype=np.uint8)
        mask = np.zeros((h, w), np.uint8)
        y, x = 10 + 5 * i, 15 + 4 * i
        mask[y : y + 40, x : x + 44] = 255
        image[mask > 0] = (220, 200 + 10 * i, 230)
        Image.fromarray(image).save(root / "images" / f"{i:04d}.jpg", quality=95)
        Image.fromarray(mask).save(root / "masks" / f"{i:04d}.png")
    return root


def test_photo_source_lists_pairs_and_rejects_a_folder_without_masks(tmp_path: Path) -> None:
    source = PhotoSource(_photo_folder(tmp_path / "photos"))
    assert len(source) == 4
    (tmp_path / "bad" / "images").mkdir(parents=True)
    with pytest.raises(InputError, match="images/ and masks/"):
        PhotoSource(tmp_path / "bad")


def test_photo_clips_are_deterministic_and_masks_are_aligned(tmp_path: Path) -> None:
    pairs = PhotoSource(_photo_folder(tmp_path / "photos")).pairs
    a = photo_clip(pairs, np.random.default_rng(3), 3, (64, 64), 3)
    b = photo_clip(pairs, np.random.default_rng(3), 3, (64, 64), 3)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    for seed in range(8):
        frames, masks = photo_clip(pairs, np.random.default_rng(seed), 3, (64, 64), 3)
        assert frames.shape == (3, 64, 64, 3) and masks.shape == (3, 64, 64)
        inside = frames.max(axis=-1)[masks > 0]
        # Bright object pixels under the labels (edges resample with the dark background).
        assert np.median(inside) > 150, seed
        assert 1 <= masks[0].max() <= 3


def test_pasted_objects_get_their_own_ids(tmp_path: Path) -> None:
    pairs = PhotoSource(_photo_folder(tmp_path / "photos")).pairs
    counts = [
        len(np.unique(photo_composite(pairs, np.random.default_rng(s), 3)[1])) - 1
        for s in range(12)
    ]
    assert max(counts) >= 2 and min(counts) >= 1


def test_empty_or_unreadable_photos_are_skipped_by_name(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = _photo_folder(tmp_path / "photos", count=2)
    Image.fromarray(np.zeros((80, 96), np.uint8)).save(root / "masks" / "0000.png")
    (root / "images" / "0001.jpg").write_bytes(b"not a jpeg")
    pairs = PhotoSource(root).pairs
    with pytest.raises(InputError, match="0000.png.*empty"):
        pairs[0].read()
    with pytest.raises(InputError, match="0001.jpg"):
        pairs[1].read()
    good = _photo_folder(tmp_path / "good", count=2)
    dataset = ClipDataset(
        4, crop=(64, 64), photos=[PhotoSource(root), PhotoSource(good)], photo_prob=1.0
    )
    with caplog.at_level(logging.WARNING):
        items = [dataset[i] for i in range(4)]
    assert all(item["frames"].shape == (3, 3, 64, 64) for item in items)
    assert "0000.png" in caplog.text or "0001.jpg" in caplog.text


def test_photo_prob_zero_leaves_items_as_they_were(tmp_path: Path) -> None:
    plain = ClipDataset(3, crop=(64, 64), stage="static")
    with_photos = ClipDataset(
        3, crop=(64, 64), stage="static", photos=[PhotoSource(_photo_folder(tmp_path / "p"))]
    )
    for i in range(3):
        assert np.array_equal(plain[i]["frames"].numpy(), with_photos[i]["frames"].numpy())


def test_davis_train_videos_give_aligned_deterministic_clips(train_data_root: Path) -> None:
    source = folder_video_source(train_data_root / "davis16-train", resolution="360p")
    assert len(source) == 30
    dataset = ClipDataset(6, crop=(128, 128), sources=[source], source_prob=1.0, max_skip=5, seed=2)
    again = ClipDataset(6, crop=(128, 128), sources=[source], source_prob=1.0, max_skip=5, seed=2)
    for i in range(3):
        a, b = dataset[i], again[i]
        assert np.array_equal(a["frames"].numpy(), b["frames"].numpy())
        assert np.array_equal(a["masks"].numpy(), b["masks"].numpy())
        assert a["num_objects"] == 1 and int(a["masks"][0].sum()) > 0


@pytest.mark.parametrize(
    "stage", ["train_lite0_real.yaml", "train_lite0_real_2.yaml", "train_lite0_real_3.yaml"]
)
def test_training_configs_point_at_the_shared_data(train_data_root: Path, stage: str) -> None:
    """Both stages of the shipped model validate and read their data from ../shared; stage 1
    starts from ImageNet, stage 2 from stage 1's weights."""
    import yaml

    config = TrainConfig.model_validate(yaml.safe_load((REPO / "configs" / stage).read_text()))
    for folder in [*config.data.folders, *config.data.photo_folders]:
        assert (REPO / folder).resolve().is_dir(), folder
        assert "shared/data/train" in folder and "data/real" not in folder
    assert config.trunk == "efficientnet_lite0"
    if config.init_checkpoint is None:
        assert config.imagenet_trunk
    else:
        assert config.init_checkpoint.startswith("runs/")  # written there per its header


def test_tiny_training_run_on_the_shared_data_lowers_the_loss(
    train_data_root: Path, tmp_path: Path
) -> None:
    """A few steps on one fixed batch of real clips (DAVIS + photos) from ImageNet weights:
    the loss must fall, or the trunk, the data or the optimiser is wired wrong."""
    import torch

    from pipeline.training.worker import build_dataset, initial_model
    from stm_core.training.loop import Trainer, batch_for_step

    torch.manual_seed(0)
    config = TrainConfig(
        trunk="efficientnet_lite0",
        stage="video",
        crop=(96, 96),
        steps=12,
        batch_size=2,
        lr=3e-4,
        warmup_steps=0,
        freeze_bn=True,
        storage_path=str(tmp_path),
        data={
            "folders": [str(train_data_root / "davis16-train")],
            "folder_resolution": "360p",
            "folder_prob": 1.0,
            "photo_folders": [str(train_data_root / "static" / "ecssd")],
            "photo_prob": 0.5,
        },
    )
    trainer = Trainer(
        initial_model(config),
        lr=config.lr,
        weight_decay=0.0,
        warmup_steps=0,
        total_steps=config.steps,
        freeze_bn=True,
        device=torch.device("cpu"),
        bf16=False,
    )
    batch = batch_for_step(build_dataset(config), 0, config.batch_size)
    losses = [trainer.train_step(batch) for _ in range(config.steps)]
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3]), losses
