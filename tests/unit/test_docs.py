"""The README and docs/ stay true to the code: every config key is documented where its config
is, every CLI subcommand is in the README's synopsis, and every docs/ link resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from jobs.cli import build_parser
from schemas.label_job import LabelJobConfig
from schemas.nightly import NightlyConfig
from schemas.training import TrainConfig

REPO = Path(__file__).resolve().parents[2]


def keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted keys of a config, down into nested config sections."""
    out = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        section = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        if section and name != "storage":  # storage: one block, documented under object stores
            out += keys(annotation, f"{prefix}{name}.")
        else:
            out.append(prefix + name)
    return out


@pytest.mark.parametrize(
    ("model", "doc"),
    [
        (LabelJobConfig, "docs/corpus_job.md"),
        (TrainConfig, "docs/training.md"),
        (NightlyConfig, "docs/data_engine.md"),
    ],
)
def test_every_config_key_is_documented(model: type[BaseModel], doc: str) -> None:
    text = (REPO / doc).read_text()
    leaf = model is not TrainConfig  # the training table writes data.* keys in full
    missing = [k for k in keys(model) if (k.rsplit(".", 1)[-1] if leaf else k) not in text]
    assert not missing, f"{doc} does not mention {missing}"


def test_every_cli_subcommand_is_in_the_readme_synopsis() -> None:
    readme = (REPO / "README.md").read_text()
    parser = build_parser()
    subcommands = next(a for a in parser._actions if a.dest == "command").choices
    missing = [name for name in subcommands if f"stm-label {name}" not in readme]
    assert not missing, missing


def test_the_readme_gives_the_two_commands_and_ci_runs_the_test_command() -> None:
    readme = (REPO / "README.md").read_text()
    assert "bash scripts/demo.sh" in readme and "bash scripts/test.sh" in readme
    assert "scripts/test.sh" in (REPO / ".ci" / "run").read_text()


def test_relative_links_in_readme_and_docs_resolve() -> None:
    broken = []
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(REPO)} -> {target}")
    assert not broken, broken
