"""First-frame fine-tuning (stm_core.adaptation): what it learns, what it leaves alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stm_core import STM, InputError, load_model
from stm_core.adaptation import Adaptation, adapt_to_seeds, parse_crop
from stm_core.assets import default_checkpoint_path
from stm_core.training.clip_model import ClipSTM, clip_loss
from stm_core.training.datasets import clip_item, collate_clips
from stm_core.training.heldout import heldout_videos
from stm_core.training.static_clips import static_clip

SMALL = Adaptation(steps=2, lr=1e-4, batch_size=1, crop=(64, 64))


@pytest.fixture(scope="module")
def video():
    return heldout_videos(1, num_frames=3, size=(96, 160), seed_base=0)[0]


@pytest.fixture(scope="module")
def random_stm() -> STM:
    torch.manual_seed(0)
    return STM("resnet18").eval()


def _weights(model: STM) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _clip_batch(frame: np.ndarray, mask: np.ndarray, seed: int, n: int) -> dict:
    rng = np.random.default_rng(seed)
    items = []
    for _ in range(n):
        frames, labels = static_clip(frame, mask, rng, 3, (96, 96), 3)
        items.append(clip_item(frames, labels))
    return collate_clips(items, 3)


@torch.no_grad()
def _loss(model: STM, batch: dict) -> float:
    logits = ClipSTM(model).eval()(
        batch["frames"], batch["one_hot"][:, 0, 1:], batch["valid"][:, 1:]
    )
    return float(clip_loss(logits, batch["masks"]))


def test_adaptation_fits_the_seed_frame_and_leaves_the_model_alone(video):
    path = default_checkpoint_path()
    if path is None:
        pytest.skip("no shipped model")
    model = load_model(path, device="cpu")
    before = _weights(model)
    frame, mask = video.frames[0], video.masks[0]
    held = _clip_batch(frame, mask, seed=99, n=4)  # clips adaptation never draws
    settings = Adaptation(steps=15, lr=1e-4, batch_size=2, crop=(96, 96), seed=1)
    tuned = adapt_to_seeds(model, {0: frame}, {0: mask}, settings)
    assert tuned is not model
    assert not tuned.training
    assert _loss(tuned, held) < 0.8 * _loss(model, held)
    after = _weights(model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_adaptation_is_deterministic_for_a_seed(video, random_stm):
    seeds, frames = {0: video.masks[0]}, {0: video.frames[0]}
    a = _weights(adapt_to_seeds(random_stm, frames, seeds, SMALL))
    b = _weights(adapt_to_seeds(random_stm, frames, seeds, SMALL))
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = Adaptation(steps=2, lr=1e-4, batch_size=1, crop=(64, 64), seed=5)
    c = _weights(adapt_to_seeds(random_stm, frames, seeds, other))
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_zero_steps_returns_the_model_itself(video, random_stm):
    off = Adaptation(steps=0)
    assert not off.enabled
    assert adapt_to_seeds(random_stm, {}, {0: video.masks[0]}, off) is random_stm


def test_each_step_is_reported(video, random_stm):
    """``on_step`` hears every optimiser step, so a caller can show "step 40/80"."""
    steps: list[tuple[int, int]] = []
    adapt_to_seeds(
        random_stm,
        {0: video.frames[0]},
        {0: video.masks[0]},
        SMALL,
        on_step=lambda *s: steps.append(s),
    )
    assert steps == [(1, 2), (2, 2)]


def test_adaptation_uses_every_seed_frame(video, random_stm, monkeypatch):
    import stm_core.training.static_clips as static_clips

    seen: list[int] = []
    real = static_clips.static_clip

    def spy(image, masks, *args, **kwargs):
        seen.append(int(image[0, 0, 0]))
        return real(image, masks, *args, **kwargs)

    monkeypatch.setattr(static_clips, "static_clip", spy)
    first = video.frames[0].copy()
    second = video.frames[1].copy()
    first[0, 0, 0], second[0, 0, 0] = 10, 20
    later = np.where(video.masks[1] == 1, 1, 0).astype(np.uint8)
    settings = Adaptation(steps=6, lr=1e-4, batch_size=2, crop=(64, 64))
    adapt_to_seeds(random_stm, {0: first, 1: second}, {0: video.masks[0], 1: later}, settings)
    assert set(seen) == {10, 20}


def test_whole_frame_clips_fit_the_seed_frame(video, random_stm, monkeypatch):
    """crop=None: every clip is as big as the seed frame, sides rounded down to multiples of
    16, so each one holds every object and the whole background."""
    import stm_core.training.lucid_clips as lucid_clips
    import stm_core.training.static_clips as static_clips

    shapes: list[tuple[int, ...]] = []
    real = static_clips.static_clip

    def spy(*args, **kwargs):
        frames, labels = real(*args, **kwargs)
        shapes.append(frames.shape[1:3])
        return frames, labels

    monkeypatch.setattr(static_clips, "static_clip", spy)
    monkeypatch.setattr(lucid_clips, "static_clip", spy)
    frame = np.pad(video.frames[0], ((0, 7), (0, 13), (0, 0)))  # 103 x 173
    mask = np.pad(video.masks[0], ((0, 7), (0, 13)))
    whole = Adaptation(steps=2, lr=1e-4, batch_size=2, crop=None)
    adapt_to_seeds(random_stm, {0: frame}, {0: mask}, whole)
    assert shapes and set(shapes) == {(96, 160)}
    tiny = {0: np.zeros((12, 40, 3), np.uint8)}
    with pytest.raises(InputError, match="40x12 .* too small"):
        adapt_to_seeds(random_stm, tiny, {0: np.ones((12, 40), np.uint8)}, whole)


@pytest.mark.parametrize(
    ("frames", "seeds", "match"),
    [
        ({}, {0: np.ones((8, 8), np.uint8)}, r"images of seed frames \[0\]"),
        ({0: np.zeros((8, 9, 3), np.uint8)}, {0: np.ones((8, 8), np.uint8)}, "mask is"),
        ({0: np.zeros((8, 8), np.uint8)}, {0: np.ones((8, 8), np.uint8)}, "H x W x 3 uint8"),
        ({0: np.zeros((8, 8, 3), np.uint8)}, {0: np.zeros((8, 8), np.uint8)}, "empty"),
        ({}, {}, "at least one seed"),
    ],
)
def test_bad_seed_input_is_named(random_stm, frames, seeds, match):
    with pytest.raises(InputError, match=match):
        adapt_to_seeds(random_stm, frames, seeds, SMALL)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"steps": -1}, "steps"),
        ({"lr": 0.0}, "lr"),
        ({"batch_size": 0}, "batch_size"),
        ({"crop": (100, 64)}, "multiples of 16"),
    ],
)
def test_bad_settings_are_named(kwargs, match):
    with pytest.raises(InputError, match=match):
        Adaptation(**kwargs)


def test_parse_crop():
    assert parse_crop("frame") == parse_crop(" Frame ") is None
    assert parse_crop("192x320") == (192, 320)
    for bad in ("192", "ax192", "192x192x3", ""):
        with pytest.raises(InputError, match="expected 'frame' or HxW"):
            parse_crop(bad)


def test_a_seed_frame_of_the_wrong_size_is_named_before_adapting(tmp_path, random_stm):
    from PIL import Image

    from pipeline.corpus import folder_video
    from pipeline.evaluation import evaluate_task
    from stm_core.io import write_mask

    (tmp_path / "f").mkdir()
    for t in range(3):
        Image.new("RGB", (64, 48)).save(tmp_path / "f" / f"{t:05d}.jpg")
        mask = np.zeros((48, 64), np.uint8)
        mask[10:30, 10:30] = 1
        write_mask(tmp_path / "m" / f"{t:05d}.png", mask)
    second_seed = np.zeros((48, 64), np.uint8)
    second_seed[5:9, 40:50] = 2
    write_mask(tmp_path / "m" / "00001.png", np.maximum(second_seed, mask))
    Image.new("RGB", (80, 48)).save(tmp_path / "f" / "00001.jpg")  # object 2's seed frame
    task, fs = folder_video(str(tmp_path / "f"), str(tmp_path / "m"), name="odd")
    with pytest.raises(InputError, match=r"00001\.jpg.*80x48"):
        evaluate_task(random_stm, task, fs, adaptation=SMALL)


def test_job_config_defaults_match_the_library_defaults():
    """schemas/ cannot import stm_core (torch), so the job config repeats Adaptation's
    defaults; this keeps the two in step (only ``steps`` differs: the job's default is off)."""
    import dataclasses

    from schemas.label_job import AdaptationConfig

    library = dataclasses.asdict(Adaptation())
    config = AdaptationConfig().model_dump()
    assert config.pop("steps") == 0 and library.pop("steps") > 0
    assert config == library
    whole = AdaptationConfig.model_validate({"steps": 30, "crop": None})
    assert Adaptation(**whole.model_dump()).crop is None
