"""``pipeline.mask_dataset`` on the demo corpus, with a run written here from its true masks.

The demo run is built as the corpus job writes one (``ledger.write_shard`` per video, run
record, commit marker) over ``make_demo_corpus`` (three held-out clips, 24 frames of 240 x 432,
frame folders), its masks being the clips' true label maps and its scores chosen here, so the
filters have frames to drop (the Ray Dataset is read on a real run in
``tests/integration/test_mask_dataset_s3.py``). What must hold, for the torch Dataset:

- every item's label map is the run reader's (and the true one), its per-object masks decode
  from the stored RLE, its scores and seed flags are the stored rows', and its image is the
  corpus frame read with Pillow;
- the score, seed and video filters keep exactly the frames computed here from the stored rows;
- a DataLoader gives the same items with 0 and 2 workers, and the dataset pickles;
- bad input raises the run reader's errors (no run, uncommitted run, unknown video) and a
  corpus that changed since the run raises InputError naming the frame file;
- a video file's frames, asked for in any order, are its decoded frames.
"""

from __future__ import annotations

import pickle
import random
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from pipeline import ledger, rle
from pipeline.demo_corpus import (
    DEMO_CLIPS,
    DEMO_FRAMES,
    DEMO_SEED_BASE,
    DEMO_SIZE,
    make_demo_corpus,
)
from pipeline.mask_dataset import (
    ITEM_KEYS,
    FrameFilter,
    TorchMaskDataset,
    collate_frames,
    ray_dataset,
)
from pipeline.run_reader import (
    RunIncompleteError,
    RunNotFoundError,
    UnknownVideoError,
    open_run,
)
from schemas.tables import ERRORS, MASKS, MaskRow
from stm_core.errors import InputError
from stm_core.training.heldout import heldout_videos

RUN = "demo"
CHECKPOINT = "sha256:0123456789abcdef"
LOW, HIGH = 0.4, 0.9  # the two scores a propagated mask gets here
FRAMES_DIR = "JPEGImages/480p"


def score_of(video: int, frame: int, obj: int) -> float:
    """A propagated mask's score: low on about one (frame, object) in five, so ``min_score``
    drops some frames of every video and keeps most."""
    return LOW if (3 * frame + obj + video) % 5 == 0 else HIGH


def rows_of(video_id: str, n: int, masks: np.ndarray) -> list[MaskRow]:
    """One video's rows as the job writes them: frame 0 holds the seeds (score 1), every later
    frame propagated masks, absent objects an empty mask with score 0."""
    ids = sorted(int(k) for k in np.unique(masks) if k)
    rows = []
    for t, labels in enumerate(masks):
        for enc in rle.encode_label_map(labels, ids):
            seed = t == 0 and enc.area > 0
            score = 1.0 if seed else score_of(n, t, enc.object_id) if enc.area else 0.0
            rows.append(
                MaskRow(
                    RUN,
                    video_id,
                    t,
                    f"{t:05d}",
                    enc.object_id,
                    *labels.shape,
                    enc.rle,
                    enc.area,
                    enc.bbox,
                    score,
                    seed,
                    CHECKPOINT,
                )  # fmt: skip
            )
    return rows


def write_run(output: Path, corpus: Path, rows: dict[str, list[MaskRow]], commit=True) -> str:
    """A run with one shard per video (``rows``), committed unless told; returns its URI."""
    plan = ledger.save_plan(str(output), ledger.make_plan(RUN, rows, 1))
    for shard in plan.shards:
        (video_id,) = shard.video_ids
        ledger.write_shard(
            str(output), RUN, shard.name, MASKS.table(rows[video_id]), ERRORS.empty()
        )
    if commit:
        config = {"corpus_uri": str(corpus), "seeds_uri": None, "seeds_format": "auto"}
        ledger.write_run_record(str(output), RUN, {"config": config, "status": "succeeded"})
        ledger.mark_success(str(output), RUN)
    return f"{output}/runs/{RUN}"


@dataclass(frozen=True)
class Demo:
    run_uri: str
    corpus: Path
    truth: dict[str, np.ndarray]  # video id -> T x H x W true label maps
    rows: dict[str, list[MaskRow]]  # video id -> its stored rows

    def frame(self, video_id: str, index: int) -> np.ndarray:
        """The corpus frame, read with Pillow (not through the pipeline)."""
        path = self.corpus / FRAMES_DIR / video_id / f"{index:05d}.jpg"
        return np.asarray(Image.open(path).convert("RGB"))

    def kept(self, keep) -> list[tuple[str, int]]:
        """(video, frame) of the frames whose rows pass ``keep(rows of the frame)``, sorted."""
        out = []
        for video_id, rows in sorted(self.rows.items()):
            for t in sorted({r.frame_index for r in rows}):
                if keep([r for r in rows if r.frame_index == t]):
                    out.append((video_id, t))
        return out


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Demo:
    root = tmp_path_factory.mktemp("demo")
    corpus = make_demo_corpus(root / "corpus")
    videos = heldout_videos(
        DEMO_CLIPS, num_frames=DEMO_FRAMES, size=DEMO_SIZE, seed_base=DEMO_SEED_BASE
    )
    truth = {v.name: np.asarray(v.masks) for v in videos}
    rows = {v.name: rows_of(v.name, n, truth[v.name]) for n, v in enumerate(videos)}
    return Demo(write_run(root / "output", corpus, rows), corpus, truth, rows)


def item_keys(items) -> list[tuple[str, int]]:
    return [(item["video_id"], item["frame_index"]) for item in items]


def check_item(demo: Demo, item: dict, object_masks: bool = False) -> None:
    """``item`` against the run reader, the true masks, the stored rows and the corpus."""
    video_id, t = item["video_id"], item["frame_index"]
    assert set(item) == set(ITEM_KEYS) | ({"masks"} if object_masks else set())
    reader_labels = open_run(demo.run_uri).video(video_id).label_map(t)
    np.testing.assert_array_equal(item["labels"], reader_labels.labels)
    np.testing.assert_array_equal(item["labels"], demo.truth[video_id][t])
    assert item["labels"].dtype == np.uint8
    rows = [r for r in demo.rows[video_id] if r.frame_index == t]
    assert item["frame_name"] == rows[0].frame_name == f"{t:05d}"
    assert item["object_ids"].tolist() == [r.object_id for r in rows]
    assert item["object_ids"].tolist() == list(reader_labels.object_ids)
    np.testing.assert_allclose(item["scores"], [r.score for r in rows], rtol=1e-6)
    assert item["scores"].dtype == np.float32
    assert item["is_seed"].tolist() == [r.is_seed for r in rows]
    image = item["image"]
    assert image.dtype == np.uint8 and image.shape == (*DEMO_SIZE, 3)
    np.testing.assert_array_equal(image, demo.frame(video_id, t))
    if object_masks:
        stored = np.stack([rle.decode(r.rle, r.height, r.width) for r in rows])
        np.testing.assert_array_equal(item["masks"], stored)


# --- torch ----------------------------------------------------------------------------------


def test_every_frame_of_the_run_with_its_masks_and_corpus_frame(demo: Demo) -> None:
    dataset = TorchMaskDataset(demo.run_uri)
    assert len(dataset) == DEMO_CLIPS * DEMO_FRAMES
    items = [dataset[i] for i in range(len(dataset))]
    assert item_keys(items) == demo.kept(lambda rows: True)  # video, then frame order
    for item in items:
        check_item(demo, item)
    assert sum(item["is_seed"].any() for item in items) == DEMO_CLIPS  # frame 0 of each
    assert item_keys([dataset[-1]]) == item_keys(items[-1:])
    with pytest.raises(IndexError):
        dataset[len(dataset)]


def test_filters_keep_the_frames_their_rules_name(demo: Demo) -> None:
    def sure(rows: list[MaskRow]) -> bool:
        return all(r.score >= 0.5 for r in rows if r.area)

    def seeded(rows: list[MaskRow]) -> bool:
        return any(r.is_seed for r in rows)

    cases = {
        "min_score": (FrameFilter(min_score=0.5), sure),
        "only": (FrameFilter(seeds="only"), seeded),
        "exclude": (
            FrameFilter(seeds="exclude", min_score=0.5),
            lambda r: sure(r) and not seeded(r),
        ),
    }
    for name, (keep, rule) in cases.items():
        dataset = TorchMaskDataset(demo.run_uri, keep=keep)
        want = demo.kept(rule)
        assert [(v.masks.video_id, f) for v in dataset.videos for f in v.frame_indices] == want
        assert 0 < len(dataset) == len(want), name
    everything = len(demo.kept(lambda rows: True))
    assert len(demo.kept(sure)) < everything  # the score filter had frames to drop
    assert item_keys(TorchMaskDataset(demo.run_uri, keep=FrameFilter(seeds="only"))) == [
        (v, 0) for v in sorted(demo.rows)
    ]
    one = sorted(demo.rows)[1]
    keep = FrameFilter(video_ids=[one, one], min_score=0.5)
    assert keep.video_ids == (one,)
    dataset = TorchMaskDataset(demo.run_uri, keep=keep, object_masks=True)
    assert {item["video_id"] for item in dataset} == {one}
    assert item_keys(dataset) == [k for k in demo.kept(sure) if k[0] == one]
    for item in dataset:
        check_item(demo, item, object_masks=True)
        assert (item["scores"][item["masks"].any(axis=(1, 2))] >= 0.5).all()


def test_dataloader_with_and_without_workers_and_pickle(demo: Demo) -> None:
    dataset = TorchMaskDataset(demo.run_uri, keep=FrameFilter(seeds="exclude"))
    expected = [dataset[i] for i in range(len(dataset))]
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=5, num_workers=workers, collate_fn=collate_frames
        )
        got = []
        for batch in loader:
            assert batch["image"].dtype == torch.uint8 and batch["image"].shape[1:] == (
                *DEMO_SIZE,
                3,
            )
            for i in range(len(batch["video_id"])):
                got.append((batch["video_id"][i], int(batch["frame_index"][i]), batch["labels"][i]))
        assert [(v, t) for v, t, _ in got] == item_keys(expected), workers
        for (_, _, labels), item in zip(got, expected, strict=True):
            np.testing.assert_array_equal(labels.numpy(), item["labels"])
    copy = pickle.loads(pickle.dumps(dataset))
    for i in (0, len(dataset) - 1):
        np.testing.assert_array_equal(copy[i]["image"], expected[i]["image"])
        np.testing.assert_array_equal(copy[i]["labels"], expected[i]["labels"])


def test_collate_frames_refuses_frames_of_different_sizes(demo: Demo) -> None:
    item = TorchMaskDataset(demo.run_uri, keep=FrameFilter(seeds="only"))[0]
    small = dict(item, image=item["image"][:8, :8], labels=item["labels"][:8, :8])
    batch = collate_frames([item, item])
    assert batch["labels"].shape == (2, *DEMO_SIZE)
    assert [t.tolist() for t in batch["object_ids"]] == [item["object_ids"].tolist()] * 2
    with pytest.raises(ValueError, match="different sizes"):
        collate_frames([item, small])


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [TorchMaskDataset, ray_dataset])
def test_bad_runs_and_arguments_raise_the_run_readers_errors(demo: Demo, tmp_path, make) -> None:
    missing = f"{tmp_path}/out/runs/nothing"
    with pytest.raises(RunNotFoundError, match="nothing"):
        make(missing)
    corpus = demo.corpus
    video_id = sorted(demo.rows)[0]
    pending = write_run(tmp_path / "out", corpus, {video_id: demo.rows[video_id]}, commit=False)
    with pytest.raises(RunIncompleteError, match=f"{tmp_path}/out/runs/demo"):
        make(pending)
    with pytest.raises(UnknownVideoError, match="no video 'nope'"):
        make(demo.run_uri, keep=FrameFilter(video_ids=[video_id, "nope"]))


def test_frame_filter_refuses_bad_values() -> None:
    with pytest.raises(TypeError, match="list of ids"):
        FrameFilter(video_ids="cat")
    with pytest.raises(ValueError, match="seeds must be"):
        FrameFilter(seeds="some")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="min_score"):
        FrameFilter(min_score=1.5)


def test_a_corpus_that_changed_since_the_run_is_refused(demo: Demo, tmp_path) -> None:
    video_id = sorted(demo.rows)[2]
    dataset = TorchMaskDataset(demo.run_uri, keep=FrameFilter(video_ids=[video_id]))
    frame = demo.corpus / FRAMES_DIR / video_id / "00003.jpg"
    original = frame.read_bytes()
    try:
        Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(frame)
        with pytest.raises(InputError, match=r"00003\.jpg.*12x10.*differs"):
            dataset[3]
    finally:
        frame.write_bytes(original)
    check_item(demo, dataset[3])


# --- a video file -----------------------------------------------------------------------------


def encode_video(path: Path, frames: np.ndarray) -> None:
    """An mp4 of ``frames`` (T x H x W x 3) with PyAV, lossless enough to tell frames apart."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for pixels in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())


def test_a_video_files_frames_in_any_order(tmp_path) -> None:
    rng = np.random.default_rng(0)
    count, size = 7, (32, 48)
    pixels = np.repeat(rng.integers(0, 255, (count, 1, 1, 3), dtype=np.uint8), 32, axis=1)
    pixels = np.repeat(pixels, 48, axis=2)  # flat colours, one per frame
    encode_video(tmp_path / "corpus" / "clip.mp4", pixels)
    seed = tmp_path / "seeds" / "clip.mp4" / "00000.png"
    seed.parent.mkdir(parents=True)
    labels = np.zeros((count, *size), np.uint8)
    for t in range(count):
        labels[t, 4 : 12 + t, 3 : 20 + 2 * t] = 1
    Image.fromarray(labels[0]).save(seed)
    rows = [
        MaskRow(
            RUN,
            "clip.mp4",
            t,
            f"{t:06d}",
            1,
            *size,
            rle.encode(labels[t]),
            int(labels[t].sum()),
            (0.0, 0.0, 0.0, 0.0),
            0.8,
            t == 0,
            CHECKPOINT,
        )  # fmt: skip
        for t in range(count)
    ]
    run_uri = write_run(tmp_path / "out", tmp_path / "corpus", {"clip.mp4": rows}, commit=False)
    record = {
        "config": {
            "corpus_uri": str(tmp_path / "corpus"),
            "seeds_uri": str(tmp_path / "seeds"),
            "seeds_format": "masks",
        }
    }
    ledger.write_run_record(str(tmp_path / "out"), RUN, record)
    ledger.mark_success(str(tmp_path / "out"), RUN)
    with av.open(str(tmp_path / "corpus" / "clip.mp4")) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    dataset = TorchMaskDataset(run_uri)
    order = list(range(count)) + random.Random(0).sample(range(count), count) + [2, 2, 0]
    for t in order:
        item = dataset[t]
        assert (item["frame_index"], item["frame_name"]) == (t, f"{t:06d}")
        np.testing.assert_array_equal(item["image"], decoded[t])
        np.testing.assert_array_equal(item["labels"], labels[t])
