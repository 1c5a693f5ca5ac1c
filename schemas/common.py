"""Pieces shared by several configs."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

BF16_HELP = (
    "bfloat16 autocast in the forward pass; null (the default) = where the device computes "
    "bfloat16 natively (CUDA, CPUs with AMX or AVX-512 BF16): where it is emulated, as on an "
    "AVX2-only CPU, a training step is many times slower than in float32"
)


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


class ConfigError(ValueError):
    """A config that does not validate. Its message names every bad key and what is wrong with
    it, and never the values given: pydantic's own message echoes the input (a whole ``storage``
    block with its secret, for one misspelled key), which a terminal or a job log would keep."""


def load_config(
    model: type[Config],
    path: str | Path | None,
    overrides: Sequence[str] = (),
    base: dict | None = None,
) -> Config:
    """A config of type ``model`` from a YAML/JSON file (or ``base`` settings when ``path`` is
    None) with ``key.sub=value`` overrides applied. Raises :class:`ConfigError` naming each bad
    key (without its value), ValueError or FileNotFoundError naming the file."""
    settings = load_settings(path) if path is not None else dict(base or {})
    for override in overrides:
        apply_override(settings, override)
    try:
        return model.model_validate(settings)
    except ValidationError as exc:
        where = f"{path}: " if path is not None else ""
        raise ConfigError(where + describe_validation_error(exc, model)) from None


def describe_validation_error(exc: ValidationError, model: type[BaseModel]) -> str:
    """One ``key.path: problem`` line per error, with "did you mean" for a misspelled key, and
    no input values (``include_input=False``; the messages of our own validators name only
    non-secret settings)."""
    lines = []
    for error in exc.errors(include_input=False, include_url=False):
        loc = [str(part) for part in error["loc"]]
        key = ".".join(loc) or "(top level)"
        if error["type"] == "extra_forbidden":
            known = _field_names(model, loc[:-1])
            close = difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.6)
            hint = f" (did you mean {'.'.join([*loc[:-1], close[0]])!r}?)" if close else ""
            lines.append(f"{key}: unknown key{hint}")
        else:
            message = str(error["msg"]).removeprefix("Value error, ")
            lines.append(f"{key}: {message}")
    plural = "s" if len(lines) > 1 else ""
    return f"{len(lines)} problem{plural} in the {model.__name__}: " + "; ".join(lines)


def _field_names(model: type[BaseModel], path: Sequence[str]) -> list[str]:
    """The keys allowed at ``path`` inside ``model`` (empty if the path leaves the models)."""
    current: Any = model
    for part in path:
        field = current.model_fields.get(part) if _is_model(current) else None
        if field is None:
            return []
        current = next(
            (t for t in (field.annotation, *get_args(field.annotation)) if _is_model(t)), None
        )
    return list(current.model_fields) if _is_model(current) else []


def _is_model(candidate: Any) -> bool:
    return isinstance(candidate, type) and issubclass(candidate, BaseModel)
