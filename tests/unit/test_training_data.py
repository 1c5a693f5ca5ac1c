"""Training data: synthetic videos, the two clip stages, the torch dataset and the held-out set.

Sizes are kept small (<= 96 px, <= 24 frames) so the file runs in a few seconds on 2 shared cores.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.training.folders import folder_video_source
from stm_core.errors import InputError
from stm_core.io import read_mask
from stm_core.training import (
    HELDOUT_IMAGES,
    TRAIN_IMAGES,
    ClipDataset,
    collate_clips,
    evaluation_videos,
    heldout_videos,
    make_video,
    make_video_stream,
    max_skip_schedule,
    plan_video,
    procedural_pair,
    random_texture,
    render_frame,
    sample_frame_indices,
    sample_video_clip,
    save_as_davis,
    static_clip,
    textures,
)
from stm_core.training.sensor_looks import sensor_look
from stm_core.training.synthetic_video import split_rng

SIZE = (64, 96)


def _centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


# --------------------------------------------------------------------------- synthetic videos


def test_make_video_shapes_dtypes_and_ids() -> None:
    video = make_video(3, 6, SIZE, 2)
    assert video.frames.shape == (6, *SIZE, 3) and video.frames.dtype == np.uint8
    assert video.masks.shape == (6, *SIZE) and video.masks.dtype == np.uint8
    assert video.num_objects == 2
    assert set(np.unique(video.masks).tolist()) <= {0, 1, 2}
    assert video.masks[0].any(), "objects start inside the frame"
    assert video.frames.std() > 10, "not a flat image"


def test_make_video_is_deterministic_and_seed_dependent() -> None:
    a = make_video(5, 4, SIZE, 2)
    b = make_video(5, 4, SIZE, 2)
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.masks, b.masks)
    c = make_video(6, 4, SIZE, 2)
    assert not np.array_equal(a.frames, c.frames)
    d = make_video(5, 4, SIZE, 2, split="heldout")
    assert not np.array_equal(a.frames, d.frames)


def test_frames_do_not_depend_on_video_length_and_stream_matches() -> None:
    short = make_video(8, 4, SIZE, 3)
    long = make_video(8, 9, SIZE, 3)
    np.testing.assert_array_equal(short.frames, long.frames[:4])
    np.testing.assert_array_equal(short.masks, long.masks[:4])
    streamed = list(make_video_stream(8, 4, SIZE, 3))
    assert len(streamed) == 4
    for t, (frame, mask) in enumerate(streamed):
        np.testing.assert_array_equal(frame, short.frames[t])
        np.testing.assert_array_equal(mask, short.masks[t])


def test_objects_move_smoothly() -> None:
    """Each object's full silhouette (amodal, so occlusion does not shift it) moves: over 20
    frames its centroid travels, and from one frame to the next it never jumps more than a
    quarter of the frame diagonal."""
    travelled = []
    diag = float(np.hypot(*SIZE))
    for seed in range(4):
        plan = plan_video(seed, 20, SIZE, 2)
        centroids: dict[int, list[np.ndarray]] = {1: [], 2: []}
        for t in range(20):
            amodal = render_frame(plan, t, return_amodal=True)[2]
            for k in (1, 2):
                # only frames where the whole object is inside (its centroid is then exact)
                full = amodal[k - 1]
                touches_border = full[0].any() or full[-1].any() or full[:, 0].any()
                if full.any() and not touches_border and not full[:, -1].any():
                    centroids[k].append((t, _centroid(full)))
        for track in centroids.values():
            if len(track) < 2:
                continue
            for (t0, c0), (t1, c1) in zip(track, track[1:], strict=False):
                if t1 == t0 + 1:
                    assert np.linalg.norm(c1 - c0) < 0.25 * diag
            travelled.append(max(np.linalg.norm(c - track[0][1]) for _, c in track))
    assert len(travelled) >= 4
    assert np.median(travelled) > 3.0, travelled


def test_occlusions_happen_and_visible_is_within_amodal() -> None:
    occluded = 0
    for seed in range(6):
        plan = plan_video(seed, 12, SIZE, 3)
        for t in range(0, 12, 3):
            _, labels, amodal = render_frame(plan, t, return_amodal=True)
            for k in range(1, 4):
                visible = labels == k
                assert not (visible & ~amodal[k - 1]).any(), "visible pixels outside the shape"
                hidden = amodal[k - 1] & ~visible
                # hidden by another labelled object (not by the frame border, not by nothing)
                if (np.isin(labels[hidden], [j for j in (1, 2, 3) if j != k])).sum() > 10:
                    occluded += 1
    assert occluded > 0


def test_plan_without_camera_motion_keeps_background_frame_sized() -> None:
    plan = plan_video(2, 1, SIZE, 1, camera_motion=False)
    assert plan.background.size == (SIZE[1], SIZE[0])
    moving = plan_video(2, 1, SIZE, 1)
    assert moving.background.size[0] > SIZE[1]


def test_camera_never_looks_past_the_background() -> None:
    """With a white background and no objects, a frame outside the background would show the
    black fill; lighting only scales white by ~0.6-1.5."""
    for seed in range(5):
        plan = plan_video(seed, 40, SIZE, 1)
        white = Image.new("RGB", plan.background.size, (255, 255, 255))
        plan = dataclasses.replace(plan, background=white, sprites=())
        for t in range(0, 40, 7):
            assert render_frame(plan, t)[0].min() > 100


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"num_frames": 0}, "num_frames"),
        ({"size": (8, 96)}, "size"),
        ({"num_objects": 0}, "num_objects"),
        ({"split": "test"}, "split"),
    ],
)
def test_make_video_rejects_bad_arguments(kwargs: dict, field: str) -> None:
    args = {"seed": 0, "num_frames": 2, "size": SIZE, "num_objects": 1, "split": "train"}
    args.update(kwargs)
    with pytest.raises(InputError, match=field):
        make_video(**args)


# --------------------------------------------------------------------------- imagery


def test_train_and_heldout_photos_are_disjoint_by_name_and_content() -> None:
    assert not set(TRAIN_IMAGES) & set(HELDOUT_IMAGES)
    for held in HELDOUT_IMAGES:
        held_pixels = np.asarray(textures.load_image(held))
        for train in TRAIN_IMAGES:
            train_pixels = np.asarray(textures.load_image(train))
            assert held_pixels.shape != train_pixels.shape or not np.array_equal(
                held_pixels, train_pixels
            ), (held, train)


def test_each_split_draws_only_its_own_photos(monkeypatch: pytest.MonkeyPatch) -> None:
    used: list[str] = []
    original = textures.load_image

    def spy(name: str) -> Image.Image:
        used.append(name)
        return original(name)

    monkeypatch.setattr(textures, "load_image", spy)
    for seed in range(5):
        make_video(seed, 1, SIZE, 3, split="heldout")
    assert used and set(used) <= set(HELDOUT_IMAGES)
    used.clear()
    for seed in range(5):
        make_video(seed, 1, SIZE, 3, split="train")
    assert used and set(used) <= set(TRAIN_IMAGES)
    with pytest.raises(InputError, match="heldout"):
        textures.photo_patch(np.random.default_rng(0), (16, 16), "heldout", TRAIN_IMAGES[0])


def test_split_seed_streams_differ() -> None:
    a = split_rng(4, "train", 0).random(4)
    b = split_rng(4, "heldout", 0).random(4)
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("kind", textures.TEXTURE_KINDS)
def test_textures_are_seeded_coloured_and_not_flat(kind: str) -> None:
    a = random_texture(np.random.default_rng(1), (40, 120), kind)
    b = random_texture(np.random.default_rng(1), (40, 120), kind)
    c = random_texture(np.random.default_rng(2), (40, 120), kind)
    assert a.shape == (40, 120, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.reshape(-1, 3).std(axis=0).max() > 5


def test_large_textures_are_drawn_at_half_size_and_upsampled() -> None:
    big = random_texture(np.random.default_rng(3), (100, 130), "grain")
    assert big.shape == (100, 130, 3)


def _photo(size: tuple[int, int] = (48, 64)) -> np.ndarray:
    return textures.photo_patch(np.random.default_rng(0), size, "train", "coffee")


def test_recolour_hue_keeps_greys_and_changes_colours() -> None:
    photo = _photo()
    photo[:4] = 128  # a grey band
    out = textures.recolour(photo, np.random.default_rng(5), "hue")
    assert out.shape == photo.shape and out.dtype == np.uint8
    assert np.abs(out[:4].astype(int) - 128).max() <= 1
    # Rotating by 60-300 degrees moves the mean colour of the coloured part a lot.
    diff = np.abs(out[4:].astype(float).mean((0, 1)) - photo[4:].astype(float).mean((0, 1)))
    assert diff.max() > 10


def test_hue_rotation_is_a_rotation_about_grey() -> None:
    m = textures.hue_rotation(1.1)
    np.testing.assert_allclose(m @ np.ones(3), np.ones(3), atol=1e-12)
    np.testing.assert_allclose(m @ m.T, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(textures.hue_rotation(0.0), np.eye(3), atol=1e-12)


def test_recolour_channels_is_a_non_identity_permutation() -> None:
    photo = _photo()
    for seed in range(8):
        out = textures.recolour(photo, np.random.default_rng(seed), "channels")
        order = [
            next(c for c in range(3) if np.array_equal(out[..., k], photo[..., c]))
            for k in range(3)
        ]
        assert sorted(order) == [0, 1, 2] and order != [0, 1, 2]


def test_recolour_palette_keeps_structure_and_is_seeded() -> None:
    photo = _photo()
    a = textures.recolour(photo, np.random.default_rng(2), "palette")
    b = textures.recolour(photo, np.random.default_rng(2), "palette")
    np.testing.assert_array_equal(a, b)
    # The new colour is a function of the old luminance (so edges and texture stay), and not
    # a constant one.
    lum = np.asarray(Image.fromarray(photo).convert("L")).ravel()
    colours = a.reshape(-1, 3)
    for level in np.unique(lum)[::7]:
        assert len(np.unique(colours[lum == level], axis=0)) == 1
    assert len(np.unique(colours, axis=0)) > 20
    with pytest.raises(InputError, match="recolour kind"):
        textures.recolour(photo, np.random.default_rng(2), "sepia")


def test_visible_throughout_keeps_only_videos_whose_objects_never_leave() -> None:
    def all_visible(video) -> bool:
        wanted = set(range(1, video.num_objects + 1))
        return all(wanted <= set(np.unique(mask).tolist()) for mask in video.masks)

    loose = heldout_videos(6, num_frames=12, size=SIZE, seed_base=40)
    assert not all(all_visible(v) for v in loose), "pick a seed range where an object leaves"
    steady = heldout_videos(6, num_frames=12, size=SIZE, seed_base=40, visible_throughout=True)
    assert len(steady) == 6 and all(all_visible(v) for v in steady)
    # The same seeds pass both filters the same way: the strict set is a subset of seeds.
    loose_names = {v.name for v in heldout_videos(30, num_frames=12, size=SIZE, seed_base=40)}
    assert {v.name for v in steady} <= loose_names


def test_recoloured_video_has_the_same_masks_and_new_colours() -> None:
    plain = make_video(4, 6, SIZE, 2)
    repainted = make_video(4, 6, SIZE, 2, recolour_prob=1.0)
    np.testing.assert_array_equal(plain.masks, repainted.masks)
    assert np.abs(plain.frames.astype(int) - repainted.frames.astype(int)).mean() > 10
    np.testing.assert_array_equal(make_video(4, 6, SIZE, 2, recolour_prob=0.0).frames, plain.frames)
    again = make_video(4, 6, SIZE, 2, recolour_prob=1.0)
    np.testing.assert_array_equal(again.frames, repainted.frames)
    with pytest.raises(InputError, match="recolour_prob"):
        make_video(4, 6, SIZE, 2, recolour_prob=1.5)


def _sprite_key(sprite) -> tuple:
    """What tells two sprites apart (a Sprite holds arrays, so == does not work on it)."""
    return (sprite.object_id, sprite.anchor, sprite.rgba.tobytes(), sprite.x, sprite.y)


def test_lookalikes_add_object_sized_unlabelled_sprites_and_change_nothing_else() -> None:
    plain = plan_video(8, 6, SIZE, 2)
    off = plan_video(8, 6, SIZE, 2, lookalike_prob=0.0)
    assert [_sprite_key(s) for s in off.sprites] == [_sprite_key(s) for s in plain.sprites]
    with_lookalikes = plan_video(8, 6, SIZE, 2, lookalike_prob=1.0)
    own = {_sprite_key(s) for s in plain.sprites}
    added = [s for s in with_lookalikes.sprites if _sprite_key(s) not in own]
    assert 1 <= len(added) <= 3
    assert all(s.object_id == 0 for s in added)
    # The plan's own sprites keep their depth order; camera and lighting are untouched.
    kept = [_sprite_key(s) for s in with_lookalikes.sprites if _sprite_key(s) in own]
    assert kept == [_sprite_key(s) for s in plain.sprites]
    assert (with_lookalikes.cam_x, with_lookalikes.light_log_gain) == (
        plain.cam_x,
        plain.light_log_gain,
    )
    again = plan_video(8, 6, SIZE, 2, lookalike_prob=1.0)
    assert [_sprite_key(s) for s in again.sprites] == [
        _sprite_key(s) for s in with_lookalikes.sprites
    ]
    with pytest.raises(InputError, match="lookalike_prob"):
        plan_video(8, 6, SIZE, 2, lookalike_prob=-0.1)


def test_lookalikes_are_object_sized_not_distractor_sized() -> None:
    def area(sprite) -> float:
        return float((np.asarray(sprite.rgba)[..., 3] > 127).sum())

    added, own = [], []
    for seed in range(20):
        plain = plan_video(seed, 2, SIZE, 1)
        keys = {_sprite_key(s) for s in plain.sprites}
        own += [area(s) for s in plain.sprites if s.object_id == 0]
        extra = plan_video(seed, 2, SIZE, 1, lookalike_prob=1.0).sprites
        added += [area(s) for s in extra if _sprite_key(s) not in keys]
    # Radii 0.10-0.28 vs 0.06-0.15 of the short side: about 3x the area at the median.
    assert len(own) >= 5
    assert np.median(added) > 2.0 * np.median(own)


def test_lookalikes_stay_out_of_the_masks_and_hide_objects_they_cover() -> None:
    plain = make_video(8, 6, SIZE, 2)
    plan = plan_video(8, 6, SIZE, 2, lookalike_prob=1.0)
    masks = np.stack([render_frame(plan, t)[1] for t in range(6)])
    assert set(np.unique(masks).tolist()) <= {0, 1, 2}
    # Labels only ever disappear (covered by an unlabelled sprite), never appear.
    assert np.all((masks == 0) | (masks == plain.masks))


def test_sensor_look_is_one_dim_look_per_clip_with_per_frame_grain() -> None:
    clip = make_video(5, 3, SIZE, 1).frames
    looked = sensor_look(clip, np.random.default_rng(3))
    assert looked.shape == clip.shape and looked.dtype == np.uint8
    # Dim and flat: the tone curve's gain is at most 0.8 of the range.
    assert looked.astype(float).std() < clip.astype(float).std()
    assert np.array_equal(looked, sensor_look(clip, np.random.default_rng(3)))
    same = np.repeat(clip[:1], 2, axis=0)
    twice = sensor_look(same, np.random.default_rng(11)).astype(float)
    # Same look on both frames (means agree), different grain (pixels do not) unless no grain.
    assert abs(twice[0].mean() - twice[1].mean()) < 1.0
    with pytest.raises(InputError, match="frames"):
        sensor_look(clip[0], np.random.default_rng(0))


# --------------------------------------------------------------------------- stage 1


def _disc_image() -> tuple[np.ndarray, np.ndarray]:
    """96 x 128 picture with 5 labelled discs (radius 12) of different colours."""
    ys, xs = np.mgrid[0:96, 0:128]
    image = np.full((96, 128, 3), 90, np.uint8)
    image[..., 1] = (xs * 2).astype(np.uint8)  # a gradient so the background is not flat
    masks = np.zeros((96, 128), np.uint8)
    centres = [(24, 24), (24, 100), (70, 30), (70, 90), (48, 64)]
    for k, (cy, cx) in enumerate(centres, start=1):
        disc = (ys - cy) ** 2 + (xs - cx) ** 2 <= 144
        masks[disc] = k
        image[disc] = (40 * k, 255 - 40 * k, 128)
    return image, masks


def test_static_clip_keeps_one_to_three_objects_with_ids_1_to_k() -> None:
    image, masks = _disc_image()
    counts = set()
    for seed in range(30):
        frames, labels = static_clip(image, masks, np.random.default_rng(seed), crop=(64, 64))
        assert frames.shape == (3, 64, 64, 3) and frames.dtype == np.uint8
        assert labels.shape == (3, 64, 64) and labels.dtype == np.uint8
        first = set(np.unique(labels[0]).tolist()) - {0}
        k = len(first)
        assert first == set(range(1, k + 1)) and 1 <= k <= 3
        assert set(np.unique(labels).tolist()) <= set(range(k + 1))
        counts.add(k)
    assert counts == {1, 2, 3}


def test_static_clip_frames_differ_and_are_deterministic() -> None:
    image, masks = _disc_image()
    a = static_clip(image, masks, np.random.default_rng(4), crop=(64, 64))
    b = static_clip(image, masks, np.random.default_rng(4), crop=(64, 64))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0][0], a[0][1]), "each frame gets its own affine"


def test_static_clip_occluder_only_removes_labels() -> None:
    """Same draws with and without the occluder: frame 0 is untouched; on later frames the
    occluder turns some object pixels into background and never adds object pixels."""
    image, masks = _disc_image()
    changed = 0
    for seed in range(6):
        plain = static_clip(
            image, masks, np.random.default_rng(seed), crop=(64, 64), occlusion_prob=0.0
        )
        occluded = static_clip(
            image, masks, np.random.default_rng(seed), crop=(64, 64), occlusion_prob=1.0
        )
        np.testing.assert_array_equal(plain[1][0], occluded[1][0])
        diff = plain[1] != occluded[1]
        assert (occluded[1][diff] == 0).all()
        changed += int(diff.any())
    assert changed >= 4


def test_static_clip_rejects_empty_and_mismatched_masks() -> None:
    image, masks = _disc_image()
    with pytest.raises(InputError, match="no object"):
        static_clip(image, np.zeros_like(masks), np.random.default_rng(0))
    with pytest.raises(InputError, match="masks"):
        static_clip(image, masks[:10], np.random.default_rng(0))


def test_procedural_pairs_are_deterministic_with_objects() -> None:
    image, labels = procedural_pair(11, SIZE)
    again = procedural_pair(11, SIZE)
    np.testing.assert_array_equal(image, again[0])
    assert image.shape == (*SIZE, 3) and labels.shape == SIZE
    assert labels.max() >= 1


# --------------------------------------------------------------------------- stage 2


def test_max_skip_schedule_grows_from_start_to_end() -> None:
    values = [max_skip_schedule(step, 100, 0, 25) for step in range(0, 121, 5)]
    assert values[0] == 0 and values[-1] == 25
    assert all(b >= a for a, b in zip(values, values[1:], strict=False))
    assert max_skip_schedule(50, 100, 0, 25) == 12  # floor(25 * 0.5)
    assert max_skip_schedule(50, 100, 0, 25, ramp_fraction=0.5) == 25
    with pytest.raises(InputError):
        max_skip_schedule(1, 0)


def test_frame_indices_are_ordered_and_gaps_bounded() -> None:
    rng = np.random.default_rng(0)
    seen_gaps = set()
    for _ in range(200):
        idx = sample_frame_indices(40, rng, 3, max_skip=4)
        gaps = np.diff(idx)
        assert len(idx) == 3 and idx[0] >= 0 and idx[-1] < 40
        assert ((gaps >= 1) & (gaps <= 5)).all()
        seen_gaps.update(gaps.tolist())
    assert seen_gaps == {1, 2, 3, 4, 5}
    assert np.diff(sample_frame_indices(40, rng, 3, max_skip=0)).tolist() == [1, 1]
    assert sample_frame_indices(2, rng, 3, max_skip=9) == [0, 1, 1]  # short video repeats
    idx = sample_frame_indices(5, rng, 3, max_skip=25)  # the skip shrinks to fit
    assert idx[-1] < 5 and (np.diff(idx) >= 1).all()


def _indexed_video(num: int = 30, height: int = 80, width: int = 120) -> tuple:
    """Frames whose red channel is the frame index and green channel the column; one 10 x 10
    object in the bottom-right corner."""
    frames = np.zeros((num, height, width, 3), np.uint8)
    frames[..., 0] = np.arange(num)[:, None, None]
    frames[..., 1] = (np.arange(width) * 2)[None, None, :]
    masks = np.zeros((num, height, width), np.uint8)
    masks[:, height - 12 : height - 2, width - 12 : width - 2] = 1
    return frames, masks


def test_video_clip_is_ordered_with_bounded_skip_and_keeps_the_object() -> None:
    frames, masks = _indexed_video()
    for seed in range(20):
        out, labels = sample_video_clip(
            frames, masks, np.random.default_rng(seed), max_skip=3, crop=(32, 32), flip_prob=0.0
        )
        assert out.shape == (3, 32, 32, 3) and labels.shape == (3, 32, 32)
        index = out[:, 0, 0, 0].astype(int)
        assert ((np.diff(index) >= 1) & (np.diff(index) <= 4)).all(), index
        assert (labels[0] == 1).sum() == 100, "the small object is kept whole in frame 0"
        assert np.all(np.diff(out[0, 0, :, 1].astype(int)) == 2), "plain crop, not flipped"


def test_video_clip_flip_and_scale() -> None:
    frames, masks = _indexed_video()
    out, labels = sample_video_clip(
        frames, masks, np.random.default_rng(0), crop=(32, 32), flip_prob=1.0
    )
    assert np.all(np.diff(out[0, 0, :, 1].astype(int)) == -2), "mirrored columns"
    _, labels = sample_video_clip(
        frames, masks, np.random.default_rng(0), crop=(32, 32), scale_range=(0.5, 0.5)
    )
    # a 10 x 10 object at half scale is 5 x 5 (6 x 6 at most with nearest sampling)
    assert 16 <= (labels[0] == 1).sum() <= 36


def test_video_clip_upscales_frames_smaller_than_the_crop() -> None:
    """47 x 70 frames into a 48 x 48 crop: scaled by 48/47, whose float product 47 * (48/47)
    truncates to 47 px, one short of the crop; the crop box must still stay in the frame."""
    frames, masks = _indexed_video(6, 47, 70)
    for seed in range(10):
        out, labels = sample_video_clip(frames, masks, np.random.default_rng(seed), crop=(48, 48))
        assert out.shape == (3, 48, 48, 3)
        assert (labels[0] == 1).sum() >= 100


def test_video_clip_from_a_synthetic_video_has_1_to_3_objects() -> None:
    video = make_video(1, 10, SIZE, 4)
    for seed in range(5):
        _, labels = sample_video_clip(
            video.frames, video.masks, np.random.default_rng(seed), max_skip=2, crop=(48, 48)
        )
        first = set(np.unique(labels[0]).tolist()) - {0}
        assert first == set(range(1, len(first) + 1)) and 1 <= len(first) <= 3


def test_video_clip_errors() -> None:
    frames, masks = _indexed_video(5)
    with pytest.raises(InputError, match="pair up"):
        sample_video_clip(frames, masks[:4], np.random.default_rng(0), crop=(32, 32))
    with pytest.raises(InputError, match="no object"):
        sample_video_clip(frames, np.zeros_like(masks), np.random.default_rng(0), crop=(32, 32))


# --------------------------------------------------------------------------- held-out set


def test_heldout_videos_save_as_davis_and_load_back(tmp_path: Path) -> None:
    videos = heldout_videos(2, num_frames=4, size=SIZE, seed_base=0)
    assert len({v.name for v in videos}) == 2
    for video in videos:
        assert "heldout" in video.name
        first = set(np.unique(video.masks[0]).tolist()) - {0}
        assert first == set(range(1, video.num_objects + 1)) and 1 <= video.num_objects <= 3
    again = heldout_videos(2, num_frames=4, size=SIZE, seed_base=0)
    np.testing.assert_array_equal(videos[1].frames, again[1].frames)

    root = save_as_davis(videos, tmp_path / "davis")
    mask_path = root / "Annotations" / "480p" / videos[0].name / "00002.png"
    assert Image.open(mask_path).mode == "P"
    np.testing.assert_array_equal(read_mask(mask_path), videos[0].masks[2])
    with pytest.raises(InputError, match="exists"):
        save_as_davis(videos[:1], root)

    source = folder_video_source(root)
    assert [v.name for v in source.videos] == [v.name for v in videos]
    loaded = source[0]
    assert len(loaded) == 4
    np.testing.assert_array_equal(loaded.masks[3], videos[0].masks[3])
    jpeg_error = np.abs(loaded.frames[3].astype(int) - videos[0].frames[3].astype(int)).mean()
    assert jpeg_error < 8


def test_evaluation_videos_of_the_training_photos(monkeypatch: pytest.MonkeyPatch) -> None:
    used: list[str] = []
    original = textures.load_image
    monkeypatch.setattr(textures, "load_image", lambda name: used.append(name) or original(name))
    videos = evaluation_videos(3, num_frames=3, size=SIZE, seed_base=1000, split="train")
    assert [v.name.startswith("synth-train-") for v in videos] == [True] * 3
    for video in videos:
        first = set(np.unique(video.masks[0]).tolist()) - {0}
        assert first == set(range(1, video.num_objects + 1))
    assert used and set(used) <= set(TRAIN_IMAGES)
    # The held-out set is this function on the held-out split.
    heldout = heldout_videos(1, num_frames=3, size=SIZE, seed_base=5)[0]
    same = evaluation_videos(1, num_frames=3, size=SIZE, seed_base=5, split="heldout")[0]
    assert heldout.name == same.name
    np.testing.assert_array_equal(heldout.frames, same.frames)


def test_folder_source_uses_only_annotated_frames(tmp_path: Path) -> None:
    """A YouTube-VOS style folder with masks on frames 0 and 3 of 5 gives a 2-frame video."""
    frames_dir = tmp_path / "JPEGImages" / "vid"
    masks_dir = tmp_path / "Annotations" / "vid"
    frames_dir.mkdir(parents=True)
    masks_dir.mkdir(parents=True)
    for t in range(5):
        Image.fromarray(np.full((40, 50, 3), 20 * t, np.uint8)).save(frames_dir / f"{t:05d}.jpg")
    labels = np.zeros((40, 50), np.uint8)
    labels[10:20, 10:20] = 1
    for t in (0, 3):
        Image.fromarray(labels * 255).save(masks_dir / f"{t:05d}.png")  # DAVIS-2016 'L' style
    video = folder_video_source(tmp_path)[0]
    assert len(video) == 2
    assert abs(int(video.frames[1].mean()) - 60) <= 2  # frame 3 (20 * 3), not frame 1
    assert set(np.unique(video.masks[1]).tolist()) == {0, 1}
    with pytest.raises(InputError, match="annotated"):
        folder_video_source(tmp_path, min_frames=3)


# --------------------------------------------------------------------------- torch dataset


@pytest.mark.parametrize("stage", ["static", "video"])
def test_clip_dataset_items_and_determinism(stage: str) -> None:
    ds = ClipDataset(10, seed=3, stage=stage, crop=(48, 48), max_skip=5)
    item = ds[2]
    assert item["frames"].shape == (3, 3, 48, 48) and item["frames"].dtype == torch.float32
    assert float(item["frames"].min()) >= 0.0 and float(item["frames"].max()) <= 1.0
    assert item["masks"].shape == (3, 48, 48) and item["masks"].dtype == torch.int64
    k = item["num_objects"]
    assert 1 <= k <= 3 and set(item["masks"][0].unique().tolist()) == set(range(k + 1))
    again = ClipDataset(10, seed=3, stage=stage, crop=(48, 48), max_skip=5)[2]
    assert torch.equal(item["frames"], again["frames"])
    assert torch.equal(item["masks"], again["masks"])
    assert not torch.equal(item["frames"], ds[3]["frames"])
    with pytest.raises(IndexError):
        ds[10]


@pytest.mark.parametrize("stage", ["static", "video"])
def test_clip_dataset_recolour_changes_pixels_not_masks(stage: str) -> None:
    plain = ClipDataset(4, seed=3, stage=stage, crop=(48, 48))[1]
    repainted = ClipDataset(4, seed=3, stage=stage, crop=(48, 48), recolour_prob=1.0)[1]
    assert torch.equal(plain["masks"], repainted["masks"])
    assert not torch.equal(plain["frames"], repainted["frames"])


def test_clip_dataset_new_options_default_to_the_old_items_and_reach_the_clips() -> None:
    plain = ClipDataset(4, seed=3, stage="video", crop=(48, 48))
    off = ClipDataset(4, seed=3, stage="video", crop=(48, 48), lookalike_prob=0.0)
    assert torch.equal(plain[2]["frames"], off[2]["frames"])
    looked = ClipDataset(4, seed=3, stage="video", crop=(48, 48), sensor_look_prob=1.0)[2]
    assert torch.equal(looked["masks"], plain[2]["masks"])
    assert not torch.equal(looked["frames"], plain[2]["frames"])
    # Every probability fails at construction, not later inside a DataLoader worker.
    for name in ("recolour_prob", "lookalike_prob", "sensor_look_prob"):
        with pytest.raises(InputError, match=name):
            ClipDataset(4, **{name: 2.0})


def test_clip_dataset_uses_folder_sources_and_skip_setter(tmp_path: Path) -> None:
    root = save_as_davis(heldout_videos(1, num_frames=6, size=SIZE, seed_base=3), tmp_path)
    ds = ClipDataset(4, seed=0, crop=(48, 48), sources=[folder_video_source(root)], source_prob=1.0)
    ds.set_max_skip(2)
    assert ds.max_skip == 2
    item = ds[0]
    assert item["frames"].shape == (3, 3, 48, 48)
    with pytest.raises(InputError):
        ds.set_max_skip(-1)


def test_collate_pads_objects_to_one_hot_with_valid_mask() -> None:
    ds = ClipDataset(6, seed=1, stage="static", crop=(32, 32))
    loader = torch.utils.data.DataLoader(
        ds, batch_size=3, collate_fn=functools.partial(collate_clips, max_objects=3)
    )
    batch = next(iter(loader))
    assert batch["frames"].shape == (3, 3, 3, 32, 32)
    assert batch["masks"].shape == (3, 3, 32, 32)
    assert batch["one_hot"].shape == (3, 3, 4, 32, 32)
    assert torch.all(batch["one_hot"].sum(dim=2) == 1)
    assert torch.equal(batch["one_hot"].argmax(dim=2), batch["masks"])
    counts = batch["num_objects"]
    for b in range(3):
        expected = [True] + [k <= int(counts[b]) for k in range(1, 4)]
        assert batch["valid"][b].tolist() == expected
    with pytest.raises(InputError, match="max_objects"):
        collate_clips([ds[0]], max_objects=0)


def test_keep_objects_keep_all_keeps_every_visible_object_without_drawing():
    from stm_core.training.static_clips import keep_objects

    masks = np.zeros((2, 8, 8), np.uint8)
    masks[:, :2, :2], masks[:, 4:, 4:], masks[0, 0, 7] = 7, 12, 3  # id 3: one pixel only
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    kept = keep_objects(masks, rng, max_objects=5, min_pixels=2, keep_all=True)
    assert rng.bit_generator.state == state
    assert kept is not None
    np.testing.assert_array_equal(
        kept[1], np.where(masks[1] == 7, 1, np.where(masks[1] == 12, 2, 0))
    )
    assert kept[0, 0, 7] == 0  # below min_pixels: background
    capped = keep_objects(masks, rng, max_objects=1, min_pixels=2, keep_all=True)
    assert set(np.unique(capped).tolist()) == {0, 1}
