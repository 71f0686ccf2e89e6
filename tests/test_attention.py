"""RDAM (§3.1): CAM (eq. 1), SAM and RSAM (eq. 2, logit reading) and the Table 5 modes vs hand computations."""
import math

import pytest
import torch

from scsn.modeling.attention import ATTENTION_MODES, ChannelAttention, DualAttention, SpatialAttention


def sigmoid(v):
    return 1.0 / (1.0 + math.exp(-v))


def spatial_logits_by_hand(x, weight, bias):
    """w_n[b, i, j] = bias + sum over (mean, max) maps and the k x k window, zero-padded."""
    b_size, _, h, w = x.shape
    k = weight.shape[-1]
    pad = k // 2
    out = torch.zeros(b_size, 1, h, w)
    for b in range(b_size):
        maps = [x[b].mean(dim=0), x[b].max(dim=0).values]  # paper order: [M_avg; M_max]
        for i in range(h):
            for j in range(w):
                total = bias
                for m, plane in enumerate(maps):
                    for u in range(k):
                        for v in range(k):
                            ii, jj = i + u - pad, j + v - pad
                            if 0 <= ii < h and 0 <= jj < w:
                                total += weight[0, m, u, v].item() * plane[ii, jj].item()
                out[b, 0, i, j] = total
    return out


def make_spatial(residual, kernel_size=3, gamma=None):
    torch.manual_seed(1)
    sam = SpatialAttention(kernel_size, residual=residual)
    if gamma is not None:
        with torch.no_grad():
            sam.gamma.fill_(gamma)
    return sam


def test_channel_attention_matches_hand_computation():
    cam = ChannelAttention(channels=2, reduction=2)  # W1: 2 -> 1, W2: 1 -> 2
    with torch.no_grad():
        cam.mlp[0].weight.copy_(torch.tensor([[1.0, -2.0]]))
        cam.mlp[0].bias.copy_(torch.tensor([0.5]))
        cam.mlp[2].weight.copy_(torch.tensor([[2.0], [-1.0]]))
        cam.mlp[2].bias.copy_(torch.tensor([0.1, 0.3]))
    x = torch.tensor([[[[1.0, -3.0], [2.0, 0.0]],      # channel 0: mean 0, max 2
                       [[-1.0, -1.0], [0.5, -2.5]]]])  # channel 1: mean -1, max 0.5

    def mlp(d0, d1):
        hidden = max(0.0, 1.0 * d0 - 2.0 * d1 + 0.5)
        return [2.0 * hidden + 0.1, -1.0 * hidden + 0.3]

    avg, mx = mlp(0.0, -1.0), mlp(2.0, 0.5)
    expected = [sigmoid(avg[c] + mx[c]) for c in range(2)]
    out = cam(x)
    for c in range(2):
        assert torch.allclose(out[0, c], expected[c] * x[0, c], atol=1e-6)


def test_channel_attention_shares_one_mlp_for_both_descriptors():
    cam = ChannelAttention(channels=32, reduction=16)
    assert [p.shape for p in cam.parameters()] == [(2, 32), (2,), (32, 2), (32,)]


def test_sam_is_sigmoid_of_conv_over_mean_and_max():
    sam = make_spatial(residual=False)
    x = torch.randn(2, 3, 4, 5)
    out, carry = sam(x)
    logits = spatial_logits_by_hand(x, sam.conv.weight, sam.conv.bias.item())
    assert carry is None
    assert sam.gamma is None
    assert torch.allclose(out, x * torch.sigmoid(logits), atol=1e-6)


def test_sam_ignores_an_incoming_carry():
    sam = make_spatial(residual=False)
    x = torch.randn(1, 3, 4, 4)
    assert torch.equal(sam(x, torch.randn(1, 1, 4, 4))[0], sam(x)[0])


def test_rsam_with_gamma_one_equals_plain_sam():
    torch.manual_seed(0)
    rsam, sam = make_spatial(residual=True), make_spatial(residual=False)
    assert rsam.gamma.item() == 1.0  # initial value
    x = torch.randn(2, 3, 4, 5)
    previous = torch.randn(2, 1, 4, 5)
    for carry in (None, previous):  # gamma = 1 forgets any carried logit
        out, logits = rsam(x, carry)
        assert torch.allclose(out, sam(x)[0], atol=1e-6)
        assert torch.allclose(logits, spatial_logits_by_hand(x, rsam.conv.weight, rsam.conv.bias.item()), atol=1e-5)


def test_rsam_recursion_over_two_blocks_matches_hand_formula():
    torch.manual_seed(0)
    block1, block2 = make_spatial(residual=True, gamma=0.5), make_spatial(residual=True, gamma=0.5)
    with torch.no_grad():
        block2.conv.weight.mul_(-2.0)  # a different conv per block
    x1, x2 = torch.randn(1, 2, 3, 3), torch.randn(1, 2, 3, 3)

    out1, a1 = block1(x1)  # first block of a stage: a_0 = 0
    out2, a2 = block2(x2, a1)

    w1 = spatial_logits_by_hand(x1, block1.conv.weight, block1.conv.bias.item())
    w2 = spatial_logits_by_hand(x2, block2.conv.weight, block2.conv.bias.item())
    for i in range(3):
        for j in range(3):
            a1_ij = 0.0 + 0.5 * (w1[0, 0, i, j].item() - 0.0)
            a2_ij = a1_ij + 0.5 * (w2[0, 0, i, j].item() - a1_ij)
            assert a1[0, 0, i, j].item() == pytest.approx(a1_ij, abs=1e-5)
            assert a2[0, 0, i, j].item() == pytest.approx(a2_ij, abs=1e-5)
            assert torch.allclose(out1[0, :, i, j], sigmoid(a1_ij) * x1[0, :, i, j], atol=1e-6)
            assert torch.allclose(out2[0, :, i, j], sigmoid(a2_ij) * x2[0, :, i, j], atol=1e-6)


def test_rsam_without_carry_starts_from_zero():
    rsam = make_spatial(residual=True, gamma=0.5)
    x = torch.randn(1, 2, 3, 3)
    assert torch.equal(rsam(x)[1], rsam(x, torch.zeros(1, 1, 3, 3))[1])
    assert not torch.allclose(rsam(x)[1], rsam(x, torch.ones(1, 1, 3, 3))[1])


def test_rsam_gamma_receives_gradient():
    rsam = make_spatial(residual=True, gamma=0.5)
    out, _ = rsam(torch.randn(1, 2, 3, 3), torch.randn(1, 1, 3, 3))
    out.sum().backward()
    assert rsam.gamma.grad is not None and rsam.gamma.grad.abs().item() > 0


@pytest.mark.parametrize("mode,channel,spatial,residual", [
    ("none", False, False, False),
    ("CAM", True, False, False),
    ("SAM", False, True, False),
    ("RSAM", False, True, True),
    ("CAM+SAM", True, True, False),
    ("RDAM", True, True, True),
])
def test_modes_build_the_table5_variants(mode, channel, spatial, residual):
    att = DualAttention(16, mode, reduction=4, spatial_kernel=3)
    assert (att.channel is not None, att.spatial is not None) == (channel, spatial)
    assert (spatial and att.spatial.gamma is not None) == residual
    x = torch.randn(2, 16, 4, 3)
    out, carry = att(x)
    assert out.shape == x.shape
    assert (carry is not None) == residual
    if mode == "none":
        assert torch.equal(out, x)


def test_dual_attention_applies_channel_then_spatial():
    torch.manual_seed(0)
    att = DualAttention(8, "RDAM", reduction=2, spatial_kernel=3)
    x = torch.randn(2, 8, 4, 3)
    carry = torch.randn(2, 1, 4, 3)
    expected, expected_carry = att.spatial(att.channel(x), carry)
    out, new_carry = att(x, carry)
    assert torch.equal(out, expected) and torch.equal(new_carry, expected_carry)


def test_dual_attention_from_config(cfg):
    cfg.MODEL.BACKBONE.RDAM.MODE = "CAM+SAM"
    cfg.MODEL.BACKBONE.RDAM.REDUCTION = 4
    cfg.MODEL.BACKBONE.RDAM.SPATIAL_KERNEL = 5
    att = DualAttention(cfg, 32)
    assert att.mode == "CAM+SAM"
    assert att.channel.mlp[0].out_features == 8
    assert att.spatial.conv.kernel_size == (5, 5) and att.spatial.gamma is None
    assert set(ATTENTION_MODES) == {"none", "CAM", "SAM", "RSAM", "CAM+SAM", "RDAM"}


@pytest.mark.parametrize("kwargs,key", [
    ({"mode": "CBAM"}, "MODEL.BACKBONE.RDAM.MODE"),
    ({"reduction": 0}, "MODEL.BACKBONE.RDAM.REDUCTION"),
    ({"spatial_kernel": 4}, "MODEL.BACKBONE.RDAM.SPATIAL_KERNEL"),
])
def test_bad_attention_settings_name_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        DualAttention(8, **kwargs)
