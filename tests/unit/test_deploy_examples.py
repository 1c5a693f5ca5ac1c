"""The scheduling examples under deploy/ stay valid: every YAML parses, the shell scripts pass
``bash -n`` (and shellcheck where it is installed), and they all start jobs/nightly.py with flags
its parser accepts. The submit script's logic against a live cluster (job states, retries) was
checked by hand against a local Ray 2.60 cluster; here it runs only as far as it gets without
one: its usage errors."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from jobs.nightly import build_parser
from schemas.nightly import NightlyConfig

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
SUBMIT = DEPLOY / "cron" / "submit_nightly.sh"
IMAGE_REPO = "/opt/stm-label/"  # where the examples expect the repository (image, cron host)
YAMLS = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))
SCRIPTS = sorted(DEPLOY.rglob("*.sh"))


def _docs(name: str) -> list[dict]:
    return list(yaml.safe_load_all((DEPLOY / "k8s" / name).read_text()))


def _one(name: str, kind: str) -> dict:
    docs = [d for d in _docs(name) if d["kind"] == kind]
    assert len(docs) == 1, f"{name}: expected one {kind}"
    return docs[0]


def _in_repo(path: str) -> Path:
    """A path the examples use inside the image / on the cron host, mapped to this checkout."""
    assert path.startswith(IMAGE_REPO), path
    return REPO / path.removeprefix(IMAGE_REPO)


def test_the_examples_exist() -> None:
    names = {p.relative_to(DEPLOY).as_posix() for p in [*YAMLS, *SCRIPTS]}
    assert {
        "cron/submit_nightly.sh",
        "k8s/nightly-configmap.yaml",
        "k8s/nightly-rayjob-cronjob.yaml",
        "k8s/nightly-rayjob.yaml",
        "k8s/nightly-scheduled-rayjob.yaml",
    } <= names
    assert (DEPLOY / "cron" / "crontab.example").is_file() and (DEPLOY / "README.md").is_file()


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_every_yaml_parses_into_kubernetes_objects(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path}: no document"
    for doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= doc.keys(), path
        assert doc["metadata"]["name"], path


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_scripts_are_valid_bash_and_start_the_nightly_job(path: Path) -> None:
    subprocess.run(["bash", "-n", str(path)], check=True, capture_output=True, text=True)
    assert os.access(path, os.X_OK), f"{path} is not executable"
    text = path.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
    assert "jobs/nightly.py" in text


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_scripts_pass_shellcheck(path: Path) -> None:
    result = subprocess.run(["shellcheck", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_the_submit_script_passes_flags_the_nightly_job_accepts() -> None:
    text = SUBMIT.read_text()
    for piece in (
        "RUN_ID=nightly-$RUN_DATE",
        "$(date -u +%F)",
        'ray_job status "$id"',
        '--submission-id "$submission_id"',
        '--working-dir "$REPO_DIR"',
        "--no-wait",
        'jobs/nightly.py --config "$CONFIG" "${SETS[@]}"',
        'SETS=(--set "run_id=$RUN_ID")',
        "$RUN_ID-retry-$attempt",
    ):
        assert piece in text, piece
    args = build_parser().parse_args(
        ["--config", "configs/nightly.yaml", "--set", "run_id=nightly-2026-11-26", "--set", "a=1"]
    )
    assert args.set == ["run_id=nightly-2026-11-26", "a=1"]


def _submit(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RUN_DATE")}
    environ["RAY_BIN"] = str(Path(sys.executable).parent / "ray")
    return subprocess.run(
        ["bash", str(SUBMIT), *args], env=environ | env, capture_output=True, text=True
    )


def test_the_submit_script_reports_usage_errors_before_asking_any_cluster(
    tmp_path: Path,
) -> None:
    config = tmp_path / "nightly.yaml"
    config.write_text("store_uri: x\n")
    unreachable = {"RAY_ADDRESS": "http://127.0.0.1:9"}
    result = _submit()
    assert result.returncode == 2 and "submit_nightly.sh CONFIG.yaml" in result.stdout
    assert _submit("--help").returncode == 0
    result = _submit(str(config))
    assert result.returncode == 2 and "set RAY_ADDRESS" in result.stderr
    result = _submit(str(config), "run_id=nightly-x", **unreachable)
    assert result.returncode == 2 and "run_id is set by this script" in result.stderr
    result = _submit(str(config), "not-an-assignment", **unreachable)
    assert result.returncode == 2 and "KEY=VALUE" in result.stderr
    result = _submit(str(config), RUN_DATE="26.11.2026", **unreachable)
    assert result.returncode == 2 and "RUN_DATE" in result.stderr


def test_the_crontab_line_calls_the_script_at_02_15() -> None:
    lines = [
        line
        for line in (DEPLOY / "cron" / "crontab.example").read_text().splitlines()
        if line.strip() and not line.startswith("#") and "=" not in line.split()[0]
    ]
    assert len(lines) == 1
    fields = lines[0].split()
    assert fields[:5] == ["15", "2", "*", "*", "*"]
    assert _in_repo(fields[5]) == SUBMIT and fields[6].endswith(".yaml")


def test_the_cronjob_submits_with_the_script_to_the_head_service() -> None:
    cronjob = _one("nightly-rayjob-cronjob.yaml", "CronJob")
    assert cronjob["apiVersion"] == "batch/v1"
    spec = cronjob["spec"]
    assert spec["schedule"] == "15 2 * * *" and spec["concurrencyPolicy"] == "Forbid"
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert _in_repo(container["command"][0]) == SUBMIT
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["RAY_ADDRESS"].endswith("-head-svc:8265")
    (config,) = container["args"]
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == config)
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == _configmap()["metadata"]["name"]
    assert config.startswith(env["STM_LABEL_REPO"] + "/")  # uploaded with the working dir


def _configmap() -> dict:
    return _one("nightly-configmap.yaml", "ConfigMap")


def test_the_configmap_holds_a_valid_nightly_config_without_a_run_id() -> None:
    config = NightlyConfig.model_validate(yaml.safe_load(_configmap()["data"]["nightly.yaml"]))
    assert config.run_id is None and config.resolved_run_id.startswith("nightly-")


def _check_rayjob_spec(spec: dict) -> None:
    argv = shlex.split(spec["entrypoint"])
    assert argv[0] == "python" and _in_repo(argv[1]) == REPO / "jobs" / "nightly.py"
    assert build_parser().parse_args(argv[2:]).config == "/config/nightly.yaml"
    assert spec["shutdownAfterJobFinishes"] is True
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    (container,) = head["containers"]
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/config")
    volume = next(v for v in head["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == _configmap()["metadata"]["name"]


def test_the_rayjob_runs_the_nightly_job_with_the_mounted_config() -> None:
    rayjob = _one("nightly-rayjob.yaml", "RayJob")
    assert rayjob["apiVersion"] == "ray.io/v1"
    _check_rayjob_spec(rayjob["spec"])


def test_the_raycronjob_schedules_the_same_rayjob() -> None:
    cron = _one("nightly-scheduled-rayjob.yaml", "RayCronJob")
    assert cron["apiVersion"] == "ray.io/v1" and cron["spec"]["schedule"] == "15 2 * * *"
    assert "KubeRay >= 1.6.0" in (DEPLOY / "k8s" / "nightly-scheduled-rayjob.yaml").read_text()
    _check_rayjob_spec(cron["spec"]["jobTemplate"])
    assert cron["spec"]["jobTemplate"] == _one("nightly-rayjob.yaml", "RayJob")["spec"]
