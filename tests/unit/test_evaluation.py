"""The evaluation protocol: each object seeded once, on the first frame it is annotated."""

import numpy as np

from stm_core.evaluation import evaluate_video, first_appearance_seeds
from stm_core.io import list_videos


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


def test_evaluate_video_scores_the_annotated_frames(real_data_root, tmp_path):
    import pytest
    import torch
    from PIL import Image

    from stm_core import STM, InputError
    from stm_core.io import read_mask, video_from_dirs, write_mask

    src = real_data_root / "JPEGImages" / "480p" / "blackswan"
    gt = real_data_root / "Annotations" / "480p" / "blackswan"
    (tmp_path / "f").mkdir()
    for t in range(5):
        name = f"{t:05d}"
        Image.open(src / f"{name}.jpg").resize((107, 60)).save(tmp_path / "f" / f"{name}.jpg")
        small = Image.fromarray(read_mask(gt / f"{name}.png")).resize((107, 60), Image.NEAREST)
        write_mask(tmp_path / "m" / f"{name}.png", np.asarray(small))
    torch.manual_seed(0)
    model = STM("resnet18").eval()
    scores = evaluate_video(model, video_from_dirs(tmp_path / "f", tmp_path / "m", "swan"))
    assert scores.object_ids == (1,)
    assert 0.0 <= scores.j_and_f <= 1.0
    bike = next(v for v in list_videos(real_data_root) if v.name == "cutie-bike")
    with pytest.raises(InputError, match="only 1 ground-truth frame"):
        evaluate_video(model, bike)  # one annotated frame: nothing to score
