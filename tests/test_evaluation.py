"""scsn.evaluation.chunked.ChunkedReidEvaluator against fast-reid's ReidEvaluator on the same predictions.

Most features here are +-1 vectors of dimension 64 (a random sign pattern per identity, each sign flipped
with probability 0.3: a weak identity signal). Their norms are exactly 8, so every cosine and euclidean
distance is exact in float32 whatever the order of the BLAS sums: a block of 37 query rows gives the same
distances as the whole matrix, and any difference in the results is a fault of the blocking itself (ties are
plentiful, so the per-row argsort must also break them as upstream does). Gaussian features, whose distances
BLAS may round differently for a block of rows than for the whole matrix, are checked where the block is the
whole query set.
"""
import logging

import numpy as np
import pytest
import torch

from fastreid.evaluation import rank
from fastreid.evaluation.query_expansion import aqe
from fastreid.evaluation.reid_evaluation import ReidEvaluator
from fastreid.utils.compute_dist import build_dist
from scsn.evaluation.chunked import (
    MIN_BLOCK_ROWS, ChunkedReidEvaluator, QueryBlockDistance, aqe_blockwise, block_slices, valid_queries,
)

# The stock euclidean distance (utils/compute_dist.py:183) calls a deprecated addmm_ overload.
pytestmark = pytest.mark.filterwarnings("ignore:This overload of addmm_ is deprecated:UserWarning")

NUM_QUERY, NUM_GALLERY, DIM, NUM_CAMS = 300, 3000, 64, 6
BLOCK_ROWS = 37  # 263 valid queries -> 7 blocks of 33 rows and 1 of 32


def sign_predictions(seed=0, num_query=NUM_QUERY, num_gallery=NUM_GALLERY, num_ids=100):
    """(features, pids, camids) of the queries then the gallery images; the last tenth of the query ids are not
    in the gallery."""
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.randint(0, 2, (num_ids, DIM), generator=g).float() * 2 - 1
    pids = torch.cat([
        torch.randint(0, num_ids, (num_query,), generator=g),
        torch.randint(0, num_ids - num_ids // 10, (num_gallery,), generator=g),
    ])
    flips = torch.where(torch.rand(pids.numel(), DIM, generator=g) < 0.3, -1.0, 1.0)
    camids = torch.randint(0, NUM_CAMS, (pids.numel(),), generator=g)
    return prototypes[pids] * flips, pids, camids


def evaluate(evaluator, features, pids, camids, batch=256):
    for start in range(0, features.size(0), batch):  # as inference_on_dataset feeds it, batch by batch
        end = start + batch
        evaluator.process({"targets": pids[start:end], "camids": camids[start:end]}, features[start:end])
    return evaluator.evaluate()


@pytest.fixture
def eval_cfg(cfg):
    cfg.TEST.AQE.ENABLED = False
    cfg.TEST.RERANK.ENABLED = False
    cfg.TEST.ROC.ENABLED = False
    return cfg


@pytest.fixture
def block_sizes(monkeypatch):
    """(query rows, valid queries) of every evaluate_rank call, in the order the calls end."""
    sizes = []
    upstream = rank.evaluate_rank

    def evaluate_rank(distmat, *args, **kwargs):
        cmc, all_AP, all_INP = upstream(distmat, *args, **kwargs)
        sizes.append((distmat.shape[0], len(all_AP)))
        return cmc, all_AP, all_INP

    monkeypatch.setattr(rank, "evaluate_rank", evaluate_rank)
    return sizes


def small_blocks(cfg):
    return ChunkedReidEvaluator(cfg, NUM_QUERY, chunk_bytes=4 * NUM_GALLERY * BLOCK_ROWS)


def test_block_slices_are_balanced():
    blocks = block_slices(10, 4)
    assert [(b.start, b.stop) for b in blocks] == [(0, 4), (4, 7), (7, 10)]
    assert block_slices(10, 10) == [slice(0, 10)]
    assert block_slices(5, 0) == [slice(i, i + 1) for i in range(5)]


def test_valid_queries_need_a_match_from_another_camera():
    g_pids, g_camids = np.array([1, 1, 2, 3]), np.array([0, 1, 0, 0])
    q_pids, q_camids = np.array([1, 2, 2, 4, 3]), np.array([0, 0, 1, 0, 1])
    assert valid_queries(q_pids, q_camids, g_pids, g_camids).tolist() == [True, False, True, False, True]


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_query_block_distance_is_build_dist(metric):
    g = torch.Generator().manual_seed(1)
    query, gallery = torch.randn(50, 768, generator=g), torch.randn(400, 768, generator=g)
    expected = build_dist(query, gallery, metric)
    distance = QueryBlockDistance(query, gallery, metric)
    np.testing.assert_array_equal(distance(torch.arange(50)), expected)  # one block: BLAS sums as upstream
    features, _, _ = sign_predictions()  # exact distances: any rows, any block size
    query, gallery = features[:50], features[50:450]
    rows = torch.tensor([7, 3, 7])
    expected = build_dist(query, gallery, metric)[rows]
    np.testing.assert_array_equal(QueryBlockDistance(query, gallery, metric)(rows), expected)


@pytest.mark.parametrize("use_cython", [True, False], ids=["cython", "python"])
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_blocks_give_the_stock_results(eval_cfg, block_sizes, monkeypatch, metric, use_cython):
    eval_cfg.TEST.METRIC = metric
    if not use_cython:
        monkeypatch.setattr(rank, "IS_CYTHON_AVAI", False)
    features, pids, camids = sign_predictions()
    expected = evaluate(ReidEvaluator(eval_cfg, NUM_QUERY), features, pids, camids)
    [(rows, num_valid)] = block_sizes
    block_sizes.clear()

    results = evaluate(small_blocks(eval_cfg), features, pids, camids)

    assert results == expected and list(results) == ["Rank-1", "Rank-5", "Rank-10", "mAP", "mINP", "metric"]
    assert all(type(results[k]) is type(expected[k]) for k in expected)
    # Queries without a cross-camera match are left out; the 263 valid ones come in 8 blocks, one ragged.
    assert rows == NUM_QUERY and num_valid == 263
    assert sorted(block_sizes) == [(32, 32)] + [(33, 33)] * 7
    assert 20 < expected["Rank-1"] < 90 and expected["mAP"] < expected["Rank-1"]  # a weak but real signal


def test_gaussian_features_one_block_give_the_stock_results(eval_cfg, block_sizes):
    g = torch.Generator().manual_seed(2)
    pids = torch.randint(0, 100, (NUM_QUERY + NUM_GALLERY,), generator=g)
    features = torch.randn(100, 768, generator=g)[pids] * 0.3 + torch.randn(pids.numel(), 768, generator=g)
    camids = torch.randint(0, NUM_CAMS, (pids.numel(),), generator=g)
    expected = evaluate(ReidEvaluator(eval_cfg, NUM_QUERY), features, pids, camids)
    assert evaluate(ChunkedReidEvaluator(eval_cfg, NUM_QUERY), features, pids, camids) == expected
    # Every query is valid and the default blocks are not smaller than MIN_BLOCK_ROWS: the one block is the
    # stock matrix product itself, bit for bit.
    assert block_sizes == [(NUM_QUERY, NUM_QUERY)] * 2


def test_blocks_shrink_to_feed_every_worker_down_to_min_block_rows(eval_cfg, block_sizes):
    num_query = 3 * MIN_BLOCK_ROWS
    features, pids, camids = sign_predictions(num_query=num_query, num_gallery=400, num_ids=20)
    expected = evaluate(ReidEvaluator(eval_cfg, num_query), features, pids, camids)
    block_sizes.clear()
    assert evaluate(ChunkedReidEvaluator(eval_cfg, num_query, num_workers=1), features, pids, camids) == expected
    assert block_sizes == [(694, 694)] * 2  # 1388 valid queries: 2 blocks for the worker
    block_sizes.clear()
    evaluate(ChunkedReidEvaluator(eval_cfg, num_query, num_workers=2), features, pids, camids)
    assert block_sizes == [(694, 694)] * 2  # not 4: they would be smaller than MIN_BLOCK_ROWS


def test_aqe_blockwise_is_upstream_aqe():
    features, _, _ = sign_predictions()
    query, gallery = features[:NUM_QUERY], features[NUM_QUERY:]
    # One expansion (QE_TIME 1) of sign vectors: the similarities are exact, so the expanded features are too.
    expected = aqe(query, gallery, qe_times=1, qe_k=5, alpha=3.0)
    blockwise = aqe_blockwise(query, gallery, qe_times=1, qe_k=5, alpha=3.0, max_rows=500)
    assert all(torch.equal(a, b) for a, b in zip(blockwise, expected))


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_aqe_blocks_give_the_stock_results(eval_cfg, block_sizes, metric):
    # ALPHA 1 and QE_K 4 keep the expanded sign features dyadic (multiples of 1/128), so their euclidean
    # distances stay exact. Their cosine distances are not exact (the norms are not powers of 2): that case
    # relies on the BLAS summing a 64-term dot product in one order for any number of rows, as MKL does.
    eval_cfg.TEST.METRIC = metric
    eval_cfg.TEST.AQE.ENABLED = True
    eval_cfg.TEST.AQE.QE_TIME, eval_cfg.TEST.AQE.QE_K, eval_cfg.TEST.AQE.ALPHA = 1, 4, 1.0
    features, pids, camids = sign_predictions(seed=3)
    expected = evaluate(ReidEvaluator(eval_cfg, NUM_QUERY), features, pids, camids)
    block_sizes.clear()
    results = evaluate(small_blocks(eval_cfg), features, pids, camids)
    assert len(block_sizes) > 1
    assert results == expected


@pytest.mark.parametrize("rerank", [False, True])
def test_roc_falls_back_to_the_stock_evaluator(eval_cfg, caplog, rerank):
    # Re-ranking alone is chunked (tests/test_rerank.py); with the ROC, upstream re-ranks and ranks.
    eval_cfg.merge_from_list(["TEST.ROC.ENABLED", True, "TEST.RERANK.ENABLED", rerank, "TEST.RERANK.K1", 6,
                              "TEST.RERANK.K2", 3])
    features, pids, camids = sign_predictions()
    features, pids, camids = features[:240], pids[:240], camids[:240]  # 40 queries, 200 gallery images
    expected = evaluate(ReidEvaluator(eval_cfg, 40), features, pids, camids)
    with caplog.at_level(logging.INFO, logger="scsn.evaluation.chunked"):
        results = evaluate(ChunkedReidEvaluator(eval_cfg, 40), features, pids, camids)
    assert results == expected and "TPR@FPR=1e-04" in results
    assert "TEST.ROC.ENABLED" in caplog.text and "whole query x gallery distance matrix" in caplog.text


def test_bad_metric_fails_at_build_time(eval_cfg):
    eval_cfg.TEST.METRIC = "jaccard"
    with pytest.raises(ValueError, match="TEST.METRIC"):
        ChunkedReidEvaluator(eval_cfg, NUM_QUERY)


def test_no_valid_query_fails_as_upstream(eval_cfg):
    features, pids, camids = sign_predictions()
    pids = torch.cat([pids[:NUM_QUERY] + 1000, pids[NUM_QUERY:]])
    with pytest.raises(AssertionError, match="all query identities do not appear in gallery"):
        evaluate(ChunkedReidEvaluator(eval_cfg, NUM_QUERY), features, pids, camids)
