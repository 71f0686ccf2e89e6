"""SFE unit (§3.3, eqs. 6-7) and cascaded suppression head (§3.4, eqs. 8-9) against hand computations."""
import math

import pytest
import torch

from fastreid.layers.pooling import GlobalAvgPool, GlobalMaxPool
from fastreid.modeling.heads import build_heads
from scsn.modeling.suppression import CascadedSuppressionHead, SalientFeatureExtraction


def make_head(num_stages=3, num_stripes=4, suppress_stripes=1, with_sfe=True, feat_dim=4, embedding_dim=0,
              with_bnneck=False):
    return CascadedSuppressionHead(
        feat_dim=feat_dim, num_stages=num_stages, num_stripes=num_stripes, suppress_stripes=suppress_stripes,
        with_sfe=with_sfe, pool_type="GlobalAvgPool", suppressed_pool_type="GlobalMaxPool",
        embedding_dim=embedding_dim, num_classes=3, neck_feat="before", cls_type="Linear", scale=1, margin=0.,
        with_bnneck=with_bnneck, norm_type="BN",
    )


@pytest.fixture
def head_cfg(cfg):
    cfg.MODEL.HEADS.NAME = "CascadedSuppressionHead"
    cfg.MODEL.BACKBONE.FEAT_DIM = 8
    cfg.MODEL.HEADS.NUM_CLASSES = 5
    cfg.MODEL.HEADS.EMBEDDING_DIM = 6
    cfg.MODEL.HEADS.WITH_BNNECK = True
    cfg.MODEL.HEADS.NECK_FEAT = "after"
    cfg.MODEL.HEADS.NUM_STRIPES = 4
    return cfg


def test_sfe_matches_hand_computed_stripe_softmax():
    torch.manual_seed(0)
    sfe = SalientFeatureExtraction(2, 2, "BN").eval()
    conv, bn = sfe.descriptor[0], sfe.descriptor[1]
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.5, -0.5]).view(1, 2, 1, 1))
        bn.running_mean.fill_(0.2)
        bn.running_var.fill_(4.0)
        bn.weight.fill_(2.0)
        bn.bias.fill_(0.1)
    x = torch.randn(2, 2, 4, 3)
    sal, w = sfe(x)

    rows = 2
    for b in range(2):
        z = []
        for k in range(2):
            values = []
            for i in range(k * rows, (k + 1) * rows):
                for j in range(3):
                    d = 1.5 * x[b, 0, i, j].item() - 0.5 * x[b, 1, i, j].item()
                    values.append(max(0.0, (d - 0.2) / math.sqrt(4.0 + bn.eps) * 2.0 + 0.1))
            z.append(sum(values) / len(values))
        expected_w = [math.exp(v) / sum(math.exp(u) for u in z) for v in z]
        assert w[b].tolist() == pytest.approx(expected_w, rel=1e-5)
        for i in range(4):
            assert torch.allclose(sal[b, :, i, :], expected_w[i // rows] * x[b, :, i, :])
    assert torch.allclose(w.sum(dim=1), torch.ones(2))


def test_sfe_from_cfg_and_rejects_height_not_divisible_by_stripes(head_cfg):
    sfe = SalientFeatureExtraction(head_cfg)
    assert sfe.num_stripes == 4 and sfe.descriptor[0].in_channels == 8
    with pytest.raises(ValueError, match=r"MODEL\.HEADS\.NUM_STRIPES=4.*INPUT\.SIZE_TRAIN / INPUT\.SIZE_TEST"):
        sfe(torch.rand(1, 8, 6, 2))


@pytest.mark.parametrize("num_stages,num_stripes,suppress_stripes", [(3, 4, 1), (4, 8, 2)])
def test_cascade_suppresses_most_salient_kept_stripes_cumulatively(num_stages, num_stripes, suppress_stripes):
    torch.manual_seed(1)
    head = make_head(num_stages, num_stripes, suppress_stripes).train()
    rows = 2
    features = torch.rand(3, 4, num_stripes * rows, 2) + 0.1  # strictly positive: a zero stripe means suppressed
    stages = head.cascade(features)
    assert len(stages) == num_stages
    assert stages[0].x is features and bool(stages[0].kept.all())

    for t in range(1, num_stages):
        prev = stages[t - 1]
        for b in range(3):
            # Hand eq. 9: drop the n largest SFE weights among the previous stage's kept stripes.
            candidates = sorted((k for k in range(num_stripes) if prev.kept[b, k]),
                                key=lambda k: prev.weights[b, k].item(), reverse=True)
            suppressed = set(candidates[:suppress_stripes])
            expected = [bool(prev.kept[b, k]) and k not in suppressed for k in range(num_stripes)]
            assert stages[t].kept[b].tolist() == expected
        row_mask = stages[t].kept.repeat_interleave(rows, dim=1)[:, None, :, None]
        assert torch.equal(stages[t].x, features * row_mask)
        stripes = stages[t].x.view(3, 4, num_stripes, rows, 2)
        zero_stripes = (stripes == 0).all(dim=4).all(dim=3).all(dim=1)  # (B, K)
        assert zero_stripes.sum(dim=1).tolist() == [t * suppress_stripes] * 3
        # Once suppressed, a stripe stays zero in every later stage's input.
        for later in stages[t:]:
            later_stripes = later.x.view(3, 4, num_stripes, rows, 2).transpose(1, 2)  # (B, K, C, rows, W)
            assert bool((later_stripes[~stages[t].kept] == 0).all())


def test_suppressed_stripes_take_no_softmax_mass_even_when_their_descriptor_is_largest():
    head = make_head(num_stages=3).eval()
    for sfe in head.sfe:
        with torch.no_grad():
            sfe.descriptor[0].weight.fill_(-1.0)
            sfe.descriptor[1].bias.fill_(1.0)
    # Descriptor relu(1 - sum_c x): a zeroed stripe (descriptor 1) would outweigh every positive stripe.
    features = torch.rand(2, 4, 8, 2) * 0.1 + 0.01
    stages = head.cascade(features)
    for t in (1, 2):
        stage = stages[t]
        assert bool((stage.weights[~stage.kept] == 0).all())
        assert torch.allclose(stage.weights.sum(dim=1), torch.ones(2))
        # The kept stripes' weights are eq. 7's softmax over the kept stripes alone.
        z = head.sfe[t].descriptor(stage.x).view(2, 4, 2 * 2).mean(dim=2)
        for b in range(2):
            expected = z[b][stage.kept[b]].softmax(dim=0)
            assert torch.allclose(stage.weights[b][stage.kept[b]], expected)
    assert (~stages[2].kept).sum(dim=1).tolist() == [2, 2]


def test_stage_pools_are_avg_then_max_and_eval_concatenates_stages():
    torch.manual_seed(2)
    head = make_head(num_stages=3).eval()
    assert isinstance(head.stage_heads[0].pool_layer, GlobalAvgPool)
    assert all(isinstance(h.pool_layer, GlobalMaxPool) for h in head.stage_heads[1:])
    features = torch.randn(2, 4, 8, 2)
    stages = head.cascade(features)
    # No FC and no BNNeck: each stage's embedding is its pooled Y^t.
    expected = torch.cat([stages[0].y.mean(dim=(2, 3)), stages[1].y.amax(dim=(2, 3)),
                          stages[2].y.amax(dim=(2, 3))], dim=1)
    assert torch.allclose(head(features), expected)


def test_without_sfe_the_stage_feature_is_the_input():
    head = make_head(num_stages=1, with_sfe=False).eval()
    assert head.sfe is None
    features = torch.randn(2, 4, 8, 2)
    (stage,) = head.cascade(features)
    assert stage.y is features and stage.weights is None
    assert torch.allclose(head(features), features.mean(dim=(2, 3)))


@pytest.mark.parametrize("num_stages", [3, 4])
def test_descriptor_is_stages_times_embedding_dim(head_cfg, num_stages):
    head_cfg.MODEL.HEADS.NUM_STAGES = num_stages
    head = build_heads(head_cfg)
    assert isinstance(head, CascadedSuppressionHead) and len(head.sfe) == num_stages
    features = torch.randn(4, 8, 8, 4)
    head.train()
    outputs = head(features, torch.tensor([0, 1, 2, 3]))
    assert len(outputs) == num_stages
    for out in outputs:
        assert set(out) == {"cls_outputs", "pred_class_logits", "features"}
        assert out["cls_outputs"].shape == (4, 5) and out["features"].shape == (4, 6)
    head.eval()
    assert head(features).shape == (4, num_stages * 6)


def test_mask_carries_no_gradient():
    torch.manual_seed(3)
    head = make_head(num_stages=2).train()
    features = (torch.rand(2, 4, 8, 2) + 0.1).requires_grad_()
    stages = head.cascade(features)
    assert not any(s.kept.requires_grad for s in stages)
    stages[1].y.sum().backward()
    rows_suppressed = (~stages[1].kept).repeat_interleave(2, dim=1)  # (B, H)
    grad = features.grad.abs().sum(dim=(1, 3))  # (B, H)
    assert bool((grad[rows_suppressed] == 0).all())
    assert bool((grad[~rows_suppressed] > 0).all())
    # Stage 1's SFE chose the mask; a hard, detached mask gives it no gradient from stage 2.
    assert all(p.grad is None for p in head.sfe[0].parameters())
    assert all(p.grad is not None for p in head.sfe[1].parameters())


@pytest.mark.parametrize("key,value,message", [
    ("NUM_STAGES", 0, r"MODEL\.HEADS\.NUM_STAGES must be >= 1"),
    ("SUPPRESS_STRIPES", 0, r"MODEL\.HEADS\.SUPPRESS_STRIPES"),
    ("SUPPRESS_STRIPES", 4, r"MODEL\.HEADS\.SUPPRESS_STRIPES.*NUM_STRIPES=4"),
    ("NUM_STAGES", 5, r"MODEL\.HEADS\.NUM_STAGES=5.*SUPPRESS_STRIPES=1.*NUM_STRIPES=4"),
    ("WITH_SFE", False, r"MODEL\.HEADS\.WITH_SFE"),
])
def test_bad_cascade_configs_fail_at_build(head_cfg, key, value, message):
    head_cfg.MODEL.HEADS[key] = value
    with pytest.raises(ValueError, match=message):
        build_heads(head_cfg)


def test_largest_valid_cascade_keeps_one_stripe(head_cfg):
    head_cfg.MODEL.HEADS.NUM_STAGES = 4
    head = build_heads(head_cfg).eval()
    stages = head.cascade(torch.rand(1, 8, 8, 2) + 0.1)
    assert stages[-1].kept.sum().item() == 1


def test_head_rejects_height_not_divisible_by_stripes():
    with pytest.raises(ValueError, match=r"MODEL\.HEADS\.NUM_STRIPES=4.*INPUT\.SIZE_TRAIN"):
        make_head(num_stages=1, with_sfe=False)(torch.rand(1, 4, 6, 2))


def stage_head(embedding_dim, neck_feat, head_cls=None):
    from scsn.modeling.suppression import StageEmbeddingHead

    torch.manual_seed(4)
    return (head_cls or StageEmbeddingHead)(
        feat_dim=8, embedding_dim=embedding_dim, num_classes=3, neck_feat=neck_feat, pool_type="GlobalAvgPool",
        cls_type="Linear", scale=1, margin=0.0, with_bnneck=True, norm_type="BN").train()


@pytest.mark.parametrize("neck_feat", ["before", "after"])
def test_stage_head_routes_the_metric_feature(neck_feat):
    head = stage_head(6, neck_feat)
    features, targets = torch.randn(4, 8, 4, 2), torch.tensor([0, 0, 1, 1])
    out = head(features, targets)
    reduced = head.bottleneck[0](features.mean(dim=(2, 3), keepdim=True))  # FC reduction, (4, 6, 1, 1)
    neck = head.bottleneck[1](reduced)[..., 0, 0]  # BN neck (batch statistics in training)
    # 'before' is BoT's f_t in the reduced space: the FC output before the BN neck; 'after' is the BN neck's output.
    assert torch.allclose(out["features"], reduced[..., 0, 0] if neck_feat == "before" else neck, atol=1e-6)
    assert torch.allclose(out["pred_class_logits"], neck @ head.weight.t(), atol=1e-6)
    head.eval()
    assert torch.allclose(head(features), head.bottleneck(features.mean(dim=(2, 3), keepdim=True))[..., 0, 0],
                          atol=1e-6)


@pytest.mark.parametrize("neck_feat", ["before", "after"])
def test_stage_head_without_reduction_is_fastreids_embedding_head(neck_feat):
    from fastreid.modeling.heads import EmbeddingHead

    ours, theirs = stage_head(0, neck_feat), stage_head(0, neck_feat, EmbeddingHead)
    features, targets = torch.randn(4, 8, 4, 2), torch.tensor([0, 0, 1, 1])
    a, b = ours(features, targets), theirs(features, targets)
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_stage_head_rejects_an_unknown_neck_feat():
    with pytest.raises(ValueError, match="MODEL.HEADS.NECK_FEAT"):
        stage_head(0, "middle")
