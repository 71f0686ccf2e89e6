"""Which test descriptor of a trained SCSN retrieves best (§3.4 concatenates the T stages' vectors):

- concat: the evaluator's descriptor, the stages' vectors side by side;
- concat of L2-normalised stages: each stage scaled to unit length first, so that no stage outweighs the others;
- each stage alone.

Cosine distance and fast-reid's ranking (``evaluate_rank``), as ``TEST.METRIC cosine`` in the evaluator.
"""
import numpy as np
import torch
import torch.nn.functional as F

from fastreid.evaluation.rank import evaluate_rank


def variants(features: torch.Tensor, num_stages: int) -> dict:
    """(N, T x D) descriptors -> name -> (N, *) descriptors of each variant."""
    stages = features.chunk(num_stages, dim=1)
    out = {"concat": features, "concat of L2-normalised stages": torch.cat([F.normalize(s, dim=1) for s in stages], 1)}
    out.update({f"stage {t} alone": s for t, s in enumerate(stages, start=1)})
    return out


def retrieval(features, pids, camids, num_query):
    """mAP and Rank-1 (%) of cosine-distance retrieval, queries first."""
    features = F.normalize(features, dim=1)
    dist = (1 - features[:num_query] @ features[num_query:].t()).numpy()
    cmc, all_ap, _ = evaluate_rank(dist, pids[:num_query], pids[num_query:], camids[:num_query],
                                   camids[num_query:], max_rank=1, use_cython=False)
    return {"mAP": 100 * float(np.mean(all_ap)), "Rank-1": 100 * float(cmc[0])}
