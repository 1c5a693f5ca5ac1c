"""What a labeling run takes from the data engine's store (pipeline.engine.run_inputs), and the
corpus job's refusal to guess it: the default checkpoint is the store's promoted one, else the
shipped model; corrections are read when the job asks, not when the run is set up."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest

from pipeline.corpus_job import JobConfigError, run_label_job
from pipeline.engine.corrections import correction_rows, write_corrections
from pipeline.engine.layout import EngineLayout
from pipeline.engine.registry import write_promoted
from pipeline.engine.run_inputs import resolve_label_inputs
from schemas.label_job import LabelJobConfig
from schemas.nightly import PromotedPointer
from schemas.tables import checkpoint_id_of
from stm_core.assets import V4_CHECKPOINT_NAME, asset_path, default_checkpoint_path

SHIPPED = default_checkpoint_path()
V4 = asset_path(V4_CHECKPOINT_NAME)
pytestmark = pytest.mark.skipif(
    SHIPPED is None or V4 is None, reason="this installation ships no models"
)


def job(store: Path, **changes: object) -> LabelJobConfig:
    return LabelJobConfig.model_validate(
        {"corpus_uri": str(store / "corpus"), "output_uri": str(store), "run_id": "r1", **changes}
    )


def test_the_default_checkpoint_is_the_promoted_one_else_the_shipped_one(tmp_path: Path) -> None:
    assert SHIPPED is not None and V4 is not None
    shipped_id, v4_id = checkpoint_id_of(SHIPPED.read_bytes()), checkpoint_id_of(V4.read_bytes())
    assert resolve_label_inputs(job(tmp_path)).checkpoint[1] == shipped_id

    pointer = PromotedPointer(checkpoint_id=v4_id, uri=str(V4), promoted_at=dt.datetime.now(dt.UTC))
    write_promoted(EngineLayout(str(tmp_path)), pointer, None)
    data, checkpoint_id = resolve_label_inputs(job(tmp_path)).checkpoint
    assert (data, checkpoint_id) == (V4.read_bytes(), v4_id)
    # a named checkpoint wins over the promoted one
    named = resolve_label_inputs(job(tmp_path, checkpoint_uri=str(SHIPPED)))
    assert named.checkpoint[1] == shipped_id


def test_corrections_are_read_when_the_job_asks_for_them(tmp_path: Path) -> None:
    folder = EngineLayout(str(tmp_path)).corrections_dir
    assert resolve_label_inputs(job(tmp_path)).corrections is None
    inputs = resolve_label_inputs(job(tmp_path, corrections_uri=folder))
    assert inputs.corrections is not None

    labels = np.zeros((8, 8), np.uint8)
    labels[2:5, 3:6] = 1
    write_corrections(folder, correction_rows("v", 4, labels, [1], "ann"), None)
    fixes = inputs.corrections()  # stored after the run was set up, still used
    assert list(fixes) == ["v"]
    assert [(s.frame_index, s.object_id) for s in fixes["v"]] == [(4, 1)]


def test_the_job_refuses_engine_state_it_was_not_given(tmp_path: Path) -> None:
    with pytest.raises(JobConfigError, match="checkpoint_uri is unset"):
        run_label_job(job(tmp_path))
    with pytest.raises(JobConfigError, match="corrections_uri"):
        run_label_job(job(tmp_path, corrections_uri=str(tmp_path)), checkpoint=(b"", "sha256:0"))
