"""``stm_core.model.resnet`` is torchvision's ResNet without importing torchvision.

The copy exists so a process that loads a model does not pay torchvision's import (it pulls in
``torch._dynamo``: about 2.6 s per process here, more than torch). What must hold: the same
module names and, from the same seed, the same weights as torchvision's constructors (so the
official checkpoint and every project checkpoint load as before); the same outputs; and the
processes the pipeline starts (labeling actor, Ray Train worker, gate task, CLI) never import
torchvision or ``torch._dynamo``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from stm_core.model.resnet import resnet

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_same_names_and_weights_as_torchvision_from_a_seed(name: str) -> None:
    torch.manual_seed(11)
    ours = resnet(name).state_dict()
    torch.manual_seed(11)
    theirs = getattr(torchvision.models, name)(weights=None).state_dict()
    assert list(ours) == list(theirs)
    for key, value in theirs.items():
        assert torch.equal(ours[key], value), key


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_same_outputs_as_torchvision(name: str) -> None:
    torch.manual_seed(0)
    theirs = getattr(torchvision.models, name)(weights=None)
    for module in theirs.modules():  # BatchNorm statistics away from their 0 / 1 start
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 1.5)
    ours = resnet(name)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        for mode in (True, False):  # training mode (batch statistics), then eval
            theirs.train(mode)
            ours.train(mode)
            torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)


CHECK = """
import sys
import numpy as np
import pipeline.label_actor, pipeline.training.ray_trainer, pipeline.engine.gate, jobs.cli
from stm_core import load_model, propagate
from stm_core.assets import V4_CHECKPOINT_NAME, asset_path, default_checkpoint_path
frames = [np.zeros((32, 48, 3), np.uint8)] * 2
seed = np.zeros((32, 48), np.uint8)
seed[8:20, 10:30] = 1
for path in (default_checkpoint_path(), asset_path(V4_CHECKPOINT_NAME)):  # Lite0 and ResNet-18
    list(propagate(load_model(path), frames, {0: seed}))
heavy = sorted(m for m in ("torchvision", "torch._dynamo") if m in sys.modules)
print("HEAVY", heavy)
"""


def test_pipeline_processes_do_not_import_torchvision_or_dynamo() -> None:
    """Imports the modules the pipeline's processes start from, loads both shipped models and
    labels two frames with each."""
    done = subprocess.run(
        [sys.executable, "-c", CHECK], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "HEAVY []" in done.stdout, done.stdout
