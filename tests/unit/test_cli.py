"""The CLI on the real clips: propagate writes one palette PNG per frame, evaluate scores folders,
and bad input gives a one-line error naming the file, with exit code 2."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from jobs.cli import main
from stm_core import STM, save_checkpoint
from stm_core.io import read_mask, write_mask


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "r18.pt"
    save_checkpoint(STM("resnet18"), path)
    return path


def _seq(root: Path, name: str) -> tuple[Path, Path]:
    return root / "JPEGImages" / "480p" / name, root / "Annotations" / "480p" / name


def test_propagate_writes_a_palette_png_per_frame(real_data_root, checkpoint, tmp_path, capsys):
    frames, seeds = _seq(real_data_root, "cutie-bike")
    out = tmp_path / "out"
    code = main(
        [
            "propagate",
            "--checkpoint",
            str(checkpoint),
            "--frames",
            str(frames),
            "--seeds",
            str(seeds),
            "--out",
            str(out),
            "--mem-every",
            "2",
            "--max-memory-frames",
            "2",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    written = sorted(p.name for p in out.glob("*.png"))
    assert written == sorted(p.with_suffix(".png").name for p in frames.glob("*.jpg"))
    first = Image.open(out / "00000.png")
    assert first.mode == "P" and first.size == (854, 480)
    np.testing.assert_array_equal(read_mask(out / "00000.png"), read_mask(seeds / "00000.png"))
    assert "cutie-bike: 4/4 frames" in capsys.readouterr().err


def test_evaluate_prints_a_table_and_writes_json(real_data_root, tmp_path, capsys):
    gt_root = tmp_path / "gt"
    pred_root = tmp_path / "pred"
    for name in ("blackswan", "xmem2-caps", "cutie-judo"):
        shutil.copytree(_seq(real_data_root, name)[1], gt_root / name)
        shutil.copytree(_seq(real_data_root, name)[1], pred_root / name)
    # Damage one predicted frame of blackswan: its J drops below 1.
    Image.fromarray(np.zeros((480, 854), np.uint8)).save(pred_root / "blackswan" / "00010.png")
    code = main(
        [
            "evaluate",
            "--pred",
            str(pred_root),
            "--gt",
            str(gt_root),
            "--json",
            str(tmp_path / "s.json"),
        ]
    )
    assert code == 0
    table = capsys.readouterr().out
    assert "blackswan" in table and "xmem2-caps" in table and "mean" in table
    assert "not scored: cutie-judo: no object has an annotated frame after its seed" in table
    scores = json.loads((tmp_path / "s.json").read_text())
    assert set(scores) == {"sequences", "mean", "unscored", "not_predicted"}
    assert scores["not_predicted"] == []
    assert list(scores["unscored"]) == ["cutie-judo"]  # its masks are seeds, not ground truth
    assert scores["sequences"]["xmem2-caps"] == {"J": 1.0, "F": 1.0, "J&F": 1.0}
    # 48 evaluated frames, one of them empty: J = 47 / 48.
    assert scores["sequences"]["blackswan"]["J"] == pytest.approx(47 / 48)
    assert set(scores["mean"]) == {"J", "F", "J&F"}


def _run_error(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]  # earlier lines may be progress
    assert last.startswith(f"stm-label {argv[0]}: error: ")
    return last


def test_bad_inputs_name_the_file(real_data_root, checkpoint, tmp_path, capsys):
    frames, seeds = _seq(real_data_root, "cutie-bike")
    base = ["propagate", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "o")]

    err = _run_error(base + ["--frames", str(tmp_path / "none"), "--seeds", str(seeds)], capsys)
    assert str(tmp_path / "none") in err and "does not exist" in err

    empty = tmp_path / "empty"
    empty.mkdir()
    err = _run_error(base + ["--frames", str(empty), "--seeds", str(seeds)], capsys)
    assert "no frames" in err

    broken = tmp_path / "broken"
    shutil.copytree(frames, broken)
    (broken / "00002.jpg").write_bytes(b"not a jpeg")
    err = _run_error(base + ["--frames", str(broken), "--seeds", str(seeds)], capsys)
    assert "00002.jpg" in err

    jf, js = _seq(real_data_root, "cutie-judo")
    err = _run_error(base + ["--frames", str(jf), "--seeds", str(js)], capsys)
    assert "00005.png" in err and "853x480" in err and "854x480" in err

    bad_ckpt = tmp_path / "bad.pt"
    bad_ckpt.write_bytes(b"garbage")
    err = _run_error(
        [
            "propagate",
            "--checkpoint",
            str(bad_ckpt),
            "--frames",
            str(frames),
            "--seeds",
            str(seeds),
            "--out",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert "bad.pt" in err and "not a readable PyTorch checkpoint" in err


def test_resize_seeds_flag_accepts_the_judo_mask(real_data_root, checkpoint, tmp_path):
    jf, js = _seq(real_data_root, "cutie-judo")
    frames = tmp_path / "frames"
    frames.mkdir()
    for stem in ("00000", "00005"):  # the first frame and the one of the 853-wide seed
        shutil.copy(jf / f"{stem}.jpg", frames / f"{stem}.jpg")
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    for stem in ("00000", "00005"):
        shutil.copy(js / f"{stem}.png", seeds / f"{stem}.png")
    argv = [
        "propagate",
        "--checkpoint",
        str(checkpoint),
        "--frames",
        str(frames),
        "--seeds",
        str(seeds),
        "--out",
        str(tmp_path / "o"),
        "--resize-seeds",
    ]
    assert main(argv) == 0
    assert set(np.unique(read_mask(tmp_path / "o" / "00005.png"))) >= {2}


def test_evaluate_missing_prediction(real_data_root, tmp_path, capsys):
    gt_root = tmp_path / "gt"
    shutil.copytree(_seq(real_data_root, "cutie-bike")[1], gt_root / "cutie-bike")
    (tmp_path / "pred" / "cutie-bike").mkdir(parents=True)
    err = _run_error(["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(gt_root)], capsys)
    assert "missing predicted masks" in err


def test_propagate_adapt_steps_labels_with_a_fine_tuned_copy(read_real_clip, checkpoint, tmp_path):
    # The clip at a quarter of its size: what is tested is the fine-tuned copy, and four
    # 854 x 480 frames propagated twice took half a minute of this suite.
    frames, seeds = tmp_path / "frames", tmp_path / "seeds"
    frames.mkdir()
    clip = read_real_clip("cutie-bike", 4, size=(214, 120))
    for t, frame in enumerate(clip.frames):
        Image.fromarray(frame).save(frames / f"{t:05d}.jpg")
    write_mask(seeds / "00000.png", clip.masks[0])
    base = ["propagate", "--checkpoint", str(checkpoint), "--frames", str(frames)]
    base += ["--seeds", str(seeds), "--device", "cpu"]
    assert main(base + ["--out", str(tmp_path / "plain")]) == 0
    adapted = ["--adapt-steps", "2", "--adapt-lr", "1e-3", "--adapt-crop", "96x96"]
    assert main(base + ["--out", str(tmp_path / "tuned")] + adapted) == 0
    plain = [read_mask(p) for p in sorted((tmp_path / "plain").glob("*.png"))]
    tuned = [read_mask(p) for p in sorted((tmp_path / "tuned").glob("*.png"))]
    assert len(plain) == len(tuned) == 4
    np.testing.assert_array_equal(tuned[0], read_mask(seeds / "00000.png"))  # the seed as given
    assert any(not np.array_equal(a, b) for a, b in zip(plain[1:], tuned[1:], strict=True))


def test_propagate_rejects_bad_adaptation_settings(real_data_root, checkpoint, tmp_path, capsys):
    frames, seeds = _seq(real_data_root, "cutie-bike")
    base = ["propagate", "--checkpoint", str(checkpoint), "--frames", str(frames)]
    base += ["--seeds", str(seeds), "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit):
        main(base + ["--adapt-steps", "-1"])
    assert "must be >= 0" in capsys.readouterr().err
    err = _run_error(base + ["--adapt-steps", "1", "--adapt-lr", "0"], capsys)
    assert "adaptation.lr" in err
    err = _run_error(base + ["--adapt-steps", "1", "--adapt-crop", "100x64"], capsys)
    assert "multiples of 16" in err
    err = _run_error(base + ["--adapt-steps", "1", "--adapt-crop", "whole"], capsys)
    assert "expected 'frame' or HxW" in err


def _tiny_sequence(root: Path, name: str, shift: int = 0, frames: int = 4) -> None:
    """``frames`` 16 x 16 palette PNGs ``00000.png ...`` of one square (object 1) moving right;
    ``shift`` moves it further, so a shifted copy scores below 1."""
    for t in range(frames):
        labels = np.zeros((16, 16), np.uint8)
        labels[4:12, 2 + t + shift : 8 + t + shift] = 1
        write_mask(root / name / f"{t:05d}.png", labels)


@pytest.fixture()
def three_sequences(tmp_path) -> tuple[Path, Path]:
    """Ground truth for a, b and set1/c (nested); predictions for a (exact) and b (shifted)."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    for name in ("a", "b", "set1/c"):
        _tiny_sequence(gt, name)
    _tiny_sequence(pred, "a")
    _tiny_sequence(pred, "b", shift=1)
    _tiny_sequence(pred, "only-predicted")  # no ground truth: ignored
    return pred, gt


def test_evaluate_lists_sequences_without_predictions(three_sequences, tmp_path, capsys):
    pred, gt = three_sequences
    out = tmp_path / "s.json"
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "not predicted: set1/c" in table and "only-predicted" not in table
    scores = json.loads(out.read_text())
    assert scores["not_predicted"] == ["set1/c"]
    assert scores["sequences"]["a"] == {"J": 1.0, "F": 1.0, "J&F": 1.0}
    assert list(scores["sequences"]) == ["a", "b"] and scores["sequences"]["b"]["J"] < 1

    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--strict"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'set1/c'" in err and "--strict" in err


def test_evaluate_sequences_picks_some(three_sequences, tmp_path, capsys):
    pred, gt = three_sequences
    out = tmp_path / "s.json"
    base = ["evaluate", "--pred", str(pred), "--gt", str(gt), "--json", str(out)]
    assert main([*base, "--sequences", "b"]) == 0
    scores = json.loads(out.read_text())
    assert list(scores["sequences"]) == ["b"] and scores["not_predicted"] == []
    assert main([*base, "--sequences", "a,set1/c", "--strict"]) == 2  # c has no predictions
    capsys.readouterr()
    assert main([*base, "--sequences", "a,set1/c"]) == 0
    scores = json.loads(out.read_text())
    assert list(scores["sequences"]) == ["a"] and scores["not_predicted"] == ["set1/c"]
    assert main([*base, "--sequences", "a", "--sequences", "b"]) == 0
    assert list(json.loads(out.read_text())["sequences"]) == ["a", "b"]
    capsys.readouterr()
    err = _run_error([*base, "--sequences", "a,nope"], capsys)
    assert "['nope']" in err and "'a'" in err and "'set1/c'" in err


def test_evaluate_with_nothing_predicted_names_both_sides(tmp_path, capsys):
    """The usual cause is a naming mismatch (``car-shadow.mp4`` vs ``car-shadow``): the error
    lists what each folder holds."""
    _tiny_sequence(tmp_path / "gt", "car-shadow")
    _tiny_sequence(tmp_path / "pred", "car-shadow.mp4")
    argv = ["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt")]
    err = _run_error(argv, capsys)
    assert "no predictions for any sequence" in err
    assert "'car-shadow'" in err and "'car-shadow.mp4'" in err
