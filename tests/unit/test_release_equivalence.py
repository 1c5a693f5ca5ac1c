"""stm_core gives the official release's probabilities, to 1e-4, with the release's settings.

The yardstick is ``tests/reference/release_stm.py``: the release's inference re-implemented from
the spec as plain functions of a state dict, sharing no code with ``stm_core.model``. Both run the
same calibrated random weights (see ``calibrated_stm`` in conftest.py) on real frames with three
objects from frame 0 and a small memory step, so several permanent entries are read. ResNet-50
runs at a size that is not a multiple of 16 (an odd pad on both axes, so the odd pixel's side
matters); ResNet-18 at a multiple of 16 (no padding), which separates padding bugs from others.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from stm_core import propagate
from stm_core.model.ops import others_mask, pad_to_multiple, unpad
from tests.reference.release_stm import NUM_SLOTS, ReleaseSTM, one_hot_slots, pad_divide_by

TOLERANCE = 1e-4  # the spec's promise: max absolute difference of any probability
SEQUENCE = "horsejump-high"
NUM_FRAMES = 7
NUM_OBJECTS = 3
MEM_EVERY = 2  # permanent entries 0, 2, 4: frame 6 reads four memory frames
SIZES = {"resnet50": (155, 87), "resnet18": (160, 96)}  # W x H; pads (2|3, 4|5) and none


def split_object(mask: np.ndarray, parts: int) -> np.ndarray:
    """Split the foreground of a binary mask into ``parts`` objects by column tertiles.

    ``mask``: H x W {0, 1} -> H x W labels 0..parts. Gives the multi-object case from a
    single-object clip.
    """
    cols = np.nonzero(mask)[1]
    edges = np.quantile(cols, np.linspace(0, 1, parts + 1)[1:-1])
    ids = 1 + np.searchsorted(edges, np.arange(mask.shape[1]), side="right")
    return np.where(mask > 0, ids[None, :], 0).astype(np.uint8)


def release_inputs(clip) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames as the release reads them (T x 3 x H x W float in [0, 1]) and frame 0's labels."""
    frames = torch.from_numpy(np.stack(clip.frames)).permute(0, 3, 1, 2).float() / 255.0
    return frames, torch.from_numpy(clip.masks[0]).long()


def official_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Our state dict under the official file's key names (nn.DataParallel's ``module.``)."""
    return {f"module.{k}": v.clone() for k, v in model.state_dict().items()}


def max_diff_per_frame(ours: list[np.ndarray], release: torch.Tensor) -> list[float]:
    """Max |difference| per frame between our (1+N) channels and the release's first 1+N."""
    return [float(np.abs(p - release[t, : p.shape[0]].numpy()).max()) for t, p in enumerate(ours)]


@pytest.fixture(scope="module", autouse=True)
def _two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def clips(read_real_clip) -> dict:
    """trunk -> the clip at that trunk's size, its frame-0 mask split into three objects."""
    out = {}
    for trunk, size in SIZES.items():
        clip = read_real_clip(SEQUENCE, NUM_FRAMES, size)
        out[trunk] = dataclasses.replace(clip, masks={0: split_object(clip.masks[0], NUM_OBJECTS)})
    return out


@pytest.fixture(scope="module")
def runs(calibrated_stm, clips):
    """trunk -> (our per-frame probs, the release's T x K x H x W probs, the model), lazily."""
    cache: dict = {}

    def run(trunk: str):
        if trunk not in cache:
            model = calibrated_stm(trunk)
            clip = clips[trunk]
            outs = list(propagate(model, clip.frames, clip.masks, mem_every=MEM_EVERY))
            assert [o.frame_index for o in outs] == list(range(NUM_FRAMES))
            assert all(o.object_ids == (1, 2, 3) for o in outs)
            reference = ReleaseSTM(official_state_dict(model))
            frames, first = release_inputs(clip)
            release = reference.run_video(frames, first, NUM_OBJECTS, mem_every=MEM_EVERY)
            cache[trunk] = ([o.probs for o in outs], release, model)
        return cache[trunk]

    return run


def test_split_object_makes_three_nonempty_objects(clips):
    for clip in clips.values():
        labels = clip.masks[0]
        assert set(np.unique(labels)) == {0, 1, 2, 3}
        assert min(np.count_nonzero(labels == i) for i in (1, 2, 3)) > 20


@pytest.mark.parametrize("trunk", ["resnet50", "resnet18"])
def test_the_calibrated_model_is_not_saturated(runs, trunk):
    """Without this the comparison could pass on probabilities pinned at 0 or 1."""
    _, release, _ = runs(trunk)
    predicted = release[1:, : 1 + NUM_OBJECTS]  # frames 1.., background + objects
    labels = predicted.argmax(dim=1)
    shares = [(labels == k).float().mean().item() for k in range(1 + NUM_OBJECTS)]
    assert min(shares) > 0.05, f"label shares {shares}"
    objects = predicted[:, 1:]
    middle = ((objects > 0.02) & (objects < 0.98)).float().mean().item()
    assert middle > 0.5, f"only {middle:.1%} of object probabilities are in (0.02, 0.98)"


def test_stage_methods_match_the_release_on_one_frame(calibrated_stm, clips):
    """encode_memory / encode_query / segment against memorize / segment, no video loop.

    The small trunk on the larger clip's frames, whose size is not a multiple of 16.
    """
    model = calibrated_stm("resnet18")
    reference = ReleaseSTM(official_state_dict(model))
    frames, first = release_inputs(clips["resnet50"])
    masks = one_hot_slots(first, NUM_OBJECTS)
    keys, values = reference.memorize(frames[:1], masks, NUM_OBJECTS)
    release = torch.softmax(reference.segment(frames[1:2], keys, values, NUM_OBJECTS), dim=1)

    with torch.no_grad():
        image, pad = pad_to_multiple(frames[:2])
        objects, _ = pad_to_multiple(masks[0, 1 : 1 + NUM_OBJECTS])
        mem_keys, mem_values = model.encode_memory(image[:1], objects, others_mask(objects))
        probs = unpad(model.segment(model.encode_query(image[1:2]), mem_keys, mem_values), pad)
    # Per-object foreground probabilities, before aggregation: the release's are not exposed,
    # so compare what aggregation cannot hide: keys/values of the memory encoder...
    h, w = keys.shape[-2:]
    ours_k = mem_keys.transpose(1, 2).reshape(NUM_OBJECTS, -1, h, w)
    ours_v = mem_values.transpose(1, 2).reshape(NUM_OBJECTS, -1, h, w)
    assert torch.allclose(ours_k, keys[0, 1 : 1 + NUM_OBJECTS, :, 0], atol=1e-4, rtol=1e-4)
    assert torch.allclose(ours_v, values[0, 1 : 1 + NUM_OBJECTS, :, 0], atol=1e-4, rtol=1e-4)
    # ...and the aggregated probabilities, computed from our per-object ones as the spec says.
    merged = ReleaseSTM.soft_aggregation(probs)
    ours = torch.softmax(merged, dim=1)[0, : 1 + NUM_OBJECTS]
    assert (ours - release[0, : 1 + NUM_OBJECTS]).abs().max() < TOLERANCE


def test_release_padding_splits_the_odd_pixel_after():
    _, pad = pad_divide_by(torch.zeros(1, 1, *SIZES["resnet50"][::-1]))
    assert pad == (2, 3, 4, 5)  # left, right, top, bottom
    _, pad = pad_divide_by(torch.zeros(1, 1, *SIZES["resnet18"][::-1]))
    assert pad == (0, 0, 0, 0)


@pytest.mark.parametrize("trunk", ["resnet50", "resnet18"])
def test_propagate_matches_the_release(runs, trunk):
    ours, release, _ = runs(trunk)
    assert release.shape[1] == NUM_SLOTS
    diffs = max_diff_per_frame(ours, release)
    assert max(diffs) < TOLERANCE, f"{trunk}: max |diff| per frame {diffs}"


def test_a_perturbed_weight_is_detected(runs, clips):
    """The tolerance can fail: one memory-encoder weight nudged moves probabilities > 1e-4."""
    _, release, model = runs("resnet18")
    state = official_state_dict(model)
    state["module.Encoder_M.res4.0.conv2.weight"][0, 0, 1, 1] += 0.05
    frames, first = release_inputs(clips["resnet18"])
    perturbed = ReleaseSTM(state).run_video(frames[:2], first, NUM_OBJECTS, MEM_EVERY)
    assert (perturbed[1] - release[1]).abs().max() > TOLERANCE


def test_the_memory_schedule_is_detected(runs, clips):
    """The tolerance pins the memory schedule: another step gives other probabilities."""
    _, release, model = runs("resnet18")
    frames, first = release_inputs(clips["resnet18"])
    other = ReleaseSTM(official_state_dict(model)).run_video(
        frames[:5], first, NUM_OBJECTS, MEM_EVERY + 1
    )
    diffs = [(other[t] - release[t]).abs().max().item() for t in range(5)]
    assert max(diffs[:4]) < TOLERANCE  # frames 0..3 read the same memory frames either way
    assert diffs[4] > TOLERANCE  # frame 4 reads frames (0, 2, 3) with step 2, (0, 3) with 3
