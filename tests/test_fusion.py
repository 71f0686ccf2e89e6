"""NMFF (§3.2, eqs. 3-5): pyramid pooling, the asymmetric non-local attention, and the residual fusion block."""
import math

import pytest
import torch
import torch.nn.functional as F

from scsn.modeling.fusion import AsymmetricNonLocal, MultiStageFusion, pyramid_pool

STAGE_CHANNELS = [4, 6, 8, 10]


def stage_maps(batch=2):
    """Tiny stand-ins for the four ResNet stage maps (stage 3 and 4 at the same size, as with LAST_STRIDE 1)."""
    sizes = [(16, 8), (8, 4), (4, 2), (4, 2)]
    return [torch.randn(batch, c, h, w) for c, (h, w) in zip(STAGE_CHANNELS, sizes)]


def make_fusion(stages=(1, 2, 3), key_channels=3, value_channels=5, pool_bins=(1, 3, 6, 8), merge="add"):
    return MultiStageFusion(stage_channels=STAGE_CHANNELS, stages=stages, key_channels=key_channels,
                            value_channels=value_channels, pool_bins=pool_bins, merge=merge)


def test_pyramid_pool_positions_and_values():
    x = torch.randn(2, 3, 16, 8)
    pooled = pyramid_pool(x, (1, 3, 6, 8))
    assert pooled.shape == (2, 3, 1 + 9 + 36 + 64)  # S = 110
    assert torch.allclose(pooled[:, :, 0], x.mean(dim=(2, 3)), atol=1e-6)  # the 1 x 1 bin is the global average
    # 8 x 8 bins on a 16 x 8 map: the last bin (row 7, col 7) averages rows 14-15 of column 7.
    assert torch.allclose(pooled[:, :, -1], x[:, :, 14:16, 7].mean(dim=2), atol=1e-6)


@pytest.mark.parametrize("merge", ["add", "add_relu", "bn_add"])
def test_identity_at_init(merge):
    torch.manual_seed(0)
    fusion = make_fusion(merge=merge)
    features = stage_maps()
    features[3] = features[3].relu()  # stage 4 ends in a ReLU
    assert torch.equal(fusion(features), features[3])


def test_attention_is_a_softmax_over_the_110_pooled_positions():
    torch.manual_seed(0)
    block = AsymmetricNonLocal(high_channels=10, low_channels=6, key_channels=3, value_channels=5)
    features = stage_maps()
    m = block.attention(features[3], features[1])
    assert m.shape == (2, 4 * 2, 110)  # (B, N_h, S)
    assert (m >= 0).all()
    assert torch.allclose(m.sum(dim=2), torch.ones(2, 8), atol=1e-6)


def test_non_local_matches_explicit_eq4():
    torch.manual_seed(0)
    bins = (1, 2)
    block = AsymmetricNonLocal(high_channels=3, low_channels=2, key_channels=2, value_channels=4, pool_bins=bins)
    block.eval()  # BN with its running statistics: kappa_q, kappa_k are fixed affine maps + ReLU
    with torch.no_grad():
        for bn in (block.query[1], block.key[1]):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    high, low = torch.randn(1, 3, 2, 3), torch.randn(1, 2, 4, 4)

    def embed(x, seq):  # 1x1 conv + BN (eval) + ReLU at every position
        conv, bn = seq[0], seq[1]
        y = torch.einsum("oc,bchw->bohw", conv.weight[:, :, 0, 0], x)
        y = (y - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps)
        return torch.relu(y * bn.weight[:, None, None] + bn.bias[:, None, None])

    def pool(x):  # bins 1 and 2 on a 4 x 4 map: the global mean, then 2 x 2 quadrants in row-major order
        cells = [x.mean(dim=(2, 3))]
        for r in range(2):
            for c in range(2):
                cells.append(x[:, :, 2 * r:2 * r + 2, 2 * c:2 * c + 2].mean(dim=(2, 3)))
        return torch.stack(cells, dim=2)  # (B, C, S = 5)

    q = embed(high, block.query).flatten(2)[0]  # (c, N_h)
    k = pool(embed(low, block.key))[0]  # (c, S)
    v_conv = block.value
    v = pool(torch.einsum("oc,bchw->bohw", v_conv.weight[:, :, 0, 0], low) + v_conv.bias[:, None, None])[0]  # (c_f, S)

    expected = torch.zeros(4, 6)  # (c_f, N_h)
    for n in range(6):
        scores = [(q[:, n] * k[:, s]).sum().item() / math.sqrt(2) for s in range(5)]
        total = sum(math.exp(a) for a in scores)
        for s in range(5):
            expected[:, n] += math.exp(scores[s]) / total * v[:, s]
    out = block(high, low)
    assert out.shape == (1, 4, 2, 3)
    assert torch.allclose(out[0].flatten(1), expected, atol=1e-5)


def test_kappa_fuses_the_concatenated_stage_outputs():
    torch.manual_seed(0)
    fusion = make_fusion(stages=(3, 1))  # order-free: fused as stages 1, 3
    assert fusion.stages == (1, 3)
    with torch.no_grad():
        fusion.kappa.weight.normal_()
        fusion.kappa.bias.normal_()
    features = stage_maps()
    out = fusion(features)
    assert not torch.allclose(out, features[3])
    fused = torch.cat([fusion.non_local[0](features[3], features[0]), fusion.non_local[1](features[3], features[2])], 1)
    expected = features[3] + F.conv2d(fused, fusion.kappa.weight, fusion.kappa.bias)
    assert torch.allclose(out, expected, atol=1e-5)


def fused_by_hand(fusion, features):
    """kappa(cat_l F^{hl_l}) with an explicit conv over the explicitly concatenated fused maps (eq. 5)."""
    fused = torch.cat([block(features[3], features[s - 1]) for s, block in zip(fusion.stages, fusion.non_local)], 1)
    return F.conv2d(fused, fusion.kappa.weight, fusion.kappa.bias)


def test_add_relu_is_the_relu_of_the_sum():
    torch.manual_seed(0)
    fusion = make_fusion(merge="add_relu")
    with torch.no_grad():
        fusion.kappa.weight.normal_()
        fusion.kappa.bias.normal_()
    features = stage_maps()
    expected = torch.relu(features[3] + fused_by_hand(fusion, features))
    out = fusion(features)
    assert (out < 0).sum() == 0 and (expected == 0).any()
    assert torch.allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize("merge", ["add", "add_relu", "bn_add"])
def test_a_channels_last_map_stays_channels_last_with_the_same_values(merge):
    """The head reads NMFF's output: a channels_last stage-4 map must not come back NCHW (a copy per step)."""
    torch.manual_seed(0)
    fusion = make_fusion(merge=merge).eval()
    with torch.no_grad():
        fusion.kappa.weight.normal_()
        if fusion.kappa.bias is not None:
            fusion.kappa.bias.normal_()
        if merge == "bn_add":
            fusion.norm.weight.fill_(1.5)
    features = stage_maps()
    out = fusion([f.contiguous(memory_format=torch.channels_last) for f in features])
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    assert torch.allclose(out, fusion(features), atol=1e-5)


def test_bn_add_normalises_the_fused_map_with_batch_statistics():
    torch.manual_seed(0)
    fusion = make_fusion(merge="bn_add")
    assert fusion.kappa.bias is None  # the BN's shift replaces it
    with torch.no_grad():
        fusion.norm.weight.uniform_(0.5, 1.5)
        fusion.norm.bias.normal_()
    features = stage_maps(batch=3)
    fused = fused_by_hand(fusion, features)  # (B, C_h, H, W)
    mean, var = fused.mean(dim=(0, 2, 3), keepdim=True), fused.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    norm = fusion.norm
    expected = features[3] + (fused - mean) / torch.sqrt(var + norm.eps) * norm.weight[:, None, None] \
        + norm.bias[:, None, None]
    assert torch.allclose(fusion(features), expected, atol=1e-4)


def test_bn_add_learns_from_its_zero_scale():
    torch.manual_seed(0)
    fusion = make_fusion(merge="bn_add")
    features = stage_maps()
    (fusion(features) * torch.randn(2, 10, 4, 2)).sum().backward()
    assert fusion.norm.weight.grad.abs().sum() > 0 and fusion.norm.bias.grad.abs().sum() > 0


def test_shapes_and_parameters_follow_the_paper_settings(cfg):
    # Market1501: stage 3 into stage 4, c_f = 2048, c = 256 (defaults); the others: stages 1-3, c_f = 512, c = 64.
    r50 = [256, 512, 1024, 2048]
    market = MultiStageFusion(cfg, r50)
    assert market.stages == (3,)
    assert market.non_local[0].key[0].in_channels == 1024 and market.non_local[0].query[0].in_channels == 2048
    assert market.non_local[0].value.out_channels == 2048 and market.non_local[0].key[0].out_channels == 256
    assert (market.kappa.in_channels, market.kappa.out_channels) == (2048, 2048)
    cfg.MODEL.BACKBONE.NMFF.STAGES = [1, 2, 3]
    cfg.MODEL.BACKBONE.NMFF.VALUE_CHANNELS = 512
    cfg.MODEL.BACKBONE.NMFF.KEY_CHANNELS = 64
    others = MultiStageFusion(cfg, r50)
    assert [b.key[0].in_channels for b in others.non_local] == [256, 512, 1024]
    assert (others.kappa.in_channels, others.kappa.out_channels) == (3 * 512, 2048)


def test_gradient_reaches_kappa_at_init():
    torch.manual_seed(0)
    fusion = make_fusion()
    features = stage_maps()
    (fusion(features) * torch.randn(2, 10, 4, 2)).sum().backward()
    assert fusion.kappa.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("kwargs,key", [
    ({"stages": (4,)}, "MODEL.BACKBONE.NMFF.STAGES"),
    ({"stages": (0, 1)}, "MODEL.BACKBONE.NMFF.STAGES"),
    ({"stages": (2, 2)}, "MODEL.BACKBONE.NMFF.STAGES"),
    ({"stages": ()}, "MODEL.BACKBONE.NMFF.STAGES"),
    ({"pool_bins": (0, 3)}, "MODEL.BACKBONE.NMFF.POOL_BINS"),
    ({"key_channels": 0}, "MODEL.BACKBONE.NMFF.KEY_CHANNELS"),
    ({"merge": "concat"}, "MODEL.BACKBONE.NMFF.MERGE"),
])
def test_bad_fusion_settings_name_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        make_fusion(**kwargs)
