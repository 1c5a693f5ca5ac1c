"""``stm-label export|preview|correct|history`` reach an S3-compatible store the way the job does
(issue 19): ``--storage-endpoint`` (and ``--storage-region``, ``--storage-anon``), ``--config``
to reuse a job config's ``storage`` block, or the environment.

The run lives on S3 on loopback (moto) and was labelled by a job that found its endpoint in the
environment, so its record's ``storage`` names none: without the command's own settings neither
the run nor its corpus (which preview reads frames from) can be reached. The fake credentials
come from the environment (``aws_test_env``) unless a test's ``--config`` gives them.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import yaml
from corpus_factory import CorpusBuilder, synthetic_video, upload_tree
from PIL import Image

from jobs.cli import main
from pipeline import ledger, rle
from pipeline.engine import registry
from pipeline.engine.corrections import read_corrections
from pipeline.engine.layout import EngineLayout
from schemas.nightly import PromotedPointer
from schemas.tables import ERRORS, MASKS, MaskRow
from stm_core.io import read_mask

RUN = "cli-1"
VIDEO = synthetic_video(7, 3)  # 48 x 64 frames, objects 1 and 2
CHECKPOINT = "sha256:" + "c" * 16


@pytest.fixture(scope="module")
def store(s3_server, tmp_path_factory) -> str:
    """A committed run of video ``v`` (DAVIS layout, seed table) on S3; returns the store URI
    (the run's output, ``<store>/runs/cli-1``), with a registry row and a promoted pointer."""
    builder = CorpusBuilder(tmp_path_factory.mktemp("cli-storage"))
    builder.add_video("v", VIDEO, {0: (1, 2)})
    builder.write_seed_table()
    base = upload_tree(s3_server.fs, builder.root, s3_server.uri("cli-storage"))
    output, options = f"{base}/out", s3_server.storage
    plan = ledger.save_plan(output, ledger.make_plan(RUN, ["v"], 1), options)
    rows = [
        MaskRow(
            run_id=RUN,
            video_id="v",
            frame_index=i,
            frame_name=f"{i:05d}",
            object_id=m.object_id,
            height=labels.shape[0],
            width=labels.shape[1],
            rle=m.rle,
            area=m.area,
            bbox=m.bbox,
            score=1.0 if i == 0 else 0.8,
            is_seed=i == 0,
            checkpoint_id=CHECKPOINT,
        )
        for i, labels in enumerate(VIDEO.labels)
        for m in rle.encode_label_map(labels, [1, 2])
    ]
    ledger.write_shard(output, RUN, plan.shards[0].name, MASKS.table(rows), ERRORS.empty(), options)
    config = {
        "corpus_uri": f"{base}/corpus",
        "seeds_uri": f"{base}/seeds.parquet",
        "seeds_format": "parquet",
        "storage": {"anon": False, "endpoint_url": None, "region": None},  # as the job records
    }
    record = {"config": config, "checkpoint_id": CHECKPOINT, "status": "succeeded"}
    ledger.write_run_record(output, RUN, record, options)
    ledger.mark_success(output, RUN, options)
    layout = EngineLayout(output)
    registry.register(layout, "root-0000", registry.root_row(CHECKPOINT, "m.pt"), options)
    pointer = PromotedPointer(checkpoint_id=CHECKPOINT, uri="m.pt", promoted_at=plan.created_at)
    registry.write_promoted(layout, pointer, options)
    return output


def test_export_with_storage_endpoint(s3_server, store, tmp_path) -> None:
    out = tmp_path / "davis"
    argv = ["export", "--run", f"{store}/runs/{RUN}", "--format", "davis", "--out", str(out)]
    assert main([*argv, "--storage-endpoint", s3_server.endpoint_url]) == 0
    for i, labels in enumerate(VIDEO.labels):
        np.testing.assert_array_equal(read_mask(out / "v" / f"{i:05d}.png"), labels)


def test_preview_reads_the_run_and_its_corpus_with_storage_endpoint(
    s3_server, store, tmp_path
) -> None:
    out = tmp_path / "v.gif"
    argv = ["preview", "--run", f"{store}/runs/{RUN}", "--video", "v", "--out", str(out)]
    assert main([*argv, "--storage-endpoint", s3_server.endpoint_url]) == 0
    with Image.open(out) as gif:
        assert gif.n_frames == len(VIDEO.frames)
        assert gif.size == (VIDEO.size[1], VIDEO.size[0])
    assert (tmp_path / "v_sheet.png").is_file()


def test_correct_with_storage_endpoint(s3_server, store, tmp_path, capsys) -> None:
    mask = tmp_path / "fix.png"
    fixed = VIDEO.labels[1].copy()
    fixed[fixed == 2] = 0  # object 2 erased on frame 1
    buffer = io.BytesIO()
    Image.fromarray(fixed).save(buffer, format="PNG")
    mask.write_bytes(buffer.getvalue())
    argv = ["correct", "--run", f"{store}/runs/{RUN}", "--video", "v", "--frame", "1"]
    argv += ["--mask", str(mask), "--author", "ann"]
    assert main([*argv, "--storage-endpoint", s3_server.endpoint_url]) == 0
    assert "stored 2 correction(s)" in capsys.readouterr().out
    stored = read_corrections(f"{store}/corrections", s3_server.storage)
    assert stored["author"].to_pylist() == ["ann", "ann"]
    assert stored["object_id"].to_pylist() == [1, 2]


def test_history_with_storage_endpoint(s3_server, store, capsys) -> None:
    argv = ["history", "--store", store, "--json"]
    assert main([*argv, "--storage-endpoint", s3_server.endpoint_url]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["promoted"]["checkpoint_id"] == CHECKPOINT
    assert [c["checkpoint_id"] for c in doc["checkpoints"]] == [CHECKPOINT]


def test_config_reuses_a_job_storage_block_and_flags_override_it(
    s3_server, store, tmp_path, capsys
) -> None:
    """``--config job.yaml``: the block's endpoint and credentials are used (and never printed);
    a ``--storage-endpoint`` flag replaces the block's endpoint."""
    secret = "SUPERSECRET123"  # moto accepts any key pair
    job = {
        "corpus_uri": "s3://elsewhere/corpus",
        "output_uri": store,
        "run_id": "x",
        "storage": {"endpoint_url": s3_server.endpoint_url, "key": "AKIAX", "secret": secret},
    }
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(job))
    assert main(["history", "--store", store, "--json", "--config", str(config)]) == 0
    assert json.loads(capsys.readouterr().out)["promoted"]["checkpoint_id"] == CHECKPOINT

    job["storage"]["endpoint_url"] = "http://127.0.0.1:9"  # nothing listens there
    config.write_text(yaml.safe_dump(job))
    assert main(["history", "--store", store, "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "http://127.0.0.1:9 unreachable" in err and secret not in err
    argv = ["history", "--store", store, "--config", str(config), "--json"]
    assert main([*argv, "--storage-endpoint", s3_server.endpoint_url]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["checkpoints"] and secret not in out + err

    job["storage"]["regoin"] = "eu-west-1"
    config.write_text(yaml.safe_dump(job))
    assert main(["history", "--store", store, "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "regoin: unknown key (did you mean 'region'?)" in err
    assert secret not in err and "eu-west-1" not in err


def test_the_endpoint_can_come_from_the_environment(s3_server, store, capsys, monkeypatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.endpoint_url)
    assert main(["history", "--store", store, "--json", "--storage-region", "us-east-1"]) == 0
    assert json.loads(capsys.readouterr().out)["promoted"]["checkpoint_id"] == CHECKPOINT
