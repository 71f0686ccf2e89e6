"""Every shipped config merges, builds on the CPU and runs a training and an evaluation forward pass."""
import glob
import os

import pytest
import torch

import scsn
from fastreid.config import get_cfg
from fastreid.modeling import build_backbone, build_model
from fastreid.utils.events import EventStorage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "configs", "**", "*.yml"),
                                                             recursive=True))


def load(path):
    cfg = get_cfg()
    scsn.add_scsn_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, path))
    # Small input: 128x64 keeps a stage-4 height of 8 (stride 16), divisible by K = 8.
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.BACKBONE.PRETRAIN", False, "MODEL.HEADS.NUM_CLASSES", 4,
                         "INPUT.SIZE_TRAIN", [128, 64], "INPUT.SIZE_TEST", [128, 64]])
    return cfg


def test_every_config_file_is_found():
    assert "configs/SCSN/market_r50.yml" in CONFIGS and len(CONFIGS) > 40


# Configs that differ only in data or schedule build the same model: test each model once. Distiller configs need
# their teachers' runs: tests/test_distillation.py builds them with those.
_unique = {}
for _path in CONFIGS:
    if load(_path).MODEL.META_ARCHITECTURE != "Distiller":
        _unique.setdefault(load(_path).MODEL.dump(), _path)


@pytest.mark.parametrize("path", sorted(_unique.values()))
def test_config_builds_and_runs(path):
    cfg = load(path)
    torch.manual_seed(0)
    model = build_model(cfg)
    images = torch.rand(4, 3, 128, 64) * 255
    model.train()
    with EventStorage(0):
        losses = model({"images": images, "targets": torch.tensor([0, 0, 1, 1])})
    assert losses and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        features = model({"images": images[:2]})
    assert features.dim() == 2 and features.shape[0] == 2 and torch.isfinite(features).all()


@pytest.mark.parametrize("leaf,rows", [("market_r50.yml", 48), ("market_r50_stage3stride2.yml", 24)])
def test_paper_configs_give_the_papers_feature_map(leaf, rows):
    """§3.4: stages 3 and 4 at stride 1 give a 48x16 map at 384x128, six rows to each of the K = 8 stripes; the
    named stage3stride2 variant halves both sides."""
    cfg = get_cfg()
    scsn.add_scsn_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs", "SCSN", leaf))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.BACKBONE.PRETRAIN", False])
    assert tuple(cfg.INPUT.SIZE_TEST) == (384, 128) and cfg.MODEL.HEADS.NUM_STRIPES == 8
    backbone = build_backbone(cfg).eval()
    with torch.no_grad():
        feature_map = backbone(torch.rand(1, 3, 384, 128))
    assert feature_map.shape == (1, 2048, rows, rows // 3)  # 6 (or 3) rows in each of the 8 stripes


def test_paper_configs_pool_every_stage_with_its_own_learned_gem():
    """The shipped head pools each cascade stage with fast-reid's GeM, (mean x^p)^(1/p) with its own trainable p
    (3 at the start), which the training loss reaches."""
    cfg = load("configs/SCSN/market_r50.yml")
    cfg.merge_from_list(["MODEL.BACKBONE.DEPTH", "18x", "MODEL.BACKBONE.FEAT_DIM", 512,
                         "MODEL.BACKBONE.NMFF.VALUE_CHANNELS", 64, "MODEL.BACKBONE.NMFF.KEY_CHANNELS", 16])
    model = build_model(cfg)
    pools = [stage.pool_layer for stage in model.heads.stage_heads]
    assert len(pools) == 3 and len({id(p.p) for p in pools}) == 3
    x = torch.tensor([[[[1.0, 2.0], [0.0, 4.0]]]])
    assert torch.allclose(pools[1](x), ((1 + 8 + 1e-18 + 64) / 4) ** (1 / 3) * torch.ones(1, 1, 1, 1))
    model.train()
    with EventStorage(0):
        losses = model({"images": torch.rand(4, 3, 128, 64) * 255, "targets": torch.tensor([0, 0, 1, 1])})
    sum(losses.values()).backward()
    assert all(p.p.grad is not None and p.p.grad.abs().item() > 0 for p in pools)


# The CPU budget every synthetic config shares (configs/Synthetic/*.yml). fast-reid's configs inherit from one _BASE_
# each, which is the recipe (BoT, AGW, SBS, SCSN), so the budget is written in each recipe's leaf; the ablation rows
# inherit it from their leaf. This keeps the copies equal.
BUDGET = ("MODEL.BACKBONE.DEPTH", "MODEL.BACKBONE.FEAT_DIM", "MODEL.BACKBONE.PRETRAIN", "MODEL.FREEZE_LAYERS",
          "DATASETS.NAMES", "DATASETS.TESTS", "INPUT.SIZE_TRAIN", "INPUT.SIZE_TEST", "DATALOADER.NUM_INSTANCE",
          "DATALOADER.NUM_WORKERS", "SOLVER.AMP.ENABLED", "SOLVER.BASE_LR", "SOLVER.IMS_PER_BATCH", "SOLVER.MAX_EPOCH",
          "SOLVER.SCHED", "SOLVER.DELAY_EPOCHS", "SOLVER.ETA_MIN_LR", "SOLVER.WARMUP_FACTOR", "SOLVER.WARMUP_ITERS",
          "SOLVER.FREEZE_ITERS", "SOLVER.CHECKPOINT_PERIOD", "TEST.EVAL_PERIOD", "TEST.IMS_PER_BATCH")
SYNTHETIC = [p for p in CONFIGS if p.startswith("configs/Synthetic/")]


def budget(path):
    cfg = get_cfg()
    scsn.add_scsn_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, path))
    values = {}
    for key in BUDGET:
        node = cfg
        for part in key.split("."):
            node = node[part]
        values[key] = node
    return values


def test_every_synthetic_config_has_the_same_cpu_budget():
    assert len(SYNTHETIC) >= 20  # five recipes' leaves and the ablation rows
    reference = budget("configs/Synthetic/scsn_r18.yml")
    for path in SYNTHETIC:
        assert budget(path) == reference, path
