"""The corpus labeling job's configuration (``jobs/label_corpus.py``, ``stm-label label``)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from .common import BF16_HELP, StorageOptions, StrictModel

RUN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"


class AdaptationConfig(StrictModel):
    """First-frame fine-tuning (``stm_core.adaptation``): before a video is propagated, a copy
    of the model trains for ``steps`` steps on clips made from that video's seed frames. Off by
    default because it costs: on a CPU the default 80 steps take tens of times as long as
    propagating a short video, and a step's cost grows with the frame's pixels, not with the
    video's length (the seconds, from ``bench_adaptation``: docs/benchmarks.md)."""

    steps: int = Field(0, ge=0, le=10_000, description="0 = off; 80 is the measured setting")
    lr: float = Field(6e-5, gt=0, le=1e-2)
    batch_size: int = Field(4, ge=1, le=64, description="clips per step")
    crop: tuple[int, int] | None = Field(
        None,
        description="clip size, multiples of 16; null = the whole seed frame (every object in "
        "every clip; a step costs in proportion to the frame's pixels)",
    )
    seed: int = Field(0, ge=0, description="the clips' random seed (same seed = same labels)")
    bf16: bool | None = Field(None, description=BF16_HELP)
    lucid_prob: float = Field(
        0.5, ge=0, le=1, description="share of clips whose objects move on their own"
    )

    @field_validator("crop")
    @classmethod
    def _crop_multiple_of_16(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and any(c < 16 or c % 16 for c in value):
            raise ValueError(f"crop must be two multiples of 16 (>= 16), got {list(value)}")
        return value


class LabelJobConfig(StrictModel):
    """Everything one labeling run needs. Secrets live only in ``storage`` and are never written
    to the run record (see :meth:`public_dump`)."""

    corpus_uri: str = Field(description="videos: local path, file://, s3://, gs://")
    seeds_uri: str | None = Field(
        None, description="seed source; default: the corpus layout's annotation PNGs"
    )
    seeds_format: Literal["auto", "masks", "coco", "parquet"] = "auto"
    output_uri: str = Field(description="where masks/, errors/ and runs/ are written")
    run_id: str = Field(description="same id = resume / no-op; new id = a new run")
    checkpoint_uri: str | None = Field(
        None,
        description="default: the data engine's promoted checkpoint in output_uri if there is "
        "one, else the shipped model",
    )
    video_ids: list[str] | None = Field(
        None, min_length=1, description="label only these videos of the corpus (default: all)"
    )
    corrections_uri: str | None = Field(
        None, description="folder of corrections tables, applied as seeds on their frames"
    )
    workers: int | None = Field(None, ge=1, description="default: one per GPU, else 1")
    gpus_per_worker: float = Field(1.0, gt=0, le=8)
    cpu_threads_per_worker: int = Field(1, ge=1, le=256)
    max_frame_side: int | None = Field(None, ge=32, description="downscale larger frames")
    mem_every: int = Field(5, ge=1)
    max_memory_frames: int | None = Field(20, ge=1, description="None = unbounded (release)")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32",
        description="autocast of the network: fp32 (release arithmetic), bf16 (CUDA or a CPU "
        "with native bf16), fp16 (CUDA only); masks and probabilities are float32 either way",
    )
    videos_per_shard: int = Field(4, ge=1)
    videos_per_batch: int = Field(
        1,
        ge=1,
        le=64,
        description="videos of a shard a worker propagates together through one model (one "
        "batched network call per step, frames grouped by size); the rows are those of one at "
        "a time; > 1 needs adaptation off",
    )
    adaptation: AdaptationConfig = Field(default_factory=AdaptationConfig)
    storage: StorageOptions = Field(default_factory=StorageOptions)

    @field_validator("run_id")
    @classmethod
    def _run_id_is_a_path_segment(cls, value: str) -> str:
        if not re.match(RUN_ID_PATTERN, value):
            raise ValueError(
                f"run_id must match {RUN_ID_PATTERN} (letters, digits, '_', '.', '-'), "
                f"got {value!r}"
            )
        return value

    @model_validator(mode="after")
    def _batching_needs_one_model(self) -> LabelJobConfig:
        if self.videos_per_batch > 1 and self.adaptation.steps > 0:
            raise ValueError(
                f"videos_per_batch {self.videos_per_batch} needs adaptation.steps 0 (got "
                f"{self.adaptation.steps}): fine-tuning makes a model per video, and the videos "
                "of a batch share one model; set videos_per_batch: 1 or adaptation.steps: 0"
            )
        return self

    def public_dump(self) -> dict:
        """The config as JSON-able data without credentials, for run records and logs."""
        data = self.model_dump(mode="json", exclude={"storage": {"key", "secret"}})
        return data
