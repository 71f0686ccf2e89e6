"""The fast paths (scsn/fastreid_patches/precision.py): AMP on the CPU as bf16 autocast with fp32 losses and weights, its
fp32 fallback on a CPU without bf16 units, channels_last with the eager NCHW outputs, checkpoints that move between
the paths."""
import logging
import os
import warnings

import pytest
import torch

from fastreid.engine.train_loop import AMPTrainer, SimpleTrainer
from fastreid.modeling import build_model
from fastreid.modeling.losses import triplet_loss
from fastreid.solver import build_optimizer
from fastreid.utils.events import EventStorage
from scsn.engine import build_config
from scsn.errors import ConfigError
from scsn.fastreid_patches import precision

from test_train_net import ROOT, TINY, metrics, train_net

CONFIG = os.path.join(ROOT, "configs", "Synthetic", "scsn_r18.yml")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path")


def small_cfg(*opts):
    return build_config(CONFIG, ["MODEL.DEVICE", "cpu", "MODEL.HEADS.NUM_CLASSES", 4, "INPUT.SIZE_TRAIN", [64, 32],
                                 "MODEL.HEADS.NUM_STRIPES", 4, *opts])


def batch(n=8):
    generator = torch.Generator().manual_seed(1)
    return {"images": torch.rand(n, 3, 64, 32, generator=generator) * 255, "targets": torch.arange(n) // 2}


def one_step(trainer_class, cfg, monkeypatch, units):
    """One training step from seed-0 weights on a fixed batch -> (loss dict, trainer)."""
    monkeypatch.setattr(precision, "bf16_units", lambda: units)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    optimizer, wrapper = build_optimizer(cfg, model)
    trainer = trainer_class(model, [batch()], optimizer, wrapper)
    trainer._data_loader_iter = iter([batch()])
    captured = {}
    trainer._write_metrics = lambda loss_dict, data_time: captured.update(loss_dict)
    with EventStorage(0) as storage:
        trainer.storage = storage
        trainer.run_step()
    return {k: v.item() for k, v in captured.items()}, trainer


@no_cuda
def test_bf16_step_has_finite_losses_close_to_fp32(monkeypatch, caplog):
    cfg = small_cfg("SOLVER.AMP.ENABLED", True, "MODEL.MEMORY_FORMAT", "contiguous")
    fp32, _ = one_step(SimpleTrainer, cfg, monkeypatch, [])
    with caplog.at_level(logging.INFO):
        bf16, trainer = one_step(AMPTrainer, cfg, monkeypatch, ["avx512_bf16"])
    assert trainer.cpu_dtype == torch.bfloat16
    assert "bf16 autocast" in caplog.text and "avx512_bf16" in caplog.text
    assert bf16.keys() == fp32.keys() and all(torch.isfinite(torch.tensor(v)) for v in bf16.values())
    for name in fp32:  # the same step in bf16: its losses within 3 % of fp32's
        assert bf16[name] == pytest.approx(fp32[name], rel=0.03), name
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # fp32 master weights


@no_cuda
def test_a_cpu_without_bf16_units_trains_in_fp32_with_one_warning(monkeypatch):
    cfg = small_cfg("SOLVER.AMP.ENABLED", True, "MODEL.MEMORY_FORMAT", "contiguous")
    fp32, _ = one_step(SimpleTrainer, cfg, monkeypatch, [])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        amp, trainer = one_step(AMPTrainer, cfg, monkeypatch, [])
    assert trainer.cpu_dtype is None
    assert [str(w.message) for w in caught if "bf16" in str(w.message)] and len(caught) == 1
    assert amp == fp32  # exactly the fp32 step


def test_losses_run_in_fp32_under_autocast():
    features = torch.randn(8, 16).bfloat16()
    targets = torch.arange(8) // 2
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = triplet_loss(features, targets, 0.3, True, True)
    assert loss.dtype == torch.float32
    assert torch.equal(loss, triplet_loss(features.float(), targets, 0.3, True, True))


@pytest.mark.parametrize("memory_format,amp,expected", [
    ("auto", False, False), ("auto", True, True), ("channels_last", False, True), ("contiguous", True, False)])
def test_memory_format_key(memory_format, amp, expected):
    cfg = small_cfg("MODEL.MEMORY_FORMAT", memory_format, "SOLVER.AMP.ENABLED", amp)
    model = build_model(cfg)
    assert model.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last) == expected
    optimizer, _ = build_optimizer(cfg, model)  # fast-reid's flat-buffer optimizer cannot hold channels_last weights
    assert all(p.is_contiguous(memory_format=torch.channels_last) == expected
               for p in model.parameters() if p.dim() == 4 and p.shape[2:] != (1, 1))


def test_channels_last_gives_the_eager_outputs_and_shares_checkpoints():
    torch.manual_seed(0)
    nchw = build_model(small_cfg("MODEL.MEMORY_FORMAT", "contiguous")).eval()
    nhwc = build_model(small_cfg("MODEL.MEMORY_FORMAT", "channels_last")).eval()
    nhwc.load_state_dict(nchw.state_dict())  # a checkpoint of one path loads into the other
    images = batch()["images"]
    with torch.no_grad():
        expected, out = nchw(images), nhwc(images)
    assert torch.allclose(out, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    back = build_model(small_cfg("MODEL.MEMORY_FORMAT", "contiguous")).eval()
    back.load_state_dict(nhwc.state_dict())
    with torch.no_grad():
        assert torch.equal(back(images), expected)


def test_bad_memory_format_names_the_key():
    cfg = small_cfg("MODEL.MEMORY_FORMAT", "nhwc")
    with pytest.raises(ConfigError, match="MODEL.MEMORY_FORMAT must be one of"):
        build_model(cfg)


@no_cuda
def test_train_net_trains_and_evaluates_in_bf16(tmp_path):
    """tools/train_net.py with SOLVER.AMP.ENABLED True: says which path it took, evaluates in fp32 from bf16
    features, and writes fp32 checkpoints that the fp32 path evaluates."""
    out = tmp_path / "out"
    common = ["--config-file", "configs/Synthetic/scsn_r18.yml", *TINY, "OUTPUT_DIR", str(out)]
    code, log = train_net(tmp_path / "data", *common, "SOLVER.MAX_EPOCH", "1", "SOLVER.AMP.ENABLED", "True")
    assert code == 0, log[-3000:]
    assert ("training and evaluating under bf16 autocast" in log) or ("has no bf16 units" in log)
    assert 0 <= metrics(out)["mAP"] <= 100
    checkpoint = torch.load(out / "model_final.pth", weights_only=True)["model"]
    assert all(v.dtype != torch.bfloat16 for v in checkpoint.values())
    code, log = train_net(tmp_path / "data", "--eval-only", *common, "MODEL.WEIGHTS", str(out / "model_final.pth"),
                          "OUTPUT_DIR", str(tmp_path / "fp32"))
    assert code == 0, log[-3000:]
