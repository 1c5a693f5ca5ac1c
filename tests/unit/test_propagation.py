"""propagate(): the output contract, streaming, late objects, corrections and bad input."""

import numpy as np
import pytest
import torch

from stm_core import STM, InputError, propagate

H, W = 40, 56


@pytest.fixture(scope="module")
def model() -> STM:
    torch.manual_seed(0)
    return STM("resnet18").eval()


def _frames(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for _ in range(n)]


def _box(label: int, y: int, x: int, size: int = 10) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[y : y + size, x : x + size] = label
    return m


def test_contract_shapes_types_and_non_contiguous_ids(model):
    seed = _box(3, 2, 2) + _box(7, 20, 30) + _box(200, 25, 5, 6)
    outs = list(propagate(model, _frames(6), {0: seed}))
    assert [o.frame_index for o in outs] == list(range(6))
    for o in outs:
        assert o.object_ids == (3, 7, 200)
        assert o.probs.dtype == np.float32 and o.probs.shape == (4, H, W)
        assert o.labels.dtype == np.uint8 and o.labels.shape == (H, W)
        np.testing.assert_allclose(o.probs.sum(0), 1.0, atol=1e-5)
        ids = np.array([0, 3, 7, 200])
        np.testing.assert_array_equal(o.labels, ids[o.probs.argmax(0)])
    np.testing.assert_array_equal(outs[0].labels, seed)  # the seed frame is exact
    assert set(np.unique(outs[0].probs)) == {0.0, 1.0}


def test_frames_are_streamed_one_at_a_time(model):
    pulled = []

    def frames():
        for t, f in enumerate(_frames(5)):
            pulled.append(t)
            yield f

    for out in propagate(model, frames(), {0: _box(1, 5, 5)}):
        assert pulled[-1] == out.frame_index  # never read ahead of the frame being yielded


def test_late_object_has_no_channel_before_and_exact_mask_on_its_seed_frame(model):
    late = _box(5, 20, 30)
    outs = list(propagate(model, _frames(8), {0: _box(2, 5, 5), 4: late}))
    assert all(o.object_ids == (2,) for o in outs[:4])
    assert all(o.object_ids == (2, 5) for o in outs[4:])
    assert not any((o.labels == 5).any() for o in outs[:4])
    np.testing.assert_array_equal(outs[4].probs[2], (late == 5).astype(np.float32))
    assert (outs[4].labels == 5).sum() == 100


def test_frames_before_the_first_seed_are_background(model):
    outs = list(propagate(model, _frames(5), {2: _box(1, 5, 5)}))
    for o in outs[:2]:
        assert o.object_ids == () and o.probs.shape == (1, H, W)
        assert (o.probs == 1).all() and (o.labels == 0).all()
    assert outs[2].object_ids == (1,)


def test_a_correction_replaces_the_prediction_and_changes_later_frames(model):
    frames = _frames(8)
    seed0 = _box(1, 5, 5) + _box(2, 25, 35)
    fix = _box(1, 22, 30, 14)  # object 1 moved onto where object 2 was
    plain = list(propagate(model, frames, {0: seed0}))
    fixed = list(propagate(model, frames, {0: seed0, 3: fix}))
    for a, b in zip(plain[:3], fixed[:3], strict=True):
        np.testing.assert_array_equal(a.probs, b.probs)
    claimed = fix == 1
    np.testing.assert_array_equal(fixed[3].probs[1], claimed.astype(np.float32))
    assert (fixed[3].probs[2][claimed] == 0).all()  # taken from object 2
    # Object 2 keeps its prediction outside the corrected mask.
    np.testing.assert_allclose(fixed[3].probs[2][~claimed], plain[3].probs[2][~claimed])
    assert np.abs(fixed[5].probs - plain[5].probs).max() > 1e-3  # it went into memory


def test_a_complete_correction_makes_the_frame_exactly_its_annotation(model):
    frames = _frames(6)
    seed0 = _box(1, 5, 5) + _box(2, 25, 35)
    fix = _box(1, 8, 8)  # the whole truth of frame 3: object 2 is not on it
    partial = list(propagate(model, frames, {0: seed0, 3: fix}))
    complete = list(propagate(model, frames, {0: seed0, 3: fix}, complete_seeds={3}))
    assert partial[3].probs[2].max() > 0  # a plain seed leaves object 2 its prediction
    np.testing.assert_array_equal(complete[3].labels, fix)
    np.testing.assert_array_equal(complete[3].probs[2], np.zeros((H, W), np.float32))
    np.testing.assert_array_equal(complete[3].probs[0], (fix == 0).astype(np.float32))
    assert complete[3].object_ids == (1, 2)  # still tracked, absent here
    assert np.abs(complete[4].probs - partial[4].probs).max() > 1e-4  # it went into memory


def test_capped_and_unbounded_agree_while_memory_is_under_the_cap(model):
    frames, seeds = _frames(7), {0: _box(1, 5, 5)}
    a = list(propagate(model, frames, seeds, mem_every=2, max_memory_frames=None))
    b = list(propagate(model, frames, seeds, mem_every=2, max_memory_frames=4))
    c = list(propagate(model, frames, seeds, mem_every=2, max_memory_frames=1))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.probs, y.probs)
    assert np.abs(a[-1].probs - c[-1].probs).max() > 0  # frames 2, 4 were dropped from c


@pytest.mark.parametrize(
    "frames,seeds,message",
    [
        (
            [np.zeros((H, W, 3), np.uint8), np.zeros((H, W + 1, 3), np.uint8)],
            {0: _box(1, 1, 1)},
            "frame 1: size 57x40 differs",
        ),
        ([np.zeros((H, W), np.uint8)], {0: _box(1, 1, 1)}, "frame 0: expected an H x W x 3"),
        ([np.zeros((H, W, 3), np.float32)], {0: _box(1, 1, 1)}, "frame 0: expected an H x W x 3"),
        (
            [np.zeros((H, W, 3), np.uint8)],
            {0: np.zeros((H, W - 1), np.uint8)},
            "seed for frame 0: mask shape",
        ),
        (
            [np.zeros((H, W, 3), np.uint8)] * 2,
            {5: _box(1, 1, 1)},
            r"seeds for frames \[5\] but the video has only 2 frames",
        ),
        ([np.zeros((H, W, 3), np.uint8)], {}, "no seed masks"),
        ([np.zeros((H, W, 3), np.uint8)], {-1: _box(1, 1, 1)}, "non-negative integers"),
    ],
)
def test_bad_input_is_named(model, frames, seeds, message):
    with pytest.raises(InputError, match=message):
        list(propagate(model, frames, seeds))


def test_bad_options(model):
    with pytest.raises(ValueError, match="mem_every must be >= 1"):
        list(propagate(model, _frames(1), {0: _box(1, 1, 1)}, mem_every=0))


def test_bf16_precision_keeps_outputs_float32_and_the_bank_in_bf16():
    """Autocast bf16 (emulated on CPUs without it, so only a tiny video here): results stay
    float32, the memory bank holds bf16, and fp32 stays the default path."""
    import torch

    from stm_core import STM, VideoSession

    torch.manual_seed(0)
    model = STM("resnet18").eval()
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (32, 48, 3), dtype=np.uint8) for _ in range(4)]
    seed = np.zeros((32, 48), np.uint8)
    seed[4:20, 6:30] = 3
    results = {}
    for precision in ("fp32", "bf16"):
        session = VideoSession(model, precision=precision)
        results[precision] = [
            session.step(t, f, seed if t == 0 else None) for t, f in enumerate(frames)
        ]
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        assert session.bank.read((3,), since=0)[0].dtype == dtype
    for a, b in zip(results["fp32"], results["bf16"], strict=True):
        assert b.probs.dtype == np.float32 and b.object_ids == a.object_ids == (3,)
        assert np.abs(a.probs - b.probs).max() < 0.1  # bf16 keeps 8 bits of mantissa


def test_fp16_needs_cuda_and_unknown_precisions_are_refused():
    import torch

    from stm_core import STM, VideoSession

    model = STM("resnet18").eval()
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
            VideoSession(model, precision="fp16")
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, fp16"):
        VideoSession(model, precision="int8")


def _disk(size: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    """A bool disk in pixel-centre coordinates of a ``size`` grid."""
    yy, xx = np.mgrid[: size[0], : size[1]]
    return (yy + 0.5 - centre[0]) ** 2 + (xx + 0.5 - centre[1]) ** 2 <= radius**2


def test_labels_at_upscales_probabilities_not_labels():
    from stm_core.codec import resize_labels
    from stm_core.propagation import FrameResult

    native, working, scale = (96, 128), (24, 32), 4
    truth = _disk(native, (45.0, 70.0), 30.0)
    # Working-size probability: the disk's area coverage of each working pixel (what a model
    # that segments the downscaled frame perfectly would output), object id 7.
    cover = truth.reshape(working[0], scale, working[1], scale).mean(axis=(1, 3))
    probs = np.stack([1.0 - cover, cover]).astype(np.float32)
    labels = np.where(cover > 0.5, 7, 0).astype(np.uint8)
    out = FrameResult(frame_index=0, object_ids=(7,), probs=probs, labels=labels)

    assert out.labels_at(working) is out.labels  # same size: the labels themselves
    smooth = out.labels_at(native)
    assert smooth.shape == native and set(np.unique(smooth)) == {0, 7}
    blocky = resize_labels(labels, native)

    def iou(pred: np.ndarray) -> float:
        return (pred & truth).sum() / (pred | truth).sum()

    # Bilinear probabilities put the boundary between working pixels where the object is;
    # nearest labels make a staircase of 4-pixel steps.
    assert iou(smooth == 7) > iou(blocky == 7)
    assert iou(smooth == 7) > 0.98
