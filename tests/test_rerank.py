"""scsn.evaluation.rerank against fast-reid's own re-ranking: ``compute_jaccard_distance`` (utils/compute_dist.py) mixed
with the original distance by LAMBDA, and ``ReidEvaluator`` with TEST.RERANK.ENABLED; the bad settings; the re-ranked
search of a gallery index.

The random sets hold exact duplicates (a query repeated in the gallery, a run of identical gallery images) and, rounded
to halves, many tied distances, so the neighbour lists must break ties as upstream's faiss search does.
"""
import faiss
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastreid.evaluation.reid_evaluation import ReidEvaluator
from fastreid.utils.compute_dist import build_dist, compute_jaccard_distance
from scsn.errors import ArgumentError, ConfigError
from scsn.evaluation.chunked import ChunkedReidEvaluator, QueryBlockDistance
from scsn.evaluation.rerank import RerankedDistance, check_settings, nearest_neighbours
from scsn.inference.retrieval import GalleryIndex

# The stock euclidean distance (utils/compute_dist.py:183) calls a deprecated addmm_ overload.
pytestmark = pytest.mark.filterwarnings("ignore:This overload of addmm_ is deprecated:UserWarning")


def tied_features(num_query=40, num_gallery=260, dim=32, num_ids=30, seed=0):
    """(features, pids, camids): queries then gallery images, with duplicates and ties (module docstring)."""
    g = torch.Generator().manual_seed(seed)
    pids = torch.randint(0, num_ids, (num_query + num_gallery,), generator=g)
    features = torch.randn(num_ids, dim, generator=g)[pids] * 0.7 + torch.randn(pids.numel(), dim, generator=g)
    features[num_query + 5:num_query + 9] = features[3]  # query 3 four times in the gallery
    pids[num_query + 5:num_query + 9] = pids[3]
    features[num_query + 20:num_query + 45] = features[num_query + 10]  # 26 identical gallery images (> k1)
    pids[num_query + 20:num_query + 45] = pids[num_query + 10]
    camids = torch.randint(0, 6, (pids.numel(),), generator=g)
    return torch.round(features * 2) / 2, pids, camids


def upstream_reranked(query, gallery, metric, k1, k2, lambda_value):
    """reid_evaluation.py:91-104: fast-reid's dense re-ranked query x gallery distance."""
    dist = build_dist(query, gallery, metric)
    if metric == "cosine":
        query, gallery = F.normalize(query, dim=1), F.normalize(gallery, dim=1)
    return build_dist(query, gallery, "jaccard", k1=k1, k2=k2) * (1 - lambda_value) + dist * lambda_value


def test_nearest_neighbours_are_upstreams_search_ties_included():
    features, _, _ = tied_features(num_query=100, num_gallery=8900)
    x = features.numpy()
    index = faiss.IndexFlatL2(x.shape[1])  # upstream's CPU search (compute_dist.py:94-97)
    index.add(x)
    _, expected = index.search(x, 20)
    # Blocks of 4096 rows: 8192 then 808 rows, too few for faiss's BLAS path alone, so they join the block before.
    np.testing.assert_array_equal(nearest_neighbours(x, 20, block_rows=4096), expected)
    assert (expected[:, 0] != np.arange(len(x))).any()  # duplicates: some image is not its own first neighbour


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("k1, k2, lambda_value", [(20, 6, 0.3), (7, 1, 0.0), (5, 8, 1.0), (1, 1, 0.5),
                                                  (12, 3, 0.7), (30, 30, 0.3)])
def test_reranked_distance_is_upstreams(metric, k1, k2, lambda_value):
    features, _, _ = tied_features()
    query, gallery = features[:40], features[40:]
    expected = upstream_reranked(query, gallery, metric, k1, k2, lambda_value)
    distance = RerankedDistance(QueryBlockDistance(query, gallery, metric, joint=True), k1, k2, lambda_value)
    rows = np.array([39, 3, 0, 17])  # any rows, in any order
    np.testing.assert_allclose(distance(rows), expected[rows], rtol=0, atol=2e-6)
    np.testing.assert_allclose(distance(np.arange(40)), expected, rtol=0, atol=2e-6)
    if lambda_value < 1:  # the Jaccard term takes part: it is not the original distance
        assert np.abs(expected - build_dist(query, gallery, metric)).max() > 0.05


def evaluate(evaluator, features, pids, camids, batch=64):
    for start in range(0, features.size(0), batch):
        end = start + batch
        evaluator.process({"targets": pids[start:end], "camids": camids[start:end]}, features[start:end])
    return evaluator.evaluate()


@pytest.fixture
def rerank_cfg(cfg):
    cfg.merge_from_list(["TEST.RERANK.ENABLED", True, "TEST.RERANK.K1", 12, "TEST.RERANK.K2", 4,
                         "TEST.RERANK.LAMBDA", 0.3, "TEST.AQE.ENABLED", False, "TEST.ROC.ENABLED", False])
    return cfg


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_chunked_evaluator_reranks_as_fast_reid(rerank_cfg, metric):
    rerank_cfg.TEST.METRIC = metric
    features, pids, camids = tied_features(num_query=120, num_gallery=600, num_ids=60, seed=1)
    expected = evaluate(ReidEvaluator(rerank_cfg, 120), features, pids, camids)
    # Blocks of 16 query rows: the re-ranked rows of several blocks, ranked and merged.
    chunked = ChunkedReidEvaluator(rerank_cfg, 120, chunk_bytes=4 * 600 * 16)
    results = evaluate(chunked, features, pids, camids)
    assert list(results) == list(expected)
    for key in expected:
        assert abs(results[key] - expected[key]) <= 0.05, key
    rerank_cfg.TEST.RERANK.ENABLED = False
    plain = evaluate(ChunkedReidEvaluator(rerank_cfg, 120), features, pids, camids)
    assert plain["mAP"] != expected["mAP"] and plain["mINP"] != expected["mINP"]  # re-ranking changed them


@pytest.mark.parametrize("key, value, message", [
    ("TEST.RERANK.LAMBDA", 1.5, r"TEST.RERANK.LAMBDA .* must lie in \[0, 1\], got 1.5"),
    ("TEST.RERANK.LAMBDA", -0.1, r"must lie in \[0, 1\]"),
    ("TEST.RERANK.K2", 0, "TEST.RERANK.K2 must be a positive integer, got 0"),
])
def test_bad_settings_fail_before_inference(rerank_cfg, key, value, message):
    rerank_cfg.merge_from_list([key, value])
    with pytest.raises(ConfigError, match=message):
        ChunkedReidEvaluator(rerank_cfg, 40)


@pytest.mark.parametrize("key, num_query, message", [
    ("TEST.RERANK.K1", 40, r"TEST.RERANK.K1 \(261\) is larger than the gallery \(260 images\)"),
    ("TEST.RERANK.K2", 40, r"TEST.RERANK.K2 \(261\) is larger than the gallery"),
    (None, 0, "the query set is empty"),
])
def test_sets_too_small_fail_with_one_line(rerank_cfg, key, num_query, message):
    if key:
        rerank_cfg.merge_from_list([key, 261])
    features, pids, camids = tied_features()
    with pytest.raises(ConfigError, match=message):
        evaluate(ChunkedReidEvaluator(rerank_cfg, num_query), features[40 - num_query:], pids[40 - num_query:],
                 camids[40 - num_query:])


def test_check_settings_names_the_caller_s_options():
    with pytest.raises(ArgumentError, match="--k1 must be a positive integer, got 2.5"):
        check_settings(2.5, 6, 0.3, 1, 10, names=("--k1", "--k2", "--lambda"), error=ArgumentError)
    check_settings(10, 10, 0.0, 1, 10)  # the bounds themselves are valid
    check_settings(10, 10, 1.0, 1, 10)


def unit_rows(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_gallery_index_keeps_the_gallery_s_neighbour_lists(tmp_path):
    gallery = unit_rows(np.random.default_rng(0).normal(size=(300, 16)).astype(np.float32))
    index = GalleryIndex(16, "flat", use_gpu=False, neighbours=12)
    index.add(gallery[:5], [f"g{i}.jpg" for i in range(5)])  # fewer images than lists are long
    index.save(str(tmp_path / "g.faiss"))
    index = GalleryIndex.load(str(tmp_path / "g.faiss"), use_gpu=False)
    index.add(gallery[5:200], [f"g{i}.jpg" for i in range(5, 200)])
    index.add(gallery[200:], [f"g{i}.jpg" for i in range(200, 300)])
    # Searched at once over the final gallery, normalised once more as re-ranking normalises it.
    normalised = F.normalize(torch.from_numpy(gallery), dim=1).numpy()
    distances, ids = faiss.knn(normalised, normalised, 12)
    np.testing.assert_array_equal(index.neighbour_ids, ids)
    # Equal to float rounding: faiss 1.7.4 gives an image's distance to itself as 0 by one path, 2.4e-7 by the other.
    np.testing.assert_allclose(index.neighbour_distances, distances, rtol=0, atol=1e-6)


@pytest.mark.parametrize("k1, k2, lambda_value", [(20, 6, 0.3), (9, 1, 0.0)])
def test_gallery_rerank_is_upstreams_on_queries_and_gallery(tmp_path, k1, k2, lambda_value):
    features, _, _ = tied_features(num_query=6, num_gallery=300)
    features = F.normalize(features, dim=1).numpy()  # the index holds L2-normalised descriptors
    queries, gallery = features[:6], features[6:]
    index = GalleryIndex(32, "flat", use_gpu=False, neighbours=20)
    index.add(gallery[:150], [f"g{i}.jpg" for i in range(150)])
    index.add(gallery[150:], [f"g{i}.jpg" for i in range(150, 300)])
    found, distances, ids = index.rerank(queries, 10, k1, k2, lambda_value, max_bytes=4 * 300 * 4)
    expected = upstream_reranked(torch.from_numpy(queries), torch.from_numpy(gallery), "cosine", k1, k2,
                                 lambda_value)
    np.testing.assert_allclose(distances, np.sort(expected, axis=1)[:, :10], atol=2e-6)
    np.testing.assert_allclose(np.take_along_axis(expected, ids, axis=1), distances, atol=2e-6)
    assert found[0][0] == f"g{ids[0, 0]}.jpg"
    assert ids[3, 0] in (5, 6, 7, 8)  # query 3's duplicates come first


def test_gallery_rerank_refuses_what_it_cannot_do():
    gallery = unit_rows(np.random.default_rng(1).normal(size=(30, 8)).astype(np.float32))
    paths = [f"g{i}.jpg" for i in range(30)]
    index = GalleryIndex(8, "flat", use_gpu=False, neighbours=10)
    index.add(gallery, paths)
    with pytest.raises(ArgumentError, match=r"--k1 \(31\) is larger than the gallery \(30 images\)"):
        index.rerank(gallery[:1], 5, k1=31)
    with pytest.raises(ArgumentError, match="this index keeps 10 .* --neighbours 20 or more"):
        index.rerank(gallery[:1], 5, k1=20)
    with pytest.raises(ArgumentError, match=r"--lambda .* must lie in \[0, 1\], got 2.0"):
        index.rerank(gallery[:1], 5, k1=10, k2=3, lambda_value=2.0)
    with pytest.raises(ArgumentError, match="the query set is empty"):
        index.rerank(gallery[:0], 5, k1=10, k2=3)
    ivf = GalleryIndex(8, "ivfpq", nlist=2, m=8, nbits=2, use_gpu=False)
    ivf.add(gallery, paths)
    with pytest.raises(ArgumentError, match="an IVF-PQ index keeps none"):
        ivf.rerank(gallery[:1], 5, k1=5, k2=3)

