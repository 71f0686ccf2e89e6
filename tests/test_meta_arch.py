"""SCSN meta-architecture: per-stage losses (eqs. 10-12), descriptor, gradients, input handling, build checks."""
import math

import pytest
import torch

from fastreid.modeling.backbones import BACKBONE_REGISTRY, build_backbone
from fastreid.modeling.losses import cross_entropy_loss, triplet_loss
from fastreid.modeling.meta_arch import build_model
from fastreid.utils.events import EventStorage
from scsn.modeling.meta_arch import SCSN, resnet_feature_height
from scsn.modeling.suppression import CascadedSuppressionHead

TARGETS = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])


@pytest.fixture
def scsn_cfg(cfg):
    """R18 SCSN at 64x32: the stage-4 map is 4 x 2 (LAST_STRIDE 1), split into K = 4 stripes."""
    cfg.MODEL.META_ARCHITECTURE = "SCSN"
    cfg.MODEL.BACKBONE.DEPTH = "18x"
    cfg.MODEL.BACKBONE.FEAT_DIM = 512
    cfg.MODEL.BACKBONE.LAST_STRIDE = 1
    cfg.MODEL.HEADS.NAME = "CascadedSuppressionHead"
    cfg.MODEL.HEADS.NUM_CLASSES = 4
    cfg.MODEL.HEADS.EMBEDDING_DIM = 32
    cfg.MODEL.HEADS.WITH_BNNECK = True
    cfg.MODEL.HEADS.NECK_FEAT = "after"
    cfg.MODEL.HEADS.NUM_STRIPES = 4
    cfg.MODEL.HEADS.NUM_STAGES = 3
    cfg.MODEL.LOSSES.NAME = ("CrossEntropyLoss", "TripletLoss")
    cfg.MODEL.LOSSES.CE.EPSILON = 0.1
    cfg.MODEL.LOSSES.TRI.MARGIN = 0.3
    cfg.MODEL.LOSSES.TRI.HARD_MINING = True
    cfg.INPUT.SIZE_TRAIN = [64, 32]
    cfg.INPUT.SIZE_TEST = [64, 32]
    return cfg


def batch(seed=0):
    torch.manual_seed(seed)
    return {"images": torch.rand(8, 3, 64, 32) * 255, "targets": TARGETS.clone()}


@pytest.mark.parametrize("last_stride", [1, 2])
def test_feature_height_arithmetic_matches_resnet_forward(cfg, last_stride):
    cfg.MODEL.BACKBONE.DEPTH = "18x"
    cfg.MODEL.BACKBONE.LAST_STRIDE = last_stride
    backbone = build_backbone(cfg).eval()
    with torch.no_grad():
        for height in (32, 45, 64, 97, 130):
            actual = backbone(torch.zeros(1, 3, height, 16)).shape[2]
            assert resnet_feature_height(height, 2, last_stride) == actual, height


def test_training_losses_are_weighted_per_stage(scsn_cfg):
    scsn_cfg.MODEL.LOSSES.STAGE_WEIGHTS = [1.0, 0.5, 0.25]
    scsn_cfg.MODEL.LOSSES.CE.SCALE = 2.0
    model = build_model(scsn_cfg).train()
    assert isinstance(model, SCSN) and isinstance(model.heads, CascadedSuppressionHead)
    inputs = batch()
    with EventStorage(0) as storage:
        losses = model(inputs)
        accuracy = storage.latest()["cls_accuracy"][0]
    assert set(losses) == {f"loss_{kind}_s{t}" for kind in ("cls", "triplet") for t in (1, 2, 3)}
    assert all(math.isfinite(v.item()) for v in losses.values())
    assert 0.0 <= accuracy <= 1.0

    # Same batch again (train-mode BN uses batch statistics, so the outputs are the same): hand eq. 12.
    outputs = model.heads(model.backbone(model.preprocess_image(inputs)), TARGETS)
    expected_total = 0.0
    for t, (out, weight) in enumerate(zip(outputs, [1.0, 0.5, 0.25]), start=1):
        cls = 2.0 * weight * cross_entropy_loss(out["cls_outputs"], TARGETS, 0.1, 0.2)
        tri = weight * triplet_loss(out["features"], TARGETS, 0.3, False, True)
        assert torch.allclose(losses[f"loss_cls_s{t}"], cls, rtol=1e-4)
        assert torch.allclose(losses[f"loss_triplet_s{t}"], tri, rtol=1e-4)
        expected_total = expected_total + cls + tri
    # fast-reid's trainer backpropagates sum(loss_dict.values()).
    assert torch.allclose(sum(losses.values()), expected_total, rtol=1e-4)


def test_every_trainable_parameter_gets_a_gradient(scsn_cfg):
    model = build_model(scsn_cfg).train()
    with EventStorage(0):
        losses = model(batch(1))
    sum(losses.values()).backward()
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    for t in range(3):  # the per-stage modules named in §3.3-3.4
        for name in (f"heads.sfe.{t}.descriptor.0.weight", f"heads.sfe.{t}.descriptor.1.weight",
                     f"heads.sfe.{t}.descriptor.1.bias", f"heads.stage_heads.{t}.bottleneck.0.weight",
                     f"heads.stage_heads.{t}.bottleneck.1.weight", f"heads.stage_heads.{t}.weight"):
            assert name in trainable
    no_grad = [name for name, p in trainable.items() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert no_grad == []


@pytest.mark.parametrize("num_stages", [3, 4])
def test_eval_returns_concatenated_stage_descriptor(scsn_cfg, num_stages):
    scsn_cfg.MODEL.HEADS.NUM_STAGES = num_stages
    model = build_model(scsn_cfg).eval()
    with torch.no_grad():
        features = model(batch())
    assert features.shape == (8, num_stages * 32)


def test_normalisation_is_out_of_place(scsn_cfg):
    model = build_model(scsn_cfg)
    inputs = batch()
    original = inputs["images"].clone()
    expected = (original - model.pixel_mean) / model.pixel_std
    assert torch.equal(model.preprocess_image(inputs), expected)
    with EventStorage(0):
        model.train()(inputs)
    with torch.no_grad():
        model.eval()(inputs)
    assert torch.equal(inputs["images"], original)


@pytest.mark.parametrize("key,value,message", [
    ("MODEL.LOSSES.STAGE_WEIGHTS", [1.0, 1.0], r"MODEL\.LOSSES\.STAGE_WEIGHTS has 2 entries.*NUM_STAGES is 3"),
    # 64 rows -> 4-row map, not divisible by 8 stripes.
    ("MODEL.HEADS.NUM_STRIPES", 8, r"INPUT\.SIZE_TRAIN height 64.*LAST_STRIDE=1.*MODEL\.HEADS\.NUM_STRIPES=8"),
    # 72 rows -> 5-row map.
    ("INPUT.SIZE_TEST", [72, 32], r"INPUT\.SIZE_TEST height 72 gives a 5-row.*STAGE3_STRIDE=2.*NUM_STRIPES=4"),
    ("MODEL.HEADS.NUM_STAGES", 0, r"MODEL\.HEADS\.NUM_STAGES must be >= 1"),
    ("MODEL.HEADS.SUPPRESS_STRIPES", 4, r"MODEL\.HEADS\.SUPPRESS_STRIPES"),
    ("MODEL.HEADS.NAME", "EmbeddingHead", r"MODEL\.HEADS\.NAME CascadedSuppressionHead"),
    ("MODEL.LOSSES.NAME", ("FocalLoss",), r"MODEL\.LOSSES\.NAME"),
])
def test_bad_configs_fail_at_build(scsn_cfg, key, value, message):
    scsn_cfg.merge_from_list([key, value])
    with pytest.raises(ValueError, match=message):
        build_model(scsn_cfg)


def test_crop_size_sets_the_checked_height(scsn_cfg):
    scsn_cfg.INPUT.CROP.ENABLED = True
    scsn_cfg.INPUT.CROP.SIZE = [72, 32]
    with pytest.raises(ValueError, match=r"INPUT\.CROP\.SIZE height 72"):
        build_model(scsn_cfg)


@pytest.mark.skipif("build_scsn_resnet_backbone" not in BACKBONE_REGISTRY._obj_map,
                    reason="scsn.backbone is not registered")
def test_full_scsn_model_with_scsn_backbone(scsn_cfg):
    scsn_cfg.MODEL.BACKBONE.NAME = "build_scsn_resnet_backbone"
    model = build_model(scsn_cfg).train()
    with EventStorage(0):
        losses = model(batch())
    assert len(losses) == 6 and all(math.isfinite(v.item()) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        assert model(batch()).shape == (8, 3 * 32)


def test_nan_loss_stops_training_before_the_update_and_names_the_losses(scsn_cfg):
    from fastreid.engine.train_loop import SimpleTrainer
    from fastreid.solver import build_optimizer

    model = build_model(scsn_cfg).train()
    optimizer, param_wrapper = build_optimizer(scsn_cfg, model)
    data = batch()
    data["images"][0, :, :, :] = float("nan")
    trainer = SimpleTrainer(model, iter([data]), optimizer, param_wrapper)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with EventStorage(0) as storage:
        trainer.storage, trainer.iter = storage, 0
        with pytest.raises(FloatingPointError, match="loss_cls_s1"):
            trainer.run_step()
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def _merged(path, *opts):
    from fastreid.config import get_cfg

    import scsn

    c = get_cfg()
    scsn.add_scsn_config(c)
    c.merge_from_file(path)
    c.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.BACKBONE.PRETRAIN", False, "MODEL.HEADS.NUM_CLASSES", 4,
                       "INPUT.SIZE_TRAIN", [64, 32], "INPUT.SIZE_TEST", [64, 32], "MODEL.HEADS.NUM_STRIPES", 4,
                       *opts])
    return c


def test_scsn_with_every_module_off_is_fastreids_baseline():
    """No attention, no NMFF, one stage without SFE, BoT's head: the same weights give fast-reid's Baseline (BoT)
    descriptor and losses, so any difference between SCSN and BoT comes from SCSN's own modules."""
    off = ["MODEL.BACKBONE.RDAM.MODE", "none", "MODEL.BACKBONE.NMFF.STAGES", [], "MODEL.HEADS.WITH_SFE", False,
           "MODEL.BACKBONE.STAGE3_STRIDE", 2,
           "MODEL.HEADS.NUM_STAGES", 1, "MODEL.HEADS.EMBEDDING_DIM", 0, "MODEL.HEADS.NECK_FEAT", "before",
           "MODEL.HEADS.POOL_LAYER", "GlobalAvgPool", "MODEL.LOSSES.TRI.MARGIN", 0.3, "MODEL.LOSSES.TRI.NORM_FEAT", False,
           "MODEL.HEADS.CLS_LAYER", "Linear", "MODEL.HEADS.SCALE", 1, "MODEL.HEADS.MARGIN", 0.0]
    torch.manual_seed(0)
    scsn_model = build_model(_merged("configs/Synthetic/scsn_r18.yml", *off))
    bot = build_model(_merged("configs/Synthetic/bagtricks_r18.yml"))
    state = {k.replace("heads.stage_heads.0.", "heads."): v for k, v in scsn_model.state_dict().items()}
    bot.load_state_dict(state, strict=True)  # every parameter and buffer maps one to one

    scsn_model.train(), bot.train()
    with EventStorage(0):
        expected, actual = bot(batch()), scsn_model(batch())
    assert {k: v.item() for k, v in actual.items()} == pytest.approx(
        {f"{k}_s1": v.item() for k, v in expected.items()}, rel=1e-6)
    scsn_model.eval(), bot.eval()
    with torch.no_grad():
        assert torch.allclose(scsn_model(batch(1)), bot(batch(1)), atol=1e-6)
