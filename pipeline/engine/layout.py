"""Where the data engine keeps its state under the store URI (pure string work, no IO).

::

    masks/ errors/ runs/                   the labeling runs (pipeline.ledger)
    corrections/<hash>.parquet             human corrections, one file per `stm-label correct`
    selections/<nightly id>.parquet        the training data each nightly run selected
    training/<nightly id>-finetune/        Ray Train's run folder (checkpoints, resumable)
    checkpoints/models/<hex>.pt            registered model files, named by content
    checkpoints/registry/<name>.parquet    the checkpoints table, one row per file, write-once
    checkpoints/promoted.json              the pointer labeling reads by default
    nightly/<nightly id>.json              nightly run records (the runs history)
    nightly/LOCK                           held while a nightly run works on the store
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EngineLayout:
    store_uri: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "store_uri", self.store_uri.rstrip("/"))

    @property
    def corrections_dir(self) -> str:
        return f"{self.store_uri}/corrections"

    @property
    def selections_dir(self) -> str:
        return f"{self.store_uri}/selections"

    def selection_uri(self, selection_id: str) -> str:
        return f"{self.selections_dir}/{selection_id}.parquet"

    @property
    def training_dir(self) -> str:
        return f"{self.store_uri}/training"

    @property
    def models_dir(self) -> str:
        return f"{self.store_uri}/checkpoints/models"

    def model_uri(self, checkpoint_id: str) -> str:
        return f"{self.models_dir}/{checkpoint_id.removeprefix('sha256:')}.pt"

    @property
    def registry_dir(self) -> str:
        return f"{self.store_uri}/checkpoints/registry"

    def registry_file(self, name: str) -> str:
        return f"{self.registry_dir}/{name}.parquet"

    @property
    def promoted_uri(self) -> str:
        return f"{self.store_uri}/checkpoints/promoted.json"

    @property
    def nightly_dir(self) -> str:
        return f"{self.store_uri}/nightly"

    def nightly_record_uri(self, run_id: str) -> str:
        return f"{self.nightly_dir}/{run_id}.json"

    @property
    def lock_uri(self) -> str:
        return f"{self.nightly_dir}/LOCK"
