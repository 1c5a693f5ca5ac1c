"""The evaluation protocol: each object seeded once, on the first frame it is annotated."""

import numpy as np

from pipeline.corpus import discover_dataset, folder_video
from pipeline.evaluation import evaluate_task
from stm_core.evaluation import first_appearance_seeds, scored_frames


def _real_task(root, name):
    dataset = discover_dataset(str(root))
    return next(t for t in dataset.tasks if t.video_id == name), dataset.fs


def test_first_appearance_seeds_keep_only_new_objects():
    a = np.zeros((4, 4), np.uint8)
    a[0, 0] = 1
    b = a.copy()
    b[1, 1] = 2
    c = b.copy()
    c[2, 2] = 5
    seeds = first_appearance_seeds({0: a, 14: b, 20: b, 33: c})
    assert sorted(seeds) == [0, 14, 33]
    np.testing.assert_array_equal(seeds[0], a)
    assert set(np.unique(seeds[14])) == {0, 2}  # object 1 is not re-seeded
    assert set(np.unique(seeds[33])) == {0, 5}


def test_evaluate_video_scores_the_annotated_frames(real_data_root, read_real_clip, tmp_path):
    import pytest
    import torch
    from PIL import Image

    from stm_core import STM, InputError
    from stm_core.io import write_mask

    (tmp_path / "f").mkdir()
    clip = read_real_clip("blackswan", 5, size=(107, 60))
    for t, frame in enumerate(clip.frames):
        Image.fromarray(frame).save(tmp_path / "f" / f"{t:05d}.jpg")
        write_mask(tmp_path / "m" / f"{t:05d}.png", clip.masks[t])
    torch.manual_seed(0)
    model = STM("resnet18").eval()
    task, fs = folder_video(str(tmp_path / "f"), str(tmp_path / "m"), name="swan")
    scores = evaluate_task(model, task, fs)
    assert scores.object_ids == (1,)
    assert 0.0 <= scores.j_and_f <= 1.0
    bike, fs = _real_task(real_data_root, "cutie-bike")
    with pytest.raises(InputError, match="only 1 ground-truth frame"):
        evaluate_task(model, bike, fs)  # one annotated frame: nothing to score


def _labels(*objects: int) -> np.ndarray:
    """A 6 x 6 label map holding each given object as one pixel of its own."""
    labels = np.zeros((6, 6), np.uint8)
    for k in objects:
        labels[k, k] = k
    return labels


def test_objects_are_scored_only_after_their_seed():
    # xmem2-caps' layout: cap 1 from frame 0, cap 2 first annotated on the third mask.
    plan = scored_frames([_labels(1), _labels(1), _labels(1, 2), _labels(1, 2), _labels(1, 2)])
    assert plan == {1: [1, 2, 3], 2: [3]}
    # An object that leaves is still scored on the frames where it is absent.
    assert scored_frames([_labels(1, 2), _labels(2), _labels(), _labels(1)]) == {
        1: [1, 2],
        2: [1, 2],
    }


def test_masks_that_only_seed_new_objects_are_not_ground_truth():
    # cutie-judo's layout: each later mask holds one new object and nothing else.
    assert scored_frames([_labels(1), _labels(2), _labels(3), _labels(4)]) == {}
    # A seed-only mask between full annotations scores nobody; the full ones still count.
    plan = scored_frames([_labels(1), _labels(2), _labels(1, 2), _labels(1, 2), _labels(1)])
    assert plan == {1: [2, 3], 2: [2, 3]}


def test_a_late_object_gets_no_credit_for_frames_before_it(tmp_path):
    from pipeline.folder_tasks import evaluate_folders
    from stm_core.io import write_mask

    gt = [_labels(1), _labels(1), _labels(1, 2), _labels(1, 2), _labels(1, 2)]
    pred = [g.copy() for g in gt]
    pred[3][pred[3] == 2] = 0  # object 2 lost on the one frame that tests it
    for t, (p, g) in enumerate(zip(pred, gt, strict=True)):
        write_mask(tmp_path / "pred" / "caps" / f"{t:05d}.png", p)
        write_mask(tmp_path / "gt" / "caps" / f"{t:05d}.png", g)
    for t, labels in enumerate([_labels(1), _labels(2), _labels(3)]):
        write_mask(tmp_path / "pred" / "judo" / f"{t:05d}.png", labels)
        write_mask(tmp_path / "gt" / "judo" / f"{t:05d}.png", labels)
    summary = evaluate_folders(tmp_path / "pred", tmp_path / "gt")
    assert list(summary["sequences"]) == ["caps"]
    assert "only seed new objects" in summary["unscored"]["judo"]
    # Object 1 perfect on frames 1-3, object 2 wrong on its only scored frame (3): 1/2, where
    # frames 1 and 2 (absent, then its own seed) used to credit it 2/3.
    assert summary["sequences"]["caps"]["J"] == 0.5
    assert summary["mean"]["J"] == 0.5


def test_a_video_of_seeds_only_is_refused_before_propagating(real_data_root):
    import pytest

    from stm_core.evaluation import NothingToScoreError

    judo, fs = _real_task(real_data_root, "cutie-judo")
    with pytest.raises(NothingToScoreError, match="cutie-judo.*only seed new objects"):
        evaluate_task(object(), judo, fs)  # no model is ever touched


def test_a_named_video_the_root_lacks_is_refused_before_propagating(real_data_root):
    """A typo in the clips to score must not shrink the mean silently."""
    import pytest

    from pipeline.evaluation import evaluate_root
    from stm_core.errors import InputError

    with pytest.raises(InputError, match="no annotated video named blackswann"):
        evaluate_root(object(), real_data_root, videos=["blackswan", "blackswann"])


def test_max_side_propagates_downscaled_and_scores_at_the_native_size(
    read_real_clip, tmp_path, monkeypatch
):
    """With ``max_side`` the model sees working-size frames and seeds, and its masks are
    scored at the annotations' size: an oracle that returns the ground truth downscaled to the
    working size scores close to 1 (only the resampling costs), not 0 or a shape error."""
    from PIL import Image

    import stm_core.evaluation as evaluation
    from stm_core.codec import resize_labels
    from stm_core.io import write_mask
    from stm_core.propagation import FrameResult

    clip = read_real_clip("blackswan", 5, size=(214, 120))
    truth = clip.masks
    for t, frame in enumerate(clip.frames):
        Image.fromarray(frame).save(tmp_path / f"{t:05d}.jpg")
        write_mask(tmp_path / "m" / f"{t:05d}.png", truth[t])
    seen = []

    def oracle(model, frames, seeds, *args, **kwargs):
        for t, frame in enumerate(frames):
            seen.append((frame.shape[:2], {k: v.shape for k, v in seeds.items()}))
            labels = resize_labels(truth[t], frame.shape[:2])
            probs = np.stack([labels == 0, labels == 1]).astype(np.float32)
            yield FrameResult(frame_index=t, object_ids=(1,), probs=probs, labels=labels)

    monkeypatch.setattr(evaluation, "propagate", oracle)
    task, fs = folder_video(str(tmp_path), str(tmp_path / "m"), name="swan")
    scores = evaluate_task(object(), task, fs, max_side=107)
    assert {shape for shape, _ in seen} == {(60, 107)}
    assert all(seeds == {0: (60, 107)} for _, seeds in seen)
    assert 0.8 < scores.j_and_f < 1.0  # resampled twice: close, not exact
    seen.clear()
    assert evaluate_task(object(), task, fs).j_and_f == 1.0  # native size: exact
    assert {shape for shape, _ in seen} == {(120, 214)}
