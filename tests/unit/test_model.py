"""The network's keys and shapes equal the official checkpoint's, and the pure ops do what the
release does."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from stm_core import STM
from stm_core.model.ops import (
    newest_frame_window,
    pad_to_multiple,
    read_memory,
    soft_aggregate,
    unpad,
)

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


def test_newest_frame_window_restricts_only_the_newest_frame():
    h, w, r = 4, 5, 1
    allowed = newest_frame_window(h, w, r, memory_tokens=3 * h * w)
    assert allowed.shape == (h * w, 3 * h * w) and allowed.dtype == torch.bool
    assert allowed[:, : 2 * h * w].all()  # older frames: read everywhere
    newest = allowed[:, 2 * h * w :]
    for q in range(h * w):
        qy, qx = divmod(q, w)
        for m in range(h * w):
            my, mx = divmod(m, w)
            assert bool(newest[q, m]) == (abs(qy - my) <= r and abs(qx - mx) <= r), (q, m)
    with pytest.raises(ValueError, match="radius"):
        newest_frame_window(h, w, -1, h * w)
    with pytest.raises(ValueError, match="cannot hold"):
        newest_frame_window(h, w, 1, h * w - 1)


def test_windowed_read_ignores_far_look_alikes_in_the_newest_frame():
    """Two newest-frame positions with the same key but different values: a global read blends
    them; the windowed read takes only the near one."""
    h, w, ck = 1, 6, 4
    keys = torch.zeros(1, h * w, ck)
    keys[0, 0] = keys[0, 5] = torch.tensor([8.0, 0, 0, 0])
    values = torch.zeros(1, h * w, 1)
    values[0, 0], values[0, 5] = 1.0, -1.0
    query = torch.zeros(1, h * w, ck)
    query[0, 0] = torch.tensor([8.0, 0, 0, 0])  # query cell 0 looks like both
    glob = read_memory(keys, values, query)[0, 0, 0]
    local = read_memory(keys, values, query, newest_frame_window(h, w, 1, h * w))[0, 0, 0]
    assert abs(float(glob)) < 1e-3
    assert float(local) > 0.99


def test_segment_window_applies_only_to_a_propagated_newest_frame():
    torch.manual_seed(0)
    model = STM("resnet18").eval()
    frames = torch.rand(3, 3, 64, 96)
    masks = (torch.rand(2, 1, 64, 96) > 0.5).float()
    with torch.inference_mode():
        entries = [model.encode_memory(frames[i : i + 1], masks[i], 1 - masks[i]) for i in (0, 1)]
        keys = torch.cat([k for k, _ in entries], 1)
        values = torch.cat([v for _, v in entries], 1)
        query = model.encode_query(frames[2:3])
        plain = model.segment(query, keys, values, newest_propagated=True)
        model.newest_frame_window = 1
        windowed = model.segment(query, keys, values, newest_propagated=True)
        seed_newest = model.segment(query, keys, values, newest_propagated=False)
        model.newest_frame_window = 6  # covers the whole 4 x 6 grid: the global read again
        wide = model.segment(query, keys, values, newest_propagated=True)
    assert torch.equal(seed_newest, plain)
    torch.testing.assert_close(wide, plain, atol=1e-6, rtol=1e-5)
    assert (windowed - plain).abs().max() > 1e-4
    with pytest.raises(ValueError, match="newest_frame_window"):
        STM("resnet18", newest_frame_window=-1)
