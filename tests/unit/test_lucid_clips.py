"""Lucid clips: objects cut out of one frame and moved on their own."""

from __future__ import annotations

import numpy as np

from stm_core.training.heldout import heldout_videos
from stm_core.training.lucid_clips import fill_holes, lucid_clip


def test_fill_holes_continues_the_surrounding_background():
    image = np.zeros((40, 60, 3), np.uint8)
    image[:, :30] = (200, 10, 10)
    image[:, 30:] = (10, 10, 200)
    hole = np.zeros((40, 60), bool)
    hole[10:30, 5:20] = True  # inside the red half
    image[hole] = (0, 255, 0)
    filled = fill_holes(image, hole)
    np.testing.assert_array_equal(filled[~hole], image[~hole])
    inner = filled[15:25, 8:14].reshape(-1, 3).astype(int)
    assert (inner[:, 0] > 150).all() and (inner[:, 1] < 40).all()  # red, not the green object
    assert (fill_holes(image, np.ones((40, 60), bool)) == 127).all()
    np.testing.assert_array_equal(fill_holes(image, np.zeros((40, 60), bool)), image)


def _centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def test_lucid_clip_moves_each_object_on_its_own():
    video = next(
        v for v in heldout_videos(6, num_frames=1, size=(160, 288)) if v.masks[0].max() >= 2
    )
    frame, mask = video.frames[0], video.masks[0]
    shifts = []
    for seed in range(6):
        frames, labels = lucid_clip(frame, mask, np.random.default_rng(seed), 3, (96, 96))
        assert frames.shape == (3, 96, 96, 3) and labels.shape == (3, 96, 96)
        ids = set(np.unique(labels[0]).tolist()) - {0}
        assert ids and set(np.unique(labels).tolist()) - {0} <= ids
        again = lucid_clip(frame, mask, np.random.default_rng(seed), 3, (96, 96))
        np.testing.assert_array_equal(again[0], frames)
        np.testing.assert_array_equal(again[1], labels)
        both = [k for k in sorted(ids) if (labels[1] == k).sum() > 20]
        if len(both) >= 2:  # two objects on frames 0 and 1: their displacements differ
            moves = [_centroid(labels[1] == k) - _centroid(labels[0] == k) for k in both[:2]]
            shifts.append(np.linalg.norm(moves[0] - moves[1]))
    assert shifts and max(shifts) > 3.0
