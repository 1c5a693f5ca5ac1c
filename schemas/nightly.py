"""The nightly data engine's configuration (``jobs/nightly.py``, ``stm-label nightly``) and the
JSON documents it keeps in the store: the nightly run record, the promoted-checkpoint pointer
and the lock.

The store (``store_uri``) is one folder or bucket prefix: it is the labeling job's output (its
``masks/``, ``errors/`` and ``runs/``) and holds the engine's own state beside it, see
:mod:`pipeline.engine.layout`.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import Field, field_validator

from .common import BF16_HELP, StorageOptions, StrictModel
from .label_job import RUN_ID_PATTERN, LabelJobConfig


class LabelOptions(StrictModel):
    """How the nightly labeling step runs: each field is the :class:`LabelJobConfig` field of
    the same name, passed on as it is (a test checks every one exists there)."""

    workers: int | None = Field(None, ge=1)
    gpus_per_worker: float = Field(1.0, gt=0, le=8)
    cpu_threads_per_worker: int = Field(1, ge=1, le=256)
    max_frame_side: int | None = Field(None, ge=32)
    mem_every: int = Field(5, ge=1)
    max_memory_frames: int | None = Field(20, ge=1)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    videos_per_shard: int = Field(4, ge=1)
    videos_per_batch: int = Field(1, ge=1, le=64)


class SelectionConfig(StrictModel):
    """Which labeled masks become training data. A frame is used only when every object on it
    passes: seeds and corrections always do; a pseudo-label needs ``score >= min_score`` (an
    empty mask passes when the object is absent from the neighbouring frames too) and an IoU of
    at least ``min_consistency`` with the same object's mask on the previous and next frames."""

    pseudo_labels: bool = True
    min_score: float = Field(0.85, ge=0.0, le=1.0)
    min_consistency: float = Field(0.7, ge=0.0, le=1.0)
    max_frames_per_video: int | None = Field(
        None, ge=3, description="keep this many selected frames per video, evenly spread"
    )


class FineTuneConfig(StrictModel):
    """The fine-tuning stage (a :class:`schemas.training.TrainConfig` of stage ``video``,
    initialised from the promoted checkpoint)."""

    steps: int = Field(300, ge=1)
    batch_size: int = Field(4, ge=1)
    crop: tuple[int, int] = (192, 192)
    lr: float = Field(5e-5, gt=0)
    warmup_steps: int = Field(20, ge=0)
    freeze_bn: bool = False
    bf16: bool | None = Field(None, description=BF16_HELP)
    max_skip: int = Field(5, ge=0, description="largest frame skip between selected frames")
    synthetic_prob: float = Field(
        0.25, ge=0.0, lt=1.0, description="share of synthetic clips, so old skills are kept"
    )
    max_frame_side: int | None = Field(480, ge=32, description="decode corpus frames this big")
    checkpoint_every: int = Field(50, ge=1)
    workers: int = Field(1, ge=1)
    use_gpu: bool = False
    threads_per_worker: int | None = Field(None, ge=1)
    seed: int = 0


class GateConfig(StrictModel):
    """Promotion rule: the candidate's held-out J&F must beat the promoted checkpoint's by at
    least ``margin`` (in J&F points of 0..100, as the docs report them)."""

    margin: float = Field(0.5, ge=-100, le=100)
    mem_every: int = Field(5, ge=1)
    max_memory_frames: int | None = Field(20, ge=1)
    num_cpus: float = Field(1.0, gt=0, description="per evaluation task (GPU clusters: 1 GPU)")


class NightlyConfig(StrictModel):
    """One night of the data engine: label -> select -> fine-tune -> gate -> promote."""

    store_uri: str = Field(description="labeling output + engine state (local, s3://)")
    corpus_uri: str
    seeds_uri: str | None = None
    seeds_format: Literal["auto", "masks", "coco", "parquet"] = "auto"
    heldout_uri: str = Field(description="ground-truth videos in DAVIS layout for the gate")
    run_id: str | None = Field(None, description="default: nightly-<UTC date>")
    relabel: Literal["changed", "stale"] = Field(
        "stale",
        description="changed: new, changed or corrected videos; stale: also videos labeled by "
        "a checkpoint other than the promoted one",
    )
    initial_checkpoint_uri: str | None = Field(
        None, description="the registry's root when the store has none; default: shipped model"
    )
    lock_ttl_seconds: float = Field(900.0, ge=1.0, description="a crashed run's lock expires")
    label: LabelOptions = Field(default_factory=LabelOptions)
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    train: FineTuneConfig = Field(default_factory=FineTuneConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    storage: StorageOptions = Field(default_factory=StorageOptions)

    @field_validator("run_id")
    @classmethod
    def _run_id_is_a_path_segment(cls, value: str | None) -> str | None:
        return LabelJobConfig._run_id_is_a_path_segment(value) if value is not None else None

    @property
    def resolved_run_id(self) -> str:
        return self.run_id or f"nightly-{dt.datetime.now(dt.UTC):%Y-%m-%d}"

    def public_dump(self) -> dict:
        """The config as JSON-able data without credentials, for records and logs."""
        return self.model_dump(mode="json", exclude={"storage": {"key", "secret"}})


NightlyStatus = Literal["running", "succeeded", "failed"]


class NightlyRecord(StrictModel):
    """``nightly/<run_id>.json``: a nightly run's progress and outcome. Rewritten after every
    step, so a resubmitted run skips the steps already done."""

    model_config = StrictModel.model_config | {"frozen": False}

    run_id: str
    status: NightlyStatus = "running"
    started_at: dt.datetime
    finished_at: dt.datetime | None = None
    parent_checkpoint_id: str | None = None
    parent_uri: str | None = None
    label_run_id: str | None = None
    videos_labeled: int | None = None
    label_reasons: dict[str, int] = Field(default_factory=dict)
    label_video_ids: list[str] = Field(default_factory=list)
    selection_id: str | None = None
    selected_masks: int | None = None
    selected_frames: int | None = None
    training_name: str | None = None
    candidate_id: str | None = None
    candidate_uri: str | None = None
    candidate_jf: float | None = None
    candidate_j: float | None = None
    candidate_f: float | None = None
    parent_jf: float | None = None
    promoted: bool | None = None
    reason: str | None = None
    step_seconds: dict[str, float] = Field(default_factory=dict)
    error: str | None = None
    config: dict = Field(default_factory=dict)

    @field_validator("run_id")
    @classmethod
    def _run_id_ok(cls, value: str) -> str:
        import re

        if not re.match(RUN_ID_PATTERN, value):
            raise ValueError(f"run_id must match {RUN_ID_PATTERN}, got {value!r}")
        return value


class PromotedPointer(StrictModel):
    """``checkpoints/promoted.json``: the checkpoint labeling uses by default."""

    checkpoint_id: str
    uri: str
    promoted_at: dt.datetime
    nightly_run_id: str | None = None


class LockDocument(StrictModel):
    """``nightly/LOCK``: who runs the engine on this store, until when unless renewed."""

    owner: str
    host: str
    pid: int
    acquired_at: dt.datetime
    expires_at: dt.datetime
