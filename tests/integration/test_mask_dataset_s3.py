"""``pipeline.mask_dataset`` over a run the corpus job wrote to S3 (moto on loopback).

A corpus of a DAVIS frame folder and an mp4 (object seeded on frame 1, so frame 0 has only an
empty mask) is uploaded and labeled by ``run_label_job`` on the local Ray, corpus and output on
S3. The torch Dataset and the Ray Dataset are then read with the store settings given as
options only: the endpoint is in no environment variable, so a Ray worker that did not get them
could not reach the bucket. What must hold:

- every item's label map is the run reader's, its scores and seed flags the stored rows', and
  its image is the frame as decoded here from the local copy of the corpus (Pillow for the
  JPEGs, PyAV for the mp4), also when the mp4's frames are asked for out of order;
- a DataLoader with two worker processes gives the same items;
- the Ray Dataset gives the same items as the torch Dataset, with and without filters, feeds
  ``iter_torch_batches``, and a frame that breaks after the dataset was built fails its
  ``take_all`` with the worker's InputError naming the frame.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import av
import numpy as np
import pyarrow.compute as pc
import pytest
import torch
from corpus_factory import CorpusBuilder, make_checkpoint, synthetic_video, upload_tree
from PIL import Image

from pipeline.corpus_job import run_label_job
from pipeline.mask_dataset import (
    ITEM_KEYS,
    FrameFilter,
    TorchMaskDataset,
    collate_frames,
    ray_dataset,
)
from pipeline.run_reader import LabelRun, open_run
from schemas.label_job import LabelJobConfig
from stm_core.errors import InputError

RUN_ID = "mask-dataset-it"
MP4 = "clips/a.mp4"
# video id -> (frames, frame size, {seeded frame: objects seeded there})
VIDEOS = {
    "swan": (5, (48, 64), {0: (1, 2)}),
    MP4: (5, (64, 96), {1: (1,)}),  # frame 0 comes before the seed: an empty mask there
}


@dataclass(frozen=True)
class Labeled:
    run_uri: str
    corpus_uri: str
    builder: CorpusBuilder
    frames: dict[str, list[np.ndarray]]  # video id -> frames decoded here from the local copy


@pytest.fixture(scope="module")
def labeled(ray_local, s3_server, tmp_path_factory) -> Labeled:
    root = tmp_path_factory.mktemp("mask-dataset")
    builder = CorpusBuilder(root / "data")
    for n, (video_id, (count, size, seeds)) in enumerate(VIDEOS.items()):
        objects = max(k for ids in seeds.values() for k in ids)
        builder.add_video(video_id, synthetic_video(30 + n, count, size, objects), seeds)
    builder.write_seed_table()
    uri = upload_tree(s3_server.fs, builder.root, s3_server.uri("mask-dataset"))
    output = s3_server.uri("mask-dataset-out")
    config = LabelJobConfig.model_validate(
        {
            "corpus_uri": f"{uri}/corpus",
            "seeds_uri": f"{uri}/seeds.parquet",
            "output_uri": output,
            "run_id": RUN_ID,
            "checkpoint_uri": str(make_checkpoint(root / "ckpt.pt", seed=1)),
            "cpu_threads_per_worker": 1,
            "videos_per_shard": 1,
            "storage": {
                "endpoint_url": s3_server.endpoint_url,
                "key": "testing",
                "secret": "testing",
            },
        }
    )
    assert run_label_job(config).status == "succeeded"
    folder = sorted((builder.corpus / "JPEGImages" / "480p" / "swan").glob("*.jpg"))
    with av.open(str(builder.corpus / MP4)) as container:
        mp4 = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    frames = {"swan": [np.asarray(Image.open(p).convert("RGB")) for p in folder], MP4: mp4}
    return Labeled(f"{output}/runs/{RUN_ID}", f"{uri}/corpus", builder, frames)


def check_item(run: LabelRun, labeled: Labeled, item: dict) -> None:
    video_id, t = item["video_id"], item["frame_index"]
    assert set(ITEM_KEYS) <= set(item)
    video = run.video(video_id)
    expected = video.label_map(t)
    rows = video.rows.filter(pc.equal(video.rows["frame_index"], t)).to_pylist()
    np.testing.assert_array_equal(item["labels"], expected.labels)
    assert item["frame_name"] == expected.frame_name
    assert item["object_ids"].tolist() == list(expected.object_ids)
    np.testing.assert_allclose(item["scores"], [r["score"] for r in rows], rtol=1e-6)
    assert item["is_seed"].tolist() == [r["is_seed"] for r in rows]
    np.testing.assert_array_equal(item["image"], labeled.frames[video_id][t])
    if "masks" in item:
        np.testing.assert_array_equal(
            item["masks"], item["labels"][None] == item["object_ids"][:, None, None]
        )


def test_torch_dataset_reads_frames_and_masks_from_s3(labeled: Labeled, s3_server) -> None:
    run = open_run(labeled.run_uri, s3_server.storage)
    dataset = TorchMaskDataset(labeled.run_uri, s3_server.storage)
    assert len(dataset) == sum(count for count, _, _ in VIDEOS.values())
    keys = [(dataset[i]["video_id"], dataset[i]["frame_index"]) for i in range(len(dataset))]
    assert keys == [(v, t) for v in sorted(VIDEOS) for t in range(VIDEOS[v][0])]
    mp4_items = [i for i, (v, _) in enumerate(keys) if v == MP4]
    order = list(range(len(dataset))) + random.Random(1).sample(mp4_items, len(mp4_items))
    for i in order:  # the mp4's frames once in order, then shuffled: each is the decoded frame
        check_item(run, labeled, dataset[i])
    first = dataset[mp4_items[0]]
    assert first["frame_name"] == "000000" and not first["labels"].any()  # before the seed
    assert first["scores"].tolist() == [0.0] and first["is_seed"].tolist() == [False]
    assert dataset[mp4_items[1]]["is_seed"].tolist() == [True]

    frames_per_video = {count for count, _, _ in VIDEOS.values()}.pop()  # a batch, one size
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=frames_per_video, num_workers=2, collate_fn=collate_frames
    )
    seen = []
    for batch in loader:
        for b, (video_id, t) in enumerate(
            zip(batch["video_id"], batch["frame_index"].tolist(), strict=True)
        ):
            np.testing.assert_array_equal(batch["image"][b].numpy(), labeled.frames[video_id][t])
            seen.append((video_id, t))
    assert seen == keys


def test_ray_dataset_gives_the_torch_datasets_items(labeled: Labeled, s3_server) -> None:
    run = open_run(labeled.run_uri, s3_server.storage)
    pseudo = {"keep": FrameFilter(video_ids=[MP4], seeds="exclude"), "object_masks": True}
    for kwargs in ({}, pseudo):
        rows = ray_dataset(labeled.run_uri, s3_server.storage, **kwargs).take_all()
        rows.sort(key=lambda r: (r["video_id"], r["frame_index"]))
        items = list(TorchMaskDataset(labeled.run_uri, s3_server.storage, **kwargs))
        assert len(rows) == len(items) > 0, kwargs
        for row, item in zip(rows, items, strict=True):
            check_item(run, labeled, row)
            assert set(row) == set(item), kwargs
            for key in item:
                np.testing.assert_array_equal(row[key], item[key], err_msg=key)
    excluded = [r["frame_index"] for r in rows]
    assert excluded == [0, 2, 3, 4]  # frame 1 holds the mp4's seed

    # as docs/corpus_job.md feeds Ray Train: the array columns as torch batches
    swan = ray_dataset(labeled.run_uri, s3_server.storage, keep=FrameFilter(video_ids=["swan"]))
    batches = list(swan.select_columns(["image", "labels"]).iter_torch_batches(batch_size=2))
    assert sum(len(b["labels"]) for b in batches) == VIDEOS["swan"][0]
    assert batches[0]["image"].dtype == torch.uint8
    assert batches[0]["image"].shape[1:] == (*VIDEOS["swan"][1], 3)

    seeds_only = ray_dataset(run, keep=FrameFilter(video_ids=["swan"], seeds="only"))
    frame = f"{labeled.corpus_uri}/JPEGImages/480p/swan/00000.jpg"
    original = s3_server.fs.cat_file(frame)
    try:  # built before the frame broke: nothing was read until take_all
        s3_server.fs.pipe_file(frame, b"not a jpeg")
        # the worker's InputError reaches the driver as one (it pickles: stm_core.errors)
        with pytest.raises(InputError, match=r"00000\.jpg.*not a readable image"):
            seeds_only.take_all()
    finally:
        s3_server.fs.pipe_file(frame, original)
