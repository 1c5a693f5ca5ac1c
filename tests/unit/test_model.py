"""The network's keys and shapes equal the official checkpoint's, and the pure ops do what the
release does."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from stm_core import STM
from stm_core.model.ops import pad_to_multiple, read_memory, soft_aggregate, unpad

SPEC = Path(__file__).resolve().parents[3] / "shared" / "spec" / "stm_official_state_dict.json"


@pytest.fixture(scope="module")
def official_shapes() -> dict[str, list[int]]:
    if not SPEC.exists():
        pytest.skip(f"{SPEC} not found")
    return {k.removeprefix("module."): v for k, v in json.loads(SPEC.read_text()).items()}


def test_resnet50_state_dict_equals_official_keys_and_shapes(official_shapes):
    mine = {k: list(v.shape) for k, v in STM("resnet50").state_dict().items()}
    assert set(mine) == set(official_shapes)
    assert {k: v for k, v in mine.items() if v != official_shapes[k]} == {}


def test_resnet18_has_the_same_key_tree_with_small_widths(official_shapes):
    model = STM("resnet18")
    sd = model.state_dict()
    assert sd["KV_M_r4.Key.weight"].shape == (32, 256, 3, 3)
    assert sd["KV_M_r4.Value.weight"].shape == (128, 256, 3, 3)
    assert sd["Decoder.convFM.weight"].shape[1] == 256  # read (128) + query value (128)
    # Same module tree at the top: every official top-level head exists.
    heads = {k.split(".")[0] + "." + k.split(".")[1] for k in official_shapes}
    assert heads <= {k.split(".")[0] + "." + k.split(".")[1] for k in sd}


def test_unknown_trunk_is_rejected():
    with pytest.raises(ValueError, match="unknown trunk 'vgg'"):
        STM("vgg")


def test_forward_refuses():
    with pytest.raises(RuntimeError, match="no forward"):
        STM("resnet18")(torch.zeros(1))


@pytest.mark.parametrize("h,w", [(480, 854), (100, 150), (64, 48), (33, 17)])
def test_padding_puts_the_odd_pixel_after_and_round_trips(h, w):
    x = torch.randn(1, 2, h, w)
    padded, (left, right, top, bottom) = pad_to_multiple(x, 16)
    assert padded.shape[-2] % 16 == 0 and padded.shape[-1] % 16 == 0
    assert left == (padded.shape[-1] - w) // 2 and right - left in (0, 1)
    assert top == (padded.shape[-2] - h) // 2 and bottom - top in (0, 1)
    assert torch.equal(unpad(padded, (left, right, top, bottom)), x)
    assert torch.equal(padded[..., top : top + h, left : left + w], x)


def test_read_memory_is_softmax_over_all_memory_positions():
    torch.manual_seed(0)
    b, m, n, ck, cv = 3, 40, 12, 8, 5
    keys, values, query = torch.randn(b, m, ck), torch.randn(b, m, cv), torch.randn(b, n, ck)
    affinity = torch.bmm(keys, query.transpose(1, 2)) / math.sqrt(ck)  # B x M x N
    expected = torch.bmm(values.transpose(1, 2), F.softmax(affinity, dim=1))  # B x Cv x N
    got = read_memory(keys, values, query)
    torch.testing.assert_close(got, expected.transpose(1, 2), atol=1e-6, rtol=1e-5)


def test_soft_aggregation_matches_its_definition():
    probs = torch.tensor([[[0.9, 0.0]], [[0.5, 1.0]]])  # 2 objects x 1 x 2
    logits = soft_aggregate(probs)
    q = torch.tensor([[[0.1 * 0.5, 1.0 * 0.0]], [[0.9, 0.0]], [[0.5, 1.0]]]).clamp(1e-7, 1 - 1e-7)
    torch.testing.assert_close(logits, torch.log(q / (1 - q)))
    out = F.softmax(logits, dim=0)
    torch.testing.assert_close(out.sum(0), torch.ones(1, 2))
    # An object certain at a pixel wins it.
    assert out[:, 0, 1].argmax() == 2
