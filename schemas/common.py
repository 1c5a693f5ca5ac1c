"""Pieces shared by several configs."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class StrictModel(BaseModel):
    """Every config rejects unknown keys and names the field in its errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class StorageOptions(StrictModel):
    """How to reach object storage. Credentials normally come from the environment or the
    boto/fsspec chain; when given here they are secrets, never printed or written to a record."""

    endpoint_url: str | None = Field(None, description="S3-compatible endpoint, e.g. for MinIO")
    key: SecretStr | None = None
    secret: SecretStr | None = None
    region: str | None = None
    anon: bool = False
