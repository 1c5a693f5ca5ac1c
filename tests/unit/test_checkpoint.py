"""Loading: official layout (module. prefix, with or without BN counters), the project's format,
file objects, and clear errors for wrong files."""

import io

import pytest
import torch

from stm_core import STM, CheckpointError, load_model, save_checkpoint
from stm_core.checkpoint import read_metadata


@pytest.fixture(scope="module")
def r18() -> STM:
    torch.manual_seed(1)
    return STM("resnet18").eval()


def _same_weights(a: STM, b: STM) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k].to(sa[k].device)) for k in sa)


def test_official_layout_with_prefix_and_without_counters(r18, tmp_path):
    state = {
        "module." + k: v for k, v in r18.state_dict().items() if "num_batches_tracked" not in k
    }
    path = tmp_path / "STM_weights.pth"
    torch.save(state, path)
    model = load_model(path, device="cpu")
    assert model.spec.name == "resnet18" and not model.training
    assert _same_weights(model, r18)  # counters were absent and are filled with zeros


def test_official_resnet50_layout_is_recognised_from_a_state_dict():
    state = {"module." + k: v for k, v in STM("resnet50").state_dict().items()}
    assert load_model(state, device="cpu").spec.name == "resnet50"


def test_project_format_round_trip_file_object_and_metadata(r18):
    buffer = io.BytesIO()
    save_checkpoint(r18, buffer, metadata={"steps": 3})
    buffer.seek(0)
    assert _same_weights(load_model(buffer, device="cpu"), r18)
    buffer.seek(0)
    assert read_metadata(buffer) == {"steps": 3}


def test_half_precision_checkpoint_loads_as_float32(r18, tmp_path):
    path = tmp_path / "half.pt"
    save_checkpoint(r18, path, half=True)
    model = load_model(path, device="cpu")
    w = model.state_dict()["Decoder.pred2.weight"]
    assert w.dtype == torch.float32
    torch.testing.assert_close(w, r18.state_dict()["Decoder.pred2.weight"], atol=1e-3, rtol=1e-3)


def test_missing_and_unexpected_keys_are_named(r18):
    state = dict(r18.state_dict())
    del state["Decoder.pred2.bias"]
    state["Decoder.extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as err:
        load_model(state)
    msg = str(err.value)
    assert "1 missing keys (Decoder.pred2.bias)" in msg
    assert "1 unexpected keys (Decoder.extra.weight)" in msg


def test_shape_mismatch_is_named(r18):
    state = dict(r18.state_dict())
    state["Decoder.convFM.weight"] = torch.zeros(128, 7, 3, 3)
    with pytest.raises(
        CheckpointError, match=r"Decoder.convFM.weight: checkpoint \[128, 7, 3, 3\]"
    ):
        load_model(state)


@pytest.mark.parametrize(
    "content,problem",
    [(b"", "not a readable PyTorch checkpoint"), (b"hello", "not a readable PyTorch checkpoint")],
)
def test_unreadable_files(tmp_path, content, problem):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=problem) as err:
        load_model(path)
    assert str(path) in str(err.value)


def test_missing_file_and_non_stm_dicts(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint file not found"):
        load_model(tmp_path / "nope.pth")
    path = tmp_path / "list.pth"
    torch.save([1, 2], path)
    with pytest.raises(CheckpointError, match="expected a dict of tensors"):
        load_model(path)
    with pytest.raises(CheckpointError, match="not an STM checkpoint"):
        load_model({"fc.weight": torch.zeros(2, 2)})
