"""Each patch of scsn/fastreid_patches/compat.py against the breakage it mends (docs/fastreid_1.4.0.md, numbered
there)."""
import collections
import importlib
import logging
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import scsn
from scsn.engine.defaults import resolve_device
from scsn.fastreid_patches import compat

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only patch")


def test_fastreid_imports_on_this_stack():
    from torch._six import string_classes

    assert str in string_classes
    assert collections.Mapping is collections.abc.Mapping
    for name in ("fastreid.data", "fastreid.engine", "fastreid.evaluation", "fastreid.modeling"):
        importlib.import_module(name)


def test_apply_is_idempotent():
    import fastreid.solver

    before = fastreid.solver.build_optimizer
    compat.apply()
    compat._patch_zero_grad()
    assert fastreid.solver.build_optimizer is before


def _tiny_baseline(cfg):
    from fastreid.modeling import build_model

    cfg.MODEL.BACKBONE.DEPTH = "18x"
    cfg.MODEL.BACKBONE.FEAT_DIM = 512
    cfg.MODEL.HEADS.NUM_CLASSES = 4
    cfg.MODEL.HEADS.WITH_BNNECK = True
    cfg.MODEL.LOSSES.NAME = ("CrossEntropyLoss", "TripletLoss")
    cfg.MODEL.LOSSES.TRI.HARD_MINING = True
    return build_model(cfg)


def test_training_step_moves_parameters(cfg):
    """(4) torch>=2 zero_grad(set_to_none=True) + ContiguousParams: a step changed 0 of 63 parameters."""
    from fastreid.engine import SimpleTrainer
    from fastreid.solver import build_optimizer
    from fastreid.utils.events import EventStorage

    model = _tiny_baseline(cfg)
    optimizer, param_wrapper = build_optimizer(cfg, model)  # contiguous=True, fast-reid's default
    torch.manual_seed(0)
    batch = {"images": torch.rand(8, 3, 64, 32) * 255, "targets": torch.arange(4).repeat_interleave(2)}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = SimpleTrainer(model, [batch] * 3, optimizer, param_wrapper)
    with EventStorage(0) as storage:
        for it in range(2):
            trainer.iter = storage.iter = it
            trainer.run_step()
    moved = [n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert len(moved) >= len(trainable) - 1, f"only {len(moved)} of {len(trainable)} parameters moved"
    assert "backbone.conv1.weight" in moved and "heads.weight" in moved


@no_cuda
def test_data_loader_runs_on_cpu():
    """(3) DataLoaderX created a CUDA stream in __init__ and moved batches to the GPU."""
    from fastreid.data.build import build_reid_train_loader, fast_batch_collator  # noqa: F401
    from fastreid.data.samplers import TrainingSampler

    data = [{"images": torch.full((3, 4, 2), float(i)), "targets": i} for i in range(6)]
    loader = build_reid_train_loader(data, sampler=TrainingSampler(6), total_batch_size=4, num_workers=0)
    batch = next(iter(loader))
    assert batch["images"].shape == (4, 3, 4, 2) and batch["images"].device.type == "cpu"
    assert not loader.pin_memory


def test_random_affine_builds_and_runs(cfg):
    """(9) RandomAffine(resample=..., fillcolor=...) is gone from torchvision >= 0.13."""
    from fastreid.data.transforms import build_transforms

    cfg.INPUT.AFFINE.ENABLED = True
    cfg.INPUT.SIZE_TRAIN = [32, 16]
    out = build_transforms(cfg, is_train=True)(Image.new("RGB", (16, 32), (200, 10, 10)))
    assert out.shape == (3, 32, 16)


def test_missing_cython_build_warns_and_never_exits(caplog):
    """(5) rank_cylib.compile_helper called sys.exit(1) when `make` failed."""
    from fastreid.evaluation import reid_evaluation

    with caplog.at_level(logging.WARNING):
        reid_evaluation.compile_helper()
    assert "Python ranking" in caplog.text


def _ranking_problem(num_q=6, num_g=7, seed=0):
    rng = np.random.default_rng(seed)
    q_pids = np.arange(num_q, dtype=np.int64) % 3
    g_pids = rng.integers(0, 4, num_g).astype(np.int64)
    q_cams = np.zeros(num_q, dtype=np.int64)
    g_cams = rng.integers(0, 3, num_g).astype(np.int64)
    g_pids[:3], g_cams[:3] = [0, 1, 2], [1, 1, 2]  # every query id has a cross-camera match
    dist = rng.random((num_q, num_g)).astype(np.float32)
    return dist, q_pids, g_pids, q_cams, g_cams


def test_python_ranking_with_a_gallery_smaller_than_max_rank():
    """(12) Python ranking: `inhomogeneous shape` when a query keeps fewer than max_rank (50) items."""
    from fastreid.evaluation.rank import IS_CYTHON_AVAI, evaluate_rank

    problem = _ranking_problem()
    cmc, all_ap, all_inp = evaluate_rank(*problem, use_cython=False)
    assert cmc.shape == (7,) and cmc[-1] == 1.0  # max_rank capped at the gallery size, as upstream and len(all_ap) == 6

    # Hand check of the first query's AP: the ranked gallery without same-id-same-camera items.
    dist, q_pids, g_pids, q_cams, g_cams = problem
    order = np.argsort(dist[0])
    keep = ~((g_pids[order] == q_pids[0]) & (g_cams[order] == q_cams[0]))
    hits = (g_pids[order] == q_pids[0])[keep]
    precision = np.cumsum(hits) / np.arange(1, hits.size + 1)
    assert all_ap[0] == pytest.approx((precision * hits).sum() / hits.sum())
    if IS_CYTHON_AVAI:
        cy_cmc, cy_ap, cy_inp = evaluate_rank(*problem, use_cython=True)
        np.testing.assert_allclose(cmc, cy_cmc, rtol=1e-6)
        np.testing.assert_allclose(all_ap, cy_ap, rtol=1e-6)
        np.testing.assert_allclose(all_inp, cy_inp, rtol=1e-6)


def test_python_cuhk03_metric_on_this_numpy():
    """(13) the Python CUHK03 metric raised AttributeError on numpy 1.24-1.26 (np.bool). With one gallery image per
    identity its random pick of one image per identity keeps them all, so it equals the Market-1501 metric."""
    from fastreid.evaluation.rank import evaluate_rank

    rng = np.random.default_rng(0)
    dist = rng.random((4, 6)).astype(np.float32)
    q_pids, q_cams = np.array([0, 1, 2, 2]), np.zeros(4, dtype=np.int64)
    g_pids, g_cams = np.arange(6), np.array([1, 1, 2, 0, 1, 2])
    cmc, mean_ap = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, 5, use_metric_cuhk03=True, use_cython=False)
    market_cmc, all_ap, _ = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, 5, use_cython=False)
    np.testing.assert_allclose(cmc, market_cmc, rtol=1e-6)
    assert mean_ap == pytest.approx(np.mean(all_ap))


def test_k_reciprocal_rerank_on_cpu(cfg):
    """(6) jaccard re-ranking moved features to CUDA and asked faiss for GPU resources."""
    from fastreid.evaluation import ReidEvaluator

    cfg.TEST.RERANK.ENABLED = True
    cfg.TEST.RERANK.K1, cfg.TEST.RERANK.K2 = 4, 2
    torch.manual_seed(0)
    pids = torch.arange(4).repeat(6)
    feats = torch.randn(4, 16)[pids] + 0.3 * torch.randn(24, 16)
    evaluator = ReidEvaluator(cfg, num_query=4)
    evaluator.process({"targets": pids, "camids": torch.arange(24) // 4}, feats)
    results = evaluator.evaluate()
    assert results["Rank-1"] == pytest.approx(100.0)
    assert 0 <= results["mAP"] <= 100


@no_cuda
def test_cuda_config_runs_on_cpu_with_one_warning(cfg):
    """MODEL.DEVICE cuda on a machine without CUDA (SOLVER.AMP.ENABLED stays: bf16 on the CPU, test_precision.py)."""
    cfg.MODEL.DEVICE = "cuda"
    cfg.SOLVER.AMP.ENABLED = True
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resolve_device(cfg)
    assert len(caught) == 1 and "MODEL.DEVICE" in str(caught[0].message)
    assert cfg.MODEL.DEVICE == "cpu" and cfg.SOLVER.AMP.ENABLED


def test_resolve_device_leaves_a_cpu_config_alone(cfg):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resolve_device(cfg)
    assert cfg.MODEL.DEVICE == "cpu"


def test_scsn_exports_config_hook():
    assert callable(scsn.add_scsn_config)


@pytest.mark.parametrize("mode", ["RGB", "L", "F", "I", "I;16", "1", "P"])
def test_to_tensor_matches_torchvision_layout_without_warnings(mode):
    """(10) numpy 2 refused copy=False for I;16 and 1; ByteStorage.from_buffer warned for every RGB image."""
    from fastreid.data.transforms import ToTensor

    rng = np.random.default_rng(0)
    if mode in ("RGB",):
        pic = Image.fromarray(rng.integers(0, 256, (5, 3, 3), dtype=np.uint8), mode)
    elif mode == "F":
        pic = Image.fromarray(rng.random((5, 3), dtype=np.float32), mode)
    elif mode == "I":
        pic = Image.fromarray(rng.integers(0, 2 ** 20, (5, 3), dtype=np.int32), mode)
    else:
        pic = Image.fromarray(rng.integers(0, 256, (5, 3), dtype=np.uint8), "L").convert(mode)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = ToTensor()(pic)
    expected = torch.from_numpy(np.array(pic).astype(np.float64))
    expected = expected * 255 if mode == "1" else expected
    expected = expected.reshape(5, 3, -1).permute(2, 0, 1)
    assert out.shape == expected.shape
    assert torch.equal(out.double(), expected) if mode != "I;16" else torch.equal(out.long(), expected.long())


def test_baseline_normalises_out_of_place(cfg):
    """modeling/meta_arch/baseline.py:130 normalised the caller's images in place: a second forward on the same
    tensor (fast-reid's flip test, an ONNX parity check) saw them normalised twice."""
    from fastreid.modeling import build_model

    cfg.MODEL.BACKBONE.DEPTH = "18x"
    cfg.MODEL.BACKBONE.FEAT_DIM = 512
    model = build_model(cfg).eval()
    images = torch.rand(2, 3, 64, 32) * 255
    original = images.clone()
    with torch.no_grad():
        first, second = model(images), model(images)
    assert torch.equal(images, original) and torch.equal(first, second)
