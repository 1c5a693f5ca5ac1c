"""The EfficientNet-Lite trunks: the packaged ImageNet weights load and classify real photos,
the memory encoder's mask stems leave the pretrained features unchanged at initialisation, and
an STM on the trunk saves, loads and segments like the ResNet ones."""

from __future__ import annotations

import io

import pytest
import skimage.data
import torch
import torch.nn.functional as F

from stm_core import STM, load_model, save_checkpoint
from stm_core.model import efficientnet_lite as lite
from stm_core.model.encoders import LiteMemoryEncoder, LiteQueryEncoder
from stm_core.model.ops import pad_to_multiple
from stm_core.training.loop import _param_groups

# ImageNet class ids: 281-285 are the domestic cats (285 Egyptian cat), 967 espresso, 968 cup.
CATS, COFFEE = range(281, 286), range(967, 969)
INPUT_SIDE = {"lite0": 224, "lite2": 260}


def _photo(name: str, side: int) -> torch.Tensor:
    image = torch.from_numpy(getattr(skimage.data, name)()).permute(2, 0, 1)[None].float() / 255
    image = F.interpolate(image, size=(side, side), mode="bilinear", antialias=True)
    return (image - lite.INPUT_MEAN) / lite.INPUT_STD


@pytest.mark.parametrize("variant", ["lite0", "lite2"])
def test_packaged_imagenet_weights_classify_real_photos(variant: str) -> None:
    net = lite.EfficientNetLite(variant, classifier=True)
    lite.load_imagenet_weights(net)
    net.eval()
    with torch.no_grad():
        cat = int(net(_photo("chelsea", INPUT_SIDE[variant])).argmax())
        coffee = int(net(_photo("coffee", INPUT_SIDE[variant])).argmax())
    assert cat in CATS, cat
    assert coffee in COFFEE, coffee


def test_random_weights_do_not_classify() -> None:
    """The classification test can fail: the same network without the file does not find the
    cat and the espresso both."""
    torch.manual_seed(0)
    net = lite.EfficientNetLite("lite0", classifier=True).eval()
    with torch.no_grad():
        cat = int(net(_photo("chelsea", 224)).argmax())
        coffee = int(net(_photo("coffee", 224)).argmax())
    assert not (cat in CATS and coffee in COFFEE)


def test_stage_widths_match_the_packaged_files() -> None:
    for name in lite.VARIANTS:
        state = torch.load(lite.packaged_weights_path(name), weights_only=True)
        net = lite.EfficientNetLite(name, classifier=True)
        assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == {
            k: tuple(v.shape) for k, v in state.items()
        }


def test_same_padding_matches_tensorflow_rule() -> None:
    """TF SAME for stride 2 on an even side pads 0 before and 1 after (k=3): the output equals
    a plain convolution of the input padded that way."""
    conv = lite.SameConv2d(1, 1, 3, 2, bias=False)
    x = torch.randn(1, 1, 8, 10)
    expected = F.conv2d(F.pad(x, [0, 1, 0, 1]), conv.weight, stride=2)
    assert torch.allclose(conv(x), expected)
    assert conv(x).shape[-2:] == (4, 5)


@pytest.mark.parametrize("kernel", [1, 3, 5])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [(9, 11), (8, 10), (7, 12)])
def test_same_padding_in_the_convolution_equals_padding_first(kernel, stride, size) -> None:
    """Symmetric padding is left to the convolution itself (no copy of the input): the result
    is the TF rule's explicit padding followed by an unpadded convolution, for odd and even
    sides, where the rule's padding is symmetric and where it is not."""
    conv = lite.SameConv2d(4, 6, kernel, stride, bias=False)
    x = torch.randn(1, 4, *size)
    pads = []
    for side in reversed(size):
        total = max((-(-side // stride) - 1) * stride + kernel - side, 0)
        pads += [total // 2, total - total // 2]
    expected = F.conv2d(F.pad(x, pads), conv.weight, stride=stride)
    assert torch.allclose(conv(x), expected, atol=1e-6)
    assert conv(x).shape[-2:] == tuple(-(-side // stride) for side in size)


@pytest.mark.parametrize("trunk", ["efficientnet_lite0", "efficientnet_lite2"])
def test_mask_stems_leave_pretrained_features_unchanged(trunk: str) -> None:
    memory = LiteMemoryEncoder(trunk, pretrained=True).eval()
    query = LiteQueryEncoder(trunk, pretrained=True).eval()
    frame = torch.rand(2, 3, 64, 96)
    mask = (torch.rand(2, 1, 64, 96) > 0.5).float()
    with torch.no_grad():
        f16 = memory(frame, mask, 1 - mask)
        assert torch.equal(f16, query(frame)[0])
        memory.conv1_m.weight.add_(0.1)  # the stems are live: once trained, masks count
        assert not torch.allclose(memory(frame, mask, 1 - mask), f16)


@pytest.mark.parametrize("trunk", ["efficientnet_lite0", "efficientnet_lite2"])
def test_feature_strides_and_widths_follow_the_trunk_table(trunk: str) -> None:
    model = STM(trunk).eval()
    s = model.spec
    with torch.no_grad():
        f16, f8, f4 = model.Encoder_Q(torch.rand(1, 3, 64, 96))
    assert f16.shape[1:] == (s.f16, 4, 6)
    assert f8.shape[1:] == (s.f8, 8, 12)
    assert f4.shape[1:] == (s.f4, 16, 24)


def test_lite_checkpoint_round_trip_without_naming_the_trunk() -> None:
    torch.manual_seed(0)
    model = STM("efficientnet_lite0").eval()
    buffer = io.BytesIO()
    save_checkpoint(model, buffer)
    buffer.seek(0)
    loaded = load_model(buffer, device="cpu")
    assert loaded.spec.name == "efficientnet_lite0"
    frame, _ = pad_to_multiple(torch.rand(1, 3, 50, 70))
    masks = torch.zeros(2, *frame.shape[-2:])
    masks[0, 10:30, 10:30], masks[1, 30:, 40:] = 1, 1
    with torch.no_grad():
        keys, values = model.encode_memory(frame, masks, 1 - masks)
        a = model.segment(model.encode_query(frame), keys, values)
        keys, values = loaded.encode_memory(frame, masks, 1 - masks)
        b = loaded.segment(loaded.encode_query(frame), keys, values)
    assert torch.equal(a, b) and a.shape == (2, *frame.shape[-2:])


def test_trunk_gets_its_own_learning_rate_and_the_mask_stems_do_not() -> None:
    model = STM("efficientnet_lite0")
    rest, trunk = _param_groups(model, 0.3)
    trunk_ids = {id(p) for p in trunk["params"]}
    assert trunk["lr_scale"] == 0.3 and rest["lr_scale"] == 1.0
    assert id(model.Encoder_M.conv1_m.weight) not in trunk_ids
    assert id(model.Encoder_Q.trunk._conv_stem.weight) in trunk_ids
    assert id(model.Decoder.pred2.weight) not in trunk_ids
    every = {id(p) for p in model.parameters()}
    assert trunk_ids | {id(p) for p in rest["params"]} == every


def test_resnet_trunks_have_no_offline_imagenet_weights() -> None:
    with pytest.raises(ValueError, match="no offline ImageNet weights"):
        STM("resnet18", pretrained_trunk=True)
