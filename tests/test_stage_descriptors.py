"""scsn/analysis/stages.py: the descriptor variants by hand, and fast-reid's ranking on a case with a known answer."""
import numpy as np
import pytest
import torch

from scsn.analysis import stages as stage_descriptors


def test_variants_by_hand():
    features = torch.tensor([[3.0, 4.0, 0.0, 2.0], [0.0, 1.0, 5.0, 0.0]])  # two images, T = 2 stages of 2 dims
    v = stage_descriptors.variants(features, 2)
    assert list(v) == ["concat", "concat of L2-normalised stages", "stage 1 alone", "stage 2 alone"]
    assert torch.equal(v["concat"], features)
    assert torch.allclose(v["concat of L2-normalised stages"], torch.tensor([[0.6, 0.8, 0.0, 1.0], [0.0, 1.0, 1.0, 0.0]]))
    assert torch.equal(v["stage 2 alone"], features[:, 2:])


def test_retrieval_ranks_the_right_gallery_image_first():
    # Two identities, each query's gallery match points the same way; the other identity points elsewhere.
    features = torch.tensor([[1.0, 0.1], [0.1, 1.0], [2.0, 0.3], [0.2, 3.0], [1.0, 1.0]])
    pids, camids = np.array([0, 1, 0, 1, 2]), np.array([0, 0, 1, 1, 1])
    r = stage_descriptors.retrieval(features, pids, camids, num_query=2)
    assert r == {"mAP": pytest.approx(100.0), "Rank-1": pytest.approx(100.0)}
    swapped = stage_descriptors.retrieval(features[[1, 0, 2, 3, 4]], pids, camids, num_query=2)
    assert swapped["Rank-1"] == pytest.approx(0.0)
