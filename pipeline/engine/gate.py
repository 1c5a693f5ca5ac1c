"""The promotion gate: score the candidate and the promoted checkpoint on the same held-out
ground truth, and promote the candidate only if it is better by the configured margin.

Each evaluation is a Ray task (a GPU one when the cluster has GPUs), and both run at once. The
held-out set is a DAVIS / YouTube-VOS layout folder anywhere fsspec reaches; a task copies it to
a local temporary folder first, since ``stm_core`` reads local files only.
"""

from __future__ import annotations

import io
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from schemas.common import StorageOptions
from schemas.nightly import GateConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GateResult:
    candidate: dict[str, Any]  # summarize() of the candidate: {"mean": {"J", "F", "J&F"}, ...}
    parent: dict[str, Any]
    promoted: bool
    reason: str


def fetch_folder(uri: str, options: StorageOptions | None, into: Path) -> Path:
    """A local copy of the folder at ``uri`` (or the folder itself when it is local)."""
    from pipeline.storage import open_fs, split_uri

    protocol, path = split_uri(uri)
    if protocol == "file":
        if not Path(path).is_dir():
            raise FileNotFoundError(f"{uri}: held-out folder not found")
        return Path(path)
    fs, path = open_fs(uri, options)
    if not fs.isdir(path):
        raise FileNotFoundError(f"{uri}: held-out folder not found")
    fs.get(path.rstrip("/") + "/", str(into), recursive=True)
    return into


def evaluate_checkpoint(
    model_bytes: bytes, heldout_uri: str, options: StorageOptions | None, config: GateConfig
) -> dict[str, Any]:
    """J&F of one model file on the held-out folder (see ``pipeline.evaluation``)."""
    import torch

    from pipeline.evaluation import evaluate_root
    from stm_core import load_model, pick_device

    torch.set_num_threads(max(1, int(config.num_cpus)))
    model = load_model(io.BytesIO(model_bytes), device=pick_device())
    with tempfile.TemporaryDirectory() as tmp:
        root = fetch_folder(heldout_uri, options, Path(tmp))
        return evaluate_root(model, root, config.mem_every, config.max_memory_frames)


def decide(candidate_jf: float, parent_jf: float, margin: float) -> tuple[bool, str]:
    """Promote when the candidate's J&F (fractions) beats the parent's by ``margin`` points."""
    gain = 100 * (candidate_jf - parent_jf)
    verdict = (
        f"held-out J&F {100 * candidate_jf:.2f} vs promoted {100 * parent_jf:.2f} "
        f"(gain {gain:+.2f}, margin {margin:+.2f})"
    )
    if gain >= margin - 1e-9:  # a gain equal to the margin passes despite float rounding
        return True, f"promoted: {verdict}"
    return False, f"kept the promoted checkpoint: {verdict}"


def run_gate(
    candidate: bytes,
    parent: bytes,
    heldout_uri: str,
    options: StorageOptions | None,
    config: GateConfig,
) -> GateResult:
    """Evaluate both checkpoints as Ray tasks and decide."""
    gpus = float(ray.cluster_resources().get("GPU", 0))
    task = ray.remote(evaluate_checkpoint).options(
        num_cpus=config.num_cpus, num_gpus=1 if gpus >= 1 else 0, max_retries=2
    )
    refs = [task.remote(model, heldout_uri, options, config) for model in (candidate, parent)]
    cand, par = ray.get(refs)
    promoted, reason = decide(cand["mean"]["J&F"], par["mean"]["J&F"], config.margin)
    log.info("gate: %s", reason)
    return GateResult(cand, par, promoted, reason)
