"""Ranked-list pictures (SCSN and fast-reid's baselines), the faiss gallery index, tools/search.py and the IVF-PQ
recall benchmark."""
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from inference_helpers import CONFIG, ROOT, SMALL, make_checkpoint, run_tool, tiny_images
from test_rerank import upstream_reranked
from scsn.inference.extractor import FeatureExtractor
from scsn.inference.retrieval import GalleryIndex, ivfpq_defaults, neighbour_recall
from scsn.visualization.pictures import CAPTION, GAP, GREEN, RED, ranked_lists


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt"))


def test_ranked_lists_follow_the_market_protocol():
    query = [("q0.jpg", 1, 1), ("q1.jpg", 2, 1)]
    gallery = [("g0.jpg", 1, 1), ("g1.jpg", 1, 2), ("g2.jpg", 3, 1), ("g3.jpg", 2, 3)]
    distmat = np.array([[0.0, 0.3, 0.2, 0.9],
                        [0.5, 0.4, 0.1, 0.2]])
    lists = ranked_lists(distmat, query, gallery, aps=[0.5, 0.5], indices=[1, 0], top_k=2)
    assert [r.query for r in lists] == ["q1.jpg", "q0.jpg"]
    # q0: g0 is its identity seen by its own camera, left out as fast-reid's evaluator does.
    assert lists[1].gallery == ["g2.jpg", "g1.jpg"] and lists[1].correct == [False, True]
    assert lists[1].distances == [0.2, 0.3]
    assert lists[0].gallery == ["g2.jpg", "g3.jpg"] and lists[0].correct == [False, True]


@pytest.mark.parametrize("model", ["scsn", "bagtricks"])
def test_visualize_ranks_marks_matches(tmp_path, checkpoint, model, capsys):
    if model == "scsn":
        config, opts = CONFIG, [*SMALL, "MODEL.WEIGHTS", checkpoint[0]]
    else:
        from fastreid.modeling import build_model
        from scsn.engine import build_config

        config = f"{ROOT}/configs/Synthetic/bagtricks_r18.yml"
        opts = ["MODEL.DEVICE", "cpu", "INPUT.SIZE_TEST", "[64, 32]", "DATASETS.TESTS", "('SyntheticReIDTiny',)"]
        torch.save({"model": build_model(build_config(config, opts, inference=True)).state_dict()}, tmp_path / "bot.pth")
        opts += ["MODEL.WEIGHTS", str(tmp_path / "bot.pth")]
    lists = run_tool("visualize_ranks", "--config-file", config, "--num-queries", "3", "--top-k", "5",
                     "--output", str(tmp_path / "ranks"), *opts)
    assert "SyntheticReIDTiny: 6 queries, 30 gallery images; Rank-1" in capsys.readouterr().out
    assert len(lists) == 3 and all(len(r.gallery) == 5 for r in lists)
    assert [r.ap for r in lists] == sorted(r.ap for r in lists)  # worst AP first, as fast-reid's tool
    pids = {p: pid for p, pid, _ in tiny_images_with_pids()}
    for r in lists:
        assert r.correct == [pids[g] == r.pid for g in r.gallery]
    pngs = sorted((tmp_path / "ranks").glob("0*.png"))
    assert len(pngs) == 3
    # Tiles of the 64x32 input drawn 4x (256 / 64): query + 5 results; each result framed green or red.
    width, height = 32 * 4, 64 * 4
    first = np.asarray(Image.open(pngs[0]).convert("RGB"), dtype=float)
    assert first.shape == (CAPTION + height, 6 * width + 5 * GAP, 3)
    for i, correct in enumerate(lists[0].correct):
        frame = first[CAPTION + height // 2, (i + 1) * (width + GAP) + 1]  # 256-colour PNG: the nearest of the two
        assert (np.abs(frame - GREEN).sum() < np.abs(frame - RED).sum()) == correct
    assert Image.open(tmp_path / "ranks" / "summary.png").size[1] == 3 * (CAPTION + height)


def tiny_images_with_pids():
    from scsn.engine.cli import dataset_items

    return dataset_items("SyntheticReIDTiny", "gallery")


def test_neighbour_recall_by_hand():
    exact = np.array([[0, 1, 2], [3, 4, 5]])
    approximate = np.array([[1, 0, 9], [3, -1, -1]])
    assert neighbour_recall(approximate, exact, 1) == pytest.approx((0 + 1) / 2)
    assert neighbour_recall(approximate, exact, 2) == pytest.approx((2 / 2 + 1 / 2) / 2)
    assert neighbour_recall(approximate, exact, 3) == pytest.approx((2 / 3 + 1 / 3) / 2)
    with pytest.raises(ValueError):
        neighbour_recall(approximate[:, :1], exact, 2)


def test_gallery_index_flat_and_ivfpq(tmp_path):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(600, 32)).astype(np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    paths = [f"img{i}.jpg" for i in range(600)]
    flat = GalleryIndex(32, "flat", use_gpu=False)
    flat.add(features[:400], paths[:400])
    flat.save(str(tmp_path / "g.faiss"))
    loaded = GalleryIndex.load(str(tmp_path / "g.faiss"), use_gpu=False)
    loaded.add(features[400:], paths[400:])  # incremental
    found, distances, ids = loaded.search(features[[5, 450]], 3)
    assert [row[0] for row in found] == ["img5.jpg", "img450.jpg"]
    assert np.allclose(distances[:, 0], 0, atol=1e-5) and bool((np.diff(distances, axis=1) >= 0).all())
    expected = 1 - features[[5, 450]] @ features.T
    assert np.allclose(distances, np.sort(expected, axis=1)[:, :3], atol=1e-5)

    assert ivfpq_defaults(600, 32) == (15, 2, 3)  # 600 / 39 = 15 lists; 16-d sub-vectors; 2^3 <= 15 centroids
    # One 256-centroid quantiser per dimension: PQ is almost exact, so with every list probed recall is ~1 and probing
    # one list of 15 can only lose neighbours.
    ivf = GalleryIndex(32, "ivfpq", m=32, nbits=8, nprobe=15, use_gpu=False)
    ivf.add(features, paths)
    assert ivf.settings == {"nlist": 15, "m": 32, "nbits": 8, "nprobe": 15}
    _, _, exact_ids = loaded.search(features[:50], 10)
    _, _, approx_ids = ivf.search(features[:50], 10)
    everywhere = neighbour_recall(approx_ids, exact_ids, 10)
    ivf.index.nprobe = 1
    _, _, approx_ids = ivf.search(features[:50], 10)
    assert everywhere >= 0.95 and neighbour_recall(approx_ids, exact_ids, 10) < everywhere
    with pytest.raises(ValueError, match="needs at least 15 of them, got 10"):
        GalleryIndex(32, "ivfpq", nlist=15, use_gpu=False).add(features[:10], paths[:10])
    with pytest.raises(ValueError, match="do not fit this 32-d index"):
        loaded.search(features[:1, :16], 1)
    with pytest.raises(FileNotFoundError, match="No index at"):
        GalleryIndex.load(str(tmp_path / "none.faiss"))


def test_search_tool_finds_the_identity_of_a_known_query(tmp_path, checkpoint, capsys):
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    items = tiny_images_with_pids()
    for path, _, _ in items[:20]:
        shutil.copy(path, gallery)
    extra = tmp_path / "extra"
    extra.mkdir()
    for path, _, _ in items[20:]:
        shutil.copy(path, extra)
    # The query: a gallery image of identity `pid` under another name, as a camera would see the same frame again.
    known_path, known_pid, _ = items[25]
    shutil.copy(known_path, tmp_path / "query.jpg")
    model = [*SMALL, "MODEL.WEIGHTS", checkpoint[0]]
    index = str(tmp_path / "g.faiss")
    run_tool("search", "build", "--index", index, "--images", str(gallery), "--config-file", CONFIG, *model)
    run_tool("search", "add", "--index", index, "--images", str(extra), "--config-file", CONFIG, *model)
    assert len(json.load(open(index + ".json"))["paths"]) == 30
    results = run_tool("search", "query", "--index", index, "--images", str(tmp_path / "query.jpg"), "--top-k", "3",
                       "--output", str(tmp_path / "r.json"), "--config-file", CONFIG, *model)
    top = results[0]["matches"][0]
    assert top["path"].endswith(known_path.split("/")[-1]) and top["distance"] < 1e-5
    assert int(top["path"].split("/")[-1].split("_")[0]) == known_pid
    assert json.load(open(tmp_path / "r.json")) == results
    assert "query.jpg" in capsys.readouterr().out

    # --rerank: fast-reid's re-ranked distance of the query against the gallery, from the lists that build and
    # add kept (tests/test_rerank.py checks the arithmetic on tied sets).
    reranked = run_tool("search", "query", "--rerank", "--k1", "8", "--k2", "3", "--index", index, "--images",
                        str(tmp_path / "query.jpg"), "--top-k", "5", "--config-file", CONFIG, *model)
    stored = GalleryIndex.load(index, use_gpu=False)
    query = FeatureExtractor(CONFIG, checkpoint[0], opts=SMALL)([str(tmp_path / "query.jpg")])
    expected = upstream_reranked(torch.from_numpy(query), torch.from_numpy(stored.vectors().copy()), "cosine", 8, 3,
                                 0.3)[0]
    matches = reranked[0]["matches"]
    assert [stored.paths.index(m["path"]) for m in matches] == np.argsort(expected, kind="stable")[:5].tolist()
    np.testing.assert_allclose([m["distance"] for m in matches], np.sort(expected)[:5], atol=2e-6)
    assert matches[0]["path"] == top["path"] and matches[0]["distance"] < 1e-5
    with pytest.raises(SystemExit, match=r"error: --k1 \(31\) is larger than the gallery \(30 images\)"):
        run_tool("search", "query", "--rerank", "--k1", "31", "--index", index, "--images",
                 str(tmp_path / "query.jpg"), "--config-file", CONFIG, *model)
    with pytest.raises(SystemExit, match="already exist"):
        run_tool("search", "build", "--index", index, "--images", str(gallery), "--config-file", CONFIG, *model)
    with pytest.raises(SystemExit, match="No index at"):
        run_tool("search", "query", "--index", str(tmp_path / "nope"), "--images", str(gallery),
                 "--config-file", CONFIG, *model)


def test_recall_benchmark_prints_the_figure(tmp_path, checkpoint, capsys):
    out = tmp_path / "search.json"
    rows = run_tool("benchmark_search", "--config-file", CONFIG, "--dataset", "SyntheticReIDTiny", "--nprobes", "1",
                    "2", "--json", str(out), *SMALL, "MODEL.WEIGHTS", checkpoint[0])
    printed = capsys.readouterr().out
    assert "78 database images (train + gallery), 6 queries" in printed and "recall@10" in printed
    assert [r["nprobe"] for r in rows] == [1, 2] and all(0 <= r["recall@1"] <= 1 for r in rows)
    assert json.load(open(out))["rows"] == rows
