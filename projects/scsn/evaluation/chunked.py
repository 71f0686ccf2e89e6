"""Re-ID evaluation that scales to MSMT17 on a CPU: fast-reid's CMC, mAP and mINP, a block of queries at a time.

The paper reports CMC rank-1 and mAP without re-ranking (§4.1, Protocols) on four datasets, the largest
MSMT17 (§4.2: 11,659 queries x 82,161 gallery images). fast-reid's ``ReidEvaluator.evaluate``
(evaluation/reid_evaluation.py) builds the whole query x gallery float32 distance matrix and its ranking
argsorts it whole into int64 indices: 12 bytes per pair, 11.5 GB at MSMT17 size (0.6 GB at Market-1501's
3,368 x 15,913). Every query is scored from its own row alone, so :class:`ChunkedReidEvaluator` computes the
rows of a block of queries with ``build_dist``'s arithmetic, ranks the block with fast-reid's own
``evaluate_rank`` (Cython when built) and merges the blocks: AP and INP lists concatenated in query order,
each block's CMC weighted by its number of valid queries. Worker threads rank blocks while the next block's
distances are computed (numpy's argsort, most of the ranking time, releases the GIL). Memory: a few blocks
of ``chunk_bytes`` (256 MB by default) and their argsorts instead of the whole matrix.

Re-ranking (TEST.RERANK.ENABLED, with TEST.RERANK.K1, K2, LAMBDA) is fast-reid's k-reciprocal re-ranking computed
in O(N k) memory (scsn/evaluation/rerank.py): each block's rows are the re-ranked distances. Limits: the ROC
(TEST.ROC.ENABLED) needs the whole matrix; with it, :meth:`ChunkedReidEvaluator.evaluate` falls back to fast-reid's
``ReidEvaluator.evaluate`` (its own dense re-ranking included), its memory and its time. AQE (TEST.AQE.ENABLED)
is applied to all features first, as upstream, with upstream's per-row arithmetic on blocks of its N x N
similarity matrix: it no longer holds that matrix but still costs O(N^2) time, as re-ranking's exact k-NN search.

Identity with the stock evaluator: every step is upstream's, per query, in upstream's order; the one
difference is that the distances of a block come from a matrix product over its rows instead of all rows.
BLAS may round that product's last bit differently for a different number of rows (MKL on this project's
machine: blocks of 200 rows of 2048-d features did, blocks of 280 rows or more matched the whole matrix bit
for bit), so blocks are large (see MIN_BLOCK_ROWS) and of equal size. A last-bit difference could only swap
gallery images whose distances tie to within that bit.
"""
import collections
import copy
import itertools
import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

from fastreid.evaluation import rank
from fastreid.evaluation.reid_evaluation import ReidEvaluator
from fastreid.utils import comm

from ..errors import ConfigError
from .rerank import RerankedDistance, check_settings

logger = logging.getLogger(__name__)

__all__ = ["ChunkedReidEvaluator", "QueryBlockDistance", "aqe_blockwise", "block_slices",
           "valid_queries"]

METRICS = ("cosine", "euclidean")
RERANK_KEYS = ("TEST.RERANK.K1", "TEST.RERANK.K2", "TEST.RERANK.LAMBDA")
# Blocks are made smaller than ``chunk_bytes`` allows, to give every ranking thread work, only down to this
# many rows: MKL rounds the distances of a block this large as it does the whole matrix's (module docstring),
# those of a much smaller one not always.
MIN_BLOCK_ROWS = 512


def block_slices(num_rows, max_rows):
    """Split ``range(num_rows)`` into the fewest blocks of at most ``max_rows`` rows, of equal size up to one
    row, so that no block is much smaller than the others (BLAS rounding may depend on a block's size)."""
    num_blocks = -(-num_rows // max(1, max_rows))
    base, extra = divmod(num_rows, num_blocks)
    bounds = np.cumsum([0] + [base + 1] * extra + [base] * (num_blocks - extra))
    return [slice(int(start), int(stop)) for start, stop in zip(bounds[:-1], bounds[1:])]


def valid_queries(q_pids, q_camids, g_pids, g_camids):
    """Mask (num_query,) of the queries the ranking scores: those with a gallery image of their identity
    taken by another camera (rank.py skips every other query)."""
    per_pid = collections.Counter(g_pids.tolist())
    per_pid_cam = collections.Counter(zip(g_pids.tolist(), g_camids.tolist()))
    return np.array(
        [per_pid[p] > per_pid_cam[(p, c)] for p, c in zip(q_pids.tolist(), q_camids.tolist())], dtype=bool
    )


class QueryBlockDistance:
    """Rows of fast-reid's ``build_dist(query, gallery, metric)`` (utils/compute_dist.py), a block at a time.

    The per-row terms (normalised features, squared norms) are computed once on the whole query and gallery
    sets, exactly as ``compute_cosine_distance`` / ``compute_euclidean_distance`` do. With ``joint``, the
    (normalised) query and gallery features are the two parts of one (queries + gallery, d) tensor,
    ``self.features``: the set that re-ranking searches (scsn/evaluation/rerank.py), held once.
    """

    def __init__(self, query, gallery, metric, *, joint=False):
        if metric not in METRICS:
            raise ConfigError(f"TEST.METRIC must be one of {METRICS}, got {metric!r}")
        self.metric = metric
        self.num_gallery = gallery.size(0)
        if joint:
            self.features = torch.empty(query.size(0) + gallery.size(0), query.size(1), dtype=torch.float32)
            self.query, self.gallery = self.features[:query.size(0)], self.features[query.size(0):]
            for part, rows in ((query, self.query), (gallery, self.gallery)):
                if metric == "cosine":
                    F.normalize(part, p=2, dim=1, out=rows)
                else:
                    rows.copy_(part)
        elif metric == "cosine":
            self.query = F.normalize(query, p=2, dim=1)
            self.gallery = F.normalize(gallery, p=2, dim=1)
        else:
            self.query, self.gallery = query, gallery
        if metric == "euclidean":
            self.query_sq = torch.pow(self.query, 2).sum(dim=1, keepdim=True)  # (num_query, 1)
            self.gallery_sq = torch.pow(self.gallery, 2).sum(dim=1, keepdim=True)  # (num_gallery, 1)

    @torch.no_grad()
    def __call__(self, rows):
        """Distances (len(rows), num_gallery), float32 numpy, of the queries indexed by ``rows``."""
        query = self.query[rows]
        m, n = query.size(0), self.num_gallery
        if self.metric == "cosine":
            dist = torch.mm(query, self.gallery.t())
            return dist.neg_().add_(1).numpy()  # 1 - q.g, in place: one block in memory, not two
        dist = self.query_sq[rows].expand(m, n) + self.gallery_sq.expand(n, m).t()
        dist.addmm_(query, self.gallery.t(), beta=1, alpha=-2)
        return dist.numpy()


@torch.no_grad()
def aqe_blockwise(query_feat, gallery_feat, qe_times=1, qe_k=10, alpha=3.0, max_rows=None):
    """fast-reid's ``aqe`` (evaluation/query_expansion.py) with its N x N similarity matrix computed
    ``max_rows`` rows at a time (N = queries + gallery); each row is expanded with upstream's arithmetic."""
    num_query = query_feat.shape[0]
    all_feat = torch.cat((query_feat, gallery_feat), dim=0)
    norm_feat = F.normalize(all_feat, p=2, dim=1)
    all_feat = all_feat.numpy()
    max_rows = max_rows or all_feat.shape[0]
    for _ in range(qe_times):
        expanded = np.empty_like(all_feat)
        for rows in block_slices(all_feat.shape[0], max_rows):
            sims = torch.mm(norm_feat[rows], norm_feat.t()).numpy()  # (rows, N)
            for i, sim in enumerate(sims, start=rows.start):
                init_rank = np.argpartition(-sim, range(1, qe_k + 1))
                weights = np.power(sim[init_rank[:qe_k]].reshape((-1, 1)), alpha)
                expanded[i] = np.mean(all_feat[init_rank[:qe_k], :] * weights, axis=0)
        all_feat = expanded
        norm_feat = F.normalize(torch.from_numpy(all_feat), p=2, dim=1)
    return torch.from_numpy(all_feat[:num_query]), torch.from_numpy(all_feat[num_query:])


class ChunkedReidEvaluator(ReidEvaluator):
    """fast-reid's ``ReidEvaluator`` (same constructor, ``process`` and result keys) evaluating blocks of
    queries; see the module docstring for the method, its memory and its limits.

    Args:
        cfg, num_query, output_dir: as ``ReidEvaluator``; reads TEST.METRIC, TEST.AQE.*, TEST.RERANK.* and
            TEST.ROC.ENABLED.
        chunk_bytes: size of one block of float32 distances; its argsort takes twice as much.
        num_workers: blocks ranked at once, in threads; ``None``: torch's intra-op thread count, at most 4
            (each block in flight holds 3 x ``chunk_bytes``).
    """

    def __init__(self, cfg, num_query, output_dir=None, *, chunk_bytes=256 * 2**20, num_workers=None):
        if cfg.TEST.METRIC not in METRICS:
            raise ConfigError(f"TEST.METRIC must be one of {METRICS}, got {cfg.TEST.METRIC!r}")
        if chunk_bytes < 1:
            raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
        if cfg.TEST.RERANK.ENABLED:
            check_settings(cfg.TEST.RERANK.K1, cfg.TEST.RERANK.K2, cfg.TEST.RERANK.LAMBDA, names=RERANK_KEYS)
        super().__init__(cfg, num_query, output_dir)
        self._chunk_bytes = chunk_bytes
        self._num_workers = num_workers or min(4, torch.get_num_threads())

    def evaluate(self):
        if self.cfg.TEST.ROC.ENABLED:
            logger.info(
                "TEST.ROC.ENABLED needs the whole query x gallery distance matrix: evaluating with fast-reid's "
                "ReidEvaluator, in O(num_query x num_gallery) memory (O(N^2) with TEST.RERANK.ENABLED)"
            )
            return super().evaluate()

        predictions = self._gather()
        if predictions is None:
            return {}
        features = torch.cat([p["feats"] for p in predictions], dim=0)
        pids = torch.cat([p["pids"] for p in predictions], dim=0).numpy()
        camids = torch.cat([p["camids"] for p in predictions], dim=0).numpy()
        query_features, gallery_features = features[: self._num_query], features[self._num_query:]
        query_pids, gallery_pids = pids[: self._num_query], pids[self._num_query:]
        query_camids, gallery_camids = camids[: self._num_query], camids[self._num_query:]

        self._results = collections.OrderedDict()
        if self.cfg.TEST.AQE.ENABLED:
            logger.info("Test with AQE setting")
            aqe = self.cfg.TEST.AQE
            query_features, gallery_features = aqe_blockwise(
                query_features, gallery_features, aqe.QE_TIME, aqe.QE_K, aqe.ALPHA,
                max_rows=self._budget_rows(features.size(0)),
            )

        rerank = self.cfg.TEST.RERANK
        if rerank.ENABLED:
            check_settings(rerank.K1, rerank.K2, rerank.LAMBDA, query_features.size(0), gallery_features.size(0),
                           names=RERANK_KEYS)
        # Queries without a match in another camera add nothing to CMC, AP or INP (rank.py skips them);
        # dropping them first spares their rows and keeps every block valid (rank.py asserts that). Re-ranking
        # still encodes every query: all of them are neighbours in its k-NN lists, as upstream's.
        keep = np.flatnonzero(valid_queries(query_pids, query_camids, gallery_pids, gallery_camids))
        if keep.size == 0:
            raise AssertionError("Error: all query identities do not appear in gallery")
        if rerank.ENABLED:
            logger.info("Test with rerank setting")
            distance = RerankedDistance(
                QueryBlockDistance(query_features, gallery_features, self.cfg.TEST.METRIC, joint=True),
                rerank.K1, rerank.K2, rerank.LAMBDA,
            )
        else:
            distance = QueryBlockDistance(query_features, gallery_features, self.cfg.TEST.METRIC)
        del features, query_features, gallery_features  # the distance holds what it needs (re-ranking: a copy)
        cmc, all_AP, all_INP = self._rank_blocks(
            distance, keep, query_pids, gallery_pids, query_camids, gallery_camids
        )

        mAP = np.mean(all_AP)
        mINP = np.mean(all_INP)
        for r in [1, 5, 10]:
            self._results["Rank-{}".format(r)] = cmc[r - 1] * 100
        self._results["mAP"] = mAP * 100
        self._results["mINP"] = mINP * 100
        self._results["metric"] = (mAP + cmc[0]) / 2 * 100
        return copy.deepcopy(self._results)

    def _gather(self):
        """All processes' predictions on the main process, ``None`` on the others (as upstream)."""
        if comm.get_world_size() > 1:
            comm.synchronize()
            predictions = comm.gather(self._predictions, dst=0)
            if not comm.is_main_process():
                return None
            return list(itertools.chain(*predictions))
        return self._predictions

    def _budget_rows(self, row_length):
        """Rows of ``row_length`` float32 distances that fit in ``chunk_bytes``."""
        return max(1, self._chunk_bytes // (4 * row_length))

    def _block_rows(self, num_rows, row_length):
        """Rows per block: as many as ``chunk_bytes`` allows, fewer where that gives each worker two blocks
        (one ranked while the next one's distances are computed) of at least MIN_BLOCK_ROWS rows."""
        num_blocks = max(
            -(-num_rows // self._budget_rows(row_length)),
            min(2 * self._num_workers, num_rows // MIN_BLOCK_ROWS),
        )
        return -(-num_rows // max(1, num_blocks))

    def _rank_blocks(self, distance, queries, q_pids, g_pids, q_camids, g_camids):
        """fast-reid's ``evaluate_rank`` on each block of ``queries`` (all valid), merged into the CMC, AP
        list and INP list that ``evaluate_rank`` returns for all of them at once."""
        blocks = block_slices(queries.size, self._block_rows(queries.size, distance.num_gallery))
        ranked, pending = [], collections.deque()
        with ThreadPoolExecutor(self._num_workers) as pool:
            for block in blocks:
                rows = queries[block]
                dist = distance(torch.from_numpy(rows))
                pending.append(pool.submit(
                    rank.evaluate_rank, dist, q_pids[rows], g_pids, q_camids[rows], g_camids
                ))
                del dist  # the worker holds it; only the blocks in flight stay in memory
                if len(pending) == self._num_workers:
                    ranked.append(pending.popleft().result())
            ranked.extend(future.result() for future in pending)

        # A block's CMC is its number of hits at each rank over its number of valid queries (len(AP)); the hits
        # are integers, so rounding recovers them exactly, and float32 hits / float32 queries is what
        # evaluate_rank returns for all queries at once (Cython and Python alike).
        hits = sum(np.rint(cmc.astype(np.float64) * len(ap)) for cmc, ap, _ in ranked)
        num_valid = sum(len(ap) for _, ap, _ in ranked)
        cmc = hits.astype(np.float32) / np.float32(num_valid)
        all_AP = np.concatenate([np.asarray(ap) for _, ap, _ in ranked])
        all_INP = np.concatenate([np.asarray(inp) for _, _, inp in ranked])
        return cmc, all_AP, all_INP
