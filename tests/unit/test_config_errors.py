"""Config mistakes are named key by key, with a "did you mean" for a misspelled key, and no
value given in the config is ever printed: pydantic's own message echoed the whole input, a
``storage`` block's secret included (issue: secrets never printed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from jobs import cli, label_corpus, nightly
from schemas.common import ConfigError, load_config
from schemas.label_job import LabelJobConfig
from schemas.nightly import NightlyConfig
from schemas.training import TrainConfig

SECRET = "SUPERSECRET123"
KEY = "AKIAEXAMPLEKEY42"
STORAGE = {"endpoint_url": "http://127.0.0.1:9", "key": KEY, "secret": SECRET}


def write(tmp_path: Path, settings: dict) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def test_a_misspelled_key_is_named_with_the_key_it_resembles_and_no_value(tmp_path):
    path = write(
        tmp_path,
        {
            "corpus_uri": "s3://bucket/corpus",
            "output_url": "s3://bucket/out",
            "run_id": "r1",
            "storage": {**STORAGE, "regoin": "eu-west-1"},
        },
    )
    with pytest.raises(ConfigError) as caught:
        load_config(LabelJobConfig, path)
    message = str(caught.value)
    assert str(path) in message
    assert "output_url: unknown key (did you mean 'output_uri'?)" in message
    assert "storage.regoin: unknown key (did you mean 'storage.region'?)" in message
    assert "output_uri: Field required" in message
    for value in (SECRET, KEY, "s3://bucket/out", "eu-west-1"):
        assert value not in message


def test_bad_values_name_the_key_and_the_rule_not_the_value():
    overrides = ["crop=[30,30]", "data.folder_prob=3", f"storage.secret={SECRET}", "steps=x"]
    with pytest.raises(ConfigError) as caught:
        load_config(TrainConfig, None, overrides)
    message = str(caught.value)
    assert "crop: crop sides must be multiples of 16" in message
    assert "data.folder_prob: Input should be less than or equal to 1" in message
    assert "steps: Input should be a valid integer" in message
    assert SECRET not in message


def test_a_key_like_nothing_known_gets_no_guess():
    with pytest.raises(ConfigError, match=r"zzzz: unknown key$"):
        load_config(TrainConfig, None, ["zzzz=1"])


BAD = {"output_url": "s3://bucket/out", "storage": STORAGE}


@pytest.mark.parametrize(
    ("entrypoint", "settings"),
    [
        (label_corpus.main, {"corpus_uri": "s3://b/c", "run_id": "r1", **BAD}),
        (nightly.main, {"store_uri": "s3://b/s", "corpus_uri": "s3://b/c", **BAD}),
        (lambda argv: cli.main(["train", *argv]), {"name": "x", **BAD}),
    ],
    ids=["label_corpus", "nightly", "stm-label train"],
)
def test_entrypoints_exit_2_with_one_message_and_never_print_the_secret(
    tmp_path, capsys, entrypoint, settings
):
    code = entrypoint(["--config", str(write(tmp_path, settings))])
    out, err = capsys.readouterr()
    assert code == 2
    assert "output_url: unknown key" in err
    assert "Traceback" not in err
    assert SECRET not in out + err and KEY not in out + err


def test_the_nightly_config_names_nested_sections():
    with pytest.raises(
        ConfigError, match=r"train\.stpes: unknown key \(did you mean 'train\.steps'"
    ):
        load_config(NightlyConfig, None, ["store_uri=/s", "corpus_uri=/c", "train.stpes=3"])


def test_the_job_precision_is_one_of_three_modes(tmp_path):
    base = {"corpus_uri": "/c", "output_uri": "/o", "run_id": "r1"}
    assert load_config(LabelJobConfig, write(tmp_path, base)).precision == "fp32"
    config = load_config(LabelJobConfig, write(tmp_path, {**base, "precision": "bf16"}))
    assert config.precision == "bf16"
    with pytest.raises(ConfigError, match="precision: Input should be 'fp32', 'bf16' or 'fp16'"):
        load_config(LabelJobConfig, write(tmp_path, {**base, "precision": "int8"}))


def test_the_nightly_label_options_are_job_fields_with_the_jobs_defaults():
    """The nightly label step passes its options on as job fields by name: each must be a job
    field, with the job's default, so a nightly run labels as the same job config would."""
    from schemas.nightly import LabelOptions

    job_fields = LabelJobConfig.model_fields
    for name, field in LabelOptions.model_fields.items():
        assert name in job_fields, name
        assert field.default == job_fields[name].default, name
    assert {"precision", "videos_per_batch"} <= set(LabelOptions.model_fields)
