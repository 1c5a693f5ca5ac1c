"""Smoke tests of the propagation benchmarks: each runs end to end at the smallest settings.

They check the JSON contract (the fields the README table is built from) and the few numbers that
follow from the settings alone (frame counts, bank growth, which policy evicts), not speeds.
"""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest

from benchmarks import bench_memory_growth, bench_propagation_speed
from benchmarks.common import box_seed, checkpoint_identity, format_table, parse_size
from stm_core import STM, save_checkpoint

TINY = ["--size", "112x64", "--threads", "1"]


def test_box_seed_gives_each_object_its_own_disjoint_box():
    labels = box_seed(64, 112, 4)
    assert labels.shape == (64, 112) and labels.dtype == np.uint8
    assert set(np.unique(labels)) == {0, 1, 2, 3, 4}
    columns = [np.nonzero((labels == k).any(axis=0))[0] for k in range(1, 5)]
    assert all(a.max() < b.min() for a, b in zip(columns, columns[1:], strict=False))


def test_parse_size_is_width_by_height_and_table_lines_align():
    assert parse_size("854x480") == (480, 854)
    with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
        parse_size("854")
    lines = format_table(("a", "bbb"), [(1, 2), ("long cell", 3)]).splitlines()
    assert len(lines) == 4 and len({len(line) for line in lines}) == 1


@pytest.mark.parametrize("random_frames", [False, True])
def test_propagation_speed_writes_one_run_per_trunk_and_object_count(tmp_path, random_frames):
    out = tmp_path / "speed.json"
    argv = [*TINY, "--frames", "3", "--trunks", "resnet18", "--objects", "1", "2"]
    argv += ["--out", str(out)] + (["--random-frames"] if random_frames else [])
    assert bench_propagation_speed.main(argv) == 0

    result = json.loads(out.read_text())
    assert (result["height"], result["width"], result["timed_frames"]) == (64, 112, 2)
    assert result["frames_source"].startswith("random" if random_frames else "real")
    for key in ("load_average_1min", "load_average_1min_start", "cpu_count", "torch"):
        assert key in result
    assert [(r["trunk"], r["objects"]) for r in result["runs"]] == [
        ("resnet18", 1),
        ("resnet18", 2),
    ]
    for run in result["runs"]:
        assert len(run["seconds_per_frame"]) == 2  # frame 0, the seed, is not timed
        assert run["median_seconds_per_frame"] == pytest.approx(
            float(np.median(run["seconds_per_frame"]))
        )
        assert run["frames_per_second"] == pytest.approx(1 / run["median_seconds_per_frame"])
        assert run["probabilities_finite"] is True
        stages = run["median_seconds_per_stage"]
        assert set(stages) == {
            *bench_propagation_speed.STAGES,
            "other",
            "jpeg_decode",
            "rle_encode",
        }
        for name in ("query_encode", "memory_encode", "decoder", "jpeg_decode"):
            assert stages[name] > 0, name  # each stage ran on every timed frame


def test_stage_timer_charges_each_call_and_restores_the_model():
    import torch

    from benchmarks.bench_propagation_speed import StageTimer
    from stm_core import propagate

    torch.manual_seed(0)
    model = STM("resnet18").eval()
    frames = [np.full((64, 112, 3), 80 * t, np.uint8) for t in range(3)]
    timer = StageTimer(model)
    outputs = propagate(model, frames, {0: box_seed(64, 112, 2)})
    next(outputs)
    assert timer.take()["query_encode"] == 0  # the seed frame is not segmented
    next(outputs)
    frame = timer.take()
    assert frame["query_encode"] > 0 and frame["memory_encode"] > 0
    assert frame["memory_read"] > 0 and frame["decoder"] > 0
    timer.restore()
    assert "encode_query" not in vars(model)  # the class's method again
    next(outputs)
    assert timer.take() == dict.fromkeys(bench_propagation_speed.STAGES, 0.0) | {"decoder": 0.0}


def test_memory_growth_unbounded_bank_grows_and_capped_bank_does_not(tmp_path):
    out = tmp_path / "memory.json"
    # mem_every=1: every frame is permanent, so a cap of 2 evicts from frame 3 on.
    argv = [*TINY, "--lengths", "3", "7", "--caps", "none", "2", "--mem-every", "1"]
    argv += ["--tail", "3", "--in-process", "--out", str(out)]
    assert bench_memory_growth.main(argv) == 0

    result = json.loads(out.read_text())
    runs = {(r["length"], r["policy"]): r for r in result["runs"]}
    assert set(runs) == {(3, "unbounded"), (3, "cap 2"), (7, "unbounded"), (7, "cap 2")}
    # A frame is encoded into memory when the next one arrives, so an L-frame video leaves
    # frames 0..L-2 in memory: 2 and 6 entries unbounded, 2 (seed + newest) with the cap.
    assert runs[(3, "unbounded")]["final_permanent_entries"] == 2
    assert runs[(7, "unbounded")]["final_permanent_entries"] == 6
    assert runs[(7, "cap 2")]["final_permanent_entries"] == 2
    # Every entry has the same size, so the bank's size is proportional to its entry count.
    ratios = result["ratios_longest_over_shortest"]
    assert ratios["unbounded"]["peak_bank"] == pytest.approx(6 / 2)
    assert ratios["cap 2"]["peak_bank"] == pytest.approx(2 / 2)
    for run in result["runs"]:
        assert run["tail_frames"] == min(3, run["length"] - 1)
        assert run["trace"][-1]["frame"] == run["length"] - 1
        assert math.isfinite(run["median_seconds_per_frame_last"])
        assert run["peak_rss_delta_mb"] >= 0
    assert "load_average_1min_start" in result and "load_average_1min" in result


def test_memory_growth_runs_each_measurement_in_a_subprocess(tmp_path):
    out = tmp_path / "memory.json"
    argv = [*TINY, "--lengths", "2", "--caps", "1", "--out", str(out)]
    assert bench_memory_growth.main(argv) == 0
    result = json.loads(out.read_text())
    assert "subprocess" in result["driver"]
    assert [(r["length"], r["policy"]) for r in result["runs"]] == [(2, "cap 1")]


def test_checkpoint_identity_tells_two_checkpoints_apart_and_drops_the_config(tmp_path):
    paths = [tmp_path / "a.pt", tmp_path / "b.pt"]
    for step, path in enumerate(paths):
        metadata = {"version": "v9", "name": "run", "step": step, "config": {"lr": 1e-4}}
        save_checkpoint(STM("resnet18"), path, metadata, half=True)
    first, second = (checkpoint_identity(path) for path in paths)
    assert first["checkpoint"] == str(paths[0])
    assert first["checkpoint_sha256"] == hashlib.sha256(paths[0].read_bytes()).hexdigest()
    assert first["checkpoint_sha256"] != second["checkpoint_sha256"]
    assert first["checkpoint_metadata"] == {"version": "v9", "name": "run", "step": 0}
    assert second["checkpoint_metadata"]["step"] == 1


def test_adaptation_benchmark_records_both_costs(tmp_path):
    from benchmarks import bench_adaptation

    # A random ResNet-18 and 4-frame videos: the benchmark's bookkeeping is under test, not
    # the shipped model's speed (a whole-frame step of it takes seconds here), on small clips.
    checkpoint = tmp_path / "random.pt"
    save_checkpoint(STM("resnet18"), checkpoint, {"name": "random"}, half=True)
    out = tmp_path / "adaptation.json"
    argv = ["--steps", "1", "--videos", "2", "--frames", "4", "--threads", "1"]
    argv += ["--crop", "64x64", "--checkpoint", str(checkpoint), "--out", str(out)]
    assert bench_adaptation.main(argv) == 0
    result = json.loads(out.read_text())
    assert [v["name"] for v in result["videos"]] == ["synth-heldout-000000", "synth-heldout-000001"]
    assert result["adaptation"]["steps"] == 1
    assert result["adaptation"]["crop"] == [64, 64]
    assert result["frames_per_video"] == 4
    assert result["median_adapt_seconds"] > 0 and result["median_propagate_seconds"] > 0
    expected = result["median_adapt_seconds"] / result["median_propagate_seconds"]
    assert result["adapt_to_propagate_ratio"] == pytest.approx(expected)


def test_model_evaluation_scores_the_sets_asked_for(tmp_path, capsys, monkeypatch):
    """``--heldout 0`` scores the real clips only; ``--skip-real`` the held-out set only; each
    set's table is complete and the checkpoint is named."""
    from benchmarks import eval_model
    from stm_core.training.heldout import heldout_videos, save_as_davis

    checkpoint = tmp_path / "random.pt"
    save_checkpoint(STM("resnet18"), checkpoint, {"name": "random"}, half=True)
    real = tmp_path / "real"
    save_as_davis(heldout_videos(2, 3, seed_base=500), real)
    common = ["--checkpoint", str(checkpoint), "--threads", "1", "--frames", "3"]

    only_real = tmp_path / "real.json"
    argv = [*common, "--heldout", "0", "--real", str(real), "--out", str(only_real)]
    argv += ["--real-videos", "synth-heldout-000500"]  # of the two clips, only this one
    assert eval_model.main(argv) == 0
    result = json.loads(only_real.read_text())
    assert "heldout_synthetic" not in result
    assert list(result["real"]["sequences"]) == ["synth-heldout-000500"]
    score = 100 * result["real"]["sequences"]["synth-heldout-000500"]["J&F"]
    # each video's score is printed as soon as it is known (long runs show progress)
    assert f"real clips: synth-heldout-000500 J&F {score:.1f} (" in capsys.readouterr().out
    assert result["checkpoint"] == str(checkpoint) and result["adaptation"] is None

    # A run stopped part-way keeps the videos it scored (the JSON is written after each one).
    import pipeline.evaluation

    score_task = pipeline.evaluation.evaluate_task
    calls = []

    def stopped_on_the_second_video(*args, **kwargs):
        calls.append(args[1].video_id)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return score_task(*args, **kwargs)

    monkeypatch.setattr(pipeline.evaluation, "evaluate_task", stopped_on_the_second_video)
    stopped = tmp_path / "stopped.json"
    argv = [*common, "--heldout", "0", "--real", str(real), "--out", str(stopped)]
    with pytest.raises(KeyboardInterrupt):
        eval_model.main(argv)
    partial = json.loads(stopped.read_text())
    assert "real" not in partial and partial["seconds"] > 0
    assert calls == ["synth-heldout-000500", "synth-heldout-000501"]
    first = partial["unfinished"]["sequences"]
    assert first == {"synth-heldout-000500": result["real"]["sequences"]["synth-heldout-000500"]}
    monkeypatch.undo()

    only_heldout = tmp_path / "heldout.json"
    argv = [*common, "--heldout", "2", "--skip-real", "--max-side", "216"]
    assert eval_model.main([*argv, "--out", str(only_heldout)]) == 0
    result = json.loads(only_heldout.read_text())
    assert "real" not in result
    assert result["max_side"] == 216 and json.loads(only_real.read_text())["max_side"] is None
    assert len(result["heldout_synthetic"]["sequences"]) == 2
    assert 0.0 <= result["heldout_synthetic"]["mean"]["J&F"] <= 1.0


def test_training_precision_benchmark_times_both_modes(tmp_path):
    from benchmarks import bench_training_precision

    out = tmp_path / "precision.json"
    argv = ["--trunk", "resnet18", "--crop", "32", "--batch", "1", "--steps", "1"]
    assert bench_training_precision.main([*argv, "--threads", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [r["mode"] for r in result["runs"]] == ["fp32", "bf16"]
    assert all(r["median_s"] > 0 for r in result["runs"])
    assert result["runs"][0]["ratio_to_fp32"] == 1.0
    assert result["runs"][1]["ratio_to_fp32"] == pytest.approx(
        result["runs"][1]["median_s"] / result["runs"][0]["median_s"]
    )
