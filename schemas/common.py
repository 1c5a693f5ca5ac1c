"""Pieces shared by several configs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
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


def load_settings(path: str | Path) -> dict[str, Any]:
    """A YAML or JSON file (JSON is YAML) as a dict; a clear error names the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML/JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of settings at the top level")
    return data


def apply_override(settings: dict[str, Any], assignment: str) -> None:
    """``key.sub=value`` from a command line: the value is parsed as YAML (numbers, lists,
    null) and put at the dotted key."""
    key, sep, value = assignment.partition("=")
    if not sep or not key:
        raise ValueError(f"override {assignment!r} is not of the form key=value")
    *parents, leaf = key.split(".")
    node = settings
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {assignment!r}: {part!r} is not a section")
    node[leaf] = yaml.safe_load(value)


Config = TypeVar("Config", bound=BaseModel)


def load_config(
    model: type[Config],
    path: str | Path | None,
    overrides: Sequence[str] = (),
    base: dict | None = None,
) -> Config:
    """A config of type ``model`` from a YAML/JSON file (or ``base`` settings when ``path`` is
    None) with ``key.sub=value`` overrides applied. Raises pydantic's ValidationError naming the
    field, ValueError or FileNotFoundError naming the file."""
    settings = load_settings(path) if path is not None else dict(base or {})
    for override in overrides:
        apply_override(settings, override)
    return model.model_validate(settings)
