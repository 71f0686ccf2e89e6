"""Bad input gives one clear error: offline pretrained weights, unreadable images (scsn/fastreid_patches/guards.py)."""
import pytest
import torch

from scsn.errors import PretrainedWeightsError, UnreadableImageError


def test_offline_pretrained_download_says_how_to_set_pretrain_path(cfg, tmp_path, monkeypatch):
    import gdown
    from fastreid.modeling.backbones import build_backbone

    def offline(*args, **kwargs):
        raise ConnectionError("Failed to resolve 'download.pytorch.org'")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(gdown, "download", offline)
    cfg.MODEL.BACKBONE.DEPTH = "18x"
    cfg.MODEL.BACKBONE.PRETRAIN = True
    with pytest.raises(PretrainedWeightsError, match="MODEL.BACKBONE.PRETRAIN_PATH"):
        build_backbone(cfg)


def test_pretrain_path_is_loaded(cfg, tmp_path):
    from fastreid.modeling.backbones import build_backbone

    cfg.MODEL.BACKBONE.DEPTH = "18x"
    reference = build_backbone(cfg)
    path = tmp_path / "r18.pth"
    torch.save(reference.state_dict(), path)
    cfg.MODEL.BACKBONE.PRETRAIN = True
    cfg.MODEL.BACKBONE.PRETRAIN_PATH = str(path)
    loaded = build_backbone(cfg)
    assert torch.equal(loaded.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)


def test_unreadable_image_names_the_file(tmp_path):
    from fastreid.data.common import CommDataset

    bad = tmp_path / "0001_c1s1_000001_00.jpg"
    bad.write_bytes(b"not a jpeg")
    dataset = CommDataset([(str(bad), 1, 1)], transform=None, relabel=False)
    with pytest.raises(UnreadableImageError, match="0001_c1s1_000001_00.jpg"):
        dataset[0]


def test_a_run_shorter_than_its_warm_up_keeps_a_cosine_schedule(cfg):
    """solver/build.py gives CosineAnnealingLR T_max = MAX_EPOCH - warm-up epochs, 0 for a one-epoch smoke run;
    torch's scheduler then divided by zero after the first epoch."""
    from fastreid.solver import build_lr_scheduler

    cfg.SOLVER.SCHED = "CosineAnnealingLR"
    cfg.SOLVER.MAX_EPOCH, cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.DELAY_EPOCHS = 1, 2, 0
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    cosine = build_lr_scheduler(cfg, optimizer, iters_per_epoch=3)["lr_sched"]
    assert cosine.T_max == 1
    cosine.step()
    cosine.step()
