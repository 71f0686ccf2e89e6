"""k-reciprocal re-ranking (Zhong et al., *Re-ranking Person Re-identification with k-reciprocal Encoding*, CVPR
2017) as fast-reid 1.4.0's evaluator computes it, in O(N k) memory instead of two dense N x N matrices.

fast-reid's ``ReidEvaluator.evaluate`` (evaluation/reid_evaluation.py:93-104), with ``TEST.RERANK.ENABLED``, calls
``build_dist(query, gallery, "jaccard")`` (utils/compute_dist.py:51-54), i.e. ``compute_jaccard_distance``
(compute_dist.py:64-173) on the N = queries + gallery features (L2-normalised first when TEST.METRIC is cosine),
keeps its query x gallery part and mixes it with the original distance: ``jaccard * (1 - LAMBDA) + dist * LAMBDA``.
``compute_jaccard_distance`` holds V and the Jaccard distances as dense N x N float32 matrices (35 GB each at
MSMT17's 93,820 images) and fills them in Python loops. The same quantities here, step by step:

1. ``initial_rank``: each image's k1 nearest neighbours among all N, by faiss's exact L2 search
   (compute_dist.py:94-97): :func:`nearest_neighbours` runs the same ``knn_L2sqr`` on blocks of images whose
   starts are multiples of faiss's query tile, so every BLAS call is the one upstream's single search makes and
   the lists, ties included, are upstream's bit for bit.
2. The k-reciprocal sets R(i, k) = {j in the first k + 1 entries of i's list : i in the first k + 1 of j's}
   (``k_reciprocal_neigh``, :57-61; the list has k1 columns, so "k1 + 1" reads k1), for k1 and for
   ``int(np.around(k1 / 2))``: the elementwise product of the sparse 0/1 neighbour matrix with its transpose.
3. Their expansion (:106-118): R(i, k1) plus R(c, k1/2) of every c in R(i, k1) with
   ``|R(c, k1/2) & R(i, k1)| > 2/3 |R(c, k1/2)|``; the overlaps are a sparse product, P Q (Q is symmetric).
4. V (:122-138): row i holds softmax(-squared euclidean distance) over its expanded set, the distances computed
   with upstream's formula ``|x|^2 + |y|^2 - 2 x.y`` for those pairs only.
5. Local query expansion (:143-148, when k2 != 1): row i becomes the mean of the rows of its first k2 neighbours,
   a sparse product (upstream's list has k1 columns, so k2 > k1 averages k1 rows, as there).
6. The Jaccard distance (:152-171) of query i and gallery image j, ``1 - t / (2 - t)`` with
   ``t = sum_l min(V[i, l], V[j, l])``, negatives clipped to 0. A sum of minima is not a matrix product: for a
   block of queries, every (i, l, j) with V[i, l] and V[j, l] both non-zero is enumerated in numpy (i's entries,
   then column l's gallery entries, from a column-major copy of V) and the minima summed into the block's
   (rows, gallery) array, which the chunked evaluator ranks and drops.

Memory: the features once, the neighbour lists (N x k1), the sparse sets and V (a few hundred entries a row), and
one block of (queries, gallery) distances at a time. Time: the k-NN search, O(N^2 d), dominates at MSMT17 size.
Ties and float rounding aside the distances are upstream's: V's weights, its means and the sums of minima are
computed in another order than upstream's loops (float32 and float64 roundings of the last bits).
"""
import logging
import time
from typing import Optional

import faiss
import numpy as np
import scipy.sparse as sp
import torch

from ..errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["RerankedDistance", "check_settings", "encode", "merge_neighbours", "nearest_neighbours"]

# Triples (query, column, gallery image) enumerated at once by the sum of minima: ~40 bytes each in flight.
MAX_TRIPLES = 1 << 23


def check_settings(k1, k2, lambda_value, num_query=None, num_gallery=None, names=("K1", "K2", "LAMBDA"),
                   error=ConfigError):
    """One clear error for settings that fast-reid's re-ranking cannot use, naming the setting (``names``: how the
    caller spells k1, k2 and lambda, e.g. ``TEST.RERANK.K1`` or ``--k1``). The set sizes are checked when given
    (an evaluator knows them only once it has the features)."""
    if num_query is not None and num_query < 1:
        raise error("Re-ranking needs at least one query image; the query set is empty.")
    for name, k in zip(names, (k1, k2)):
        if int(k) != k or k < 1:
            raise error(f"{name} must be a positive integer, got {k}.")
        if num_gallery is not None and k > num_gallery:
            raise error(f"{name} ({k}) is larger than the gallery ({num_gallery} images): a k-reciprocal "
                        f"neighbourhood cannot hold more images than there are.")
    if not 0 <= lambda_value <= 1:
        raise error(f"{names[2]} weighs the original distance against the Jaccard distance and must lie in [0, 1], "
                    f"got {lambda_value}.")


def _ranges(starts, counts):
    """The concatenation of ``range(s, s + c)`` for every (s, c), without a Python loop."""
    offsets = np.cumsum(counts) - counts
    return np.repeat(starts - offsets, counts) + np.arange(int(counts.sum()))


def _segments(indptr):
    """(row of every entry, first entry of every non-empty row, those rows) of a CSR ``indptr``."""
    counts = np.diff(indptr)
    nonempty = np.flatnonzero(counts)
    return np.repeat(np.arange(counts.size), counts), indptr[nonempty], nonempty


def nearest_neighbours(features: np.ndarray, k: int, block_rows: int = 4 * 4096) -> np.ndarray:
    """(N, k) int64: each row's k nearest rows of ``features`` (N, d) float32, nearest first, as
    ``faiss.IndexFlatL2(d).add(features); index.search(features, k)`` returns them (compute_dist.py:94-97).

    The search runs on blocks of rows that start at multiples of faiss's query tile
    (``distance_compute_blas_query_bs``), so each BLAS call and each result heap is the one the single search
    makes; a last block shorter than a tile joins the one before, so that it takes faiss's BLAS path as the single
    search does (``distance_compute_blas_threshold`` bounds the rows in faiss 1.7, rows x d in 1.15).
    """
    num, dim = features.shape
    tile = faiss.cvar.distance_compute_blas_query_bs
    block_rows = max(tile, block_rows // tile * tile)
    starts = list(range(0, num, block_rows))
    last = num - starts[-1]
    if len(starts) > 1 and (last < tile or last * dim < faiss.cvar.distance_compute_blas_threshold):
        starts.pop()
    bounds = starts + [num]
    ranks = np.empty((num, k), dtype=np.int64)
    began = time.perf_counter()
    for start, stop in zip(bounds[:-1], bounds[1:]):
        _, ranks[start:stop] = faiss.knn(features[start:stop], features, k)
        if len(starts) > 1:
            logger.info("re-ranking: nearest neighbours of %d / %d images (%.0f s)", stop, num,
                        time.perf_counter() - began)
    return ranks


def merge_neighbours(ids: np.ndarray, distances: np.ndarray, k: int):
    """(ids, distances): row-wise the ``k`` candidates with the smallest (distance, id), in that order, as faiss's
    result heaps keep and sort them (equal distances: the lower id first). Merging the k-NN lists of parts of a
    set gives the lists of the whole set."""
    order = np.lexsort((ids, distances), axis=1)[:, :k]
    return np.take_along_axis(ids, order, axis=1), np.take_along_axis(distances, order, axis=1)


def _neighbour_matrix(ranks: np.ndarray, dtype=np.int32) -> sp.csr_array:
    """N x N, 1 where j is in row i of ``ranks`` (N, k)."""
    num, k = ranks.shape
    return sp.csr_array((np.ones(num * k, dtype=dtype), ranks.ravel(), np.arange(0, num * k + 1, k)),
                        shape=(num, num))


def _reciprocal(ranks: np.ndarray) -> sp.csr_array:
    """1 at (i, j) where j is in i's list and i in j's: k_reciprocal_neigh (compute_dist.py:57-61) for every i."""
    neighbours = _neighbour_matrix(ranks)
    reciprocal = neighbours.multiply(neighbours.T).tocsr()
    reciprocal.sort_indices()
    return reciprocal


def _expanded_sets(initial_rank: np.ndarray, k1: int, block_rows: int = 8192) -> sp.csr_array:
    """The k-reciprocal expansion sets of compute_dist.py:99-118, as the pattern of an N x N sparse matrix."""
    reciprocal = _reciprocal(initial_rank[:, :k1])
    half = _reciprocal(initial_rank[:, :int(np.around(k1 / 2)) + 1])
    half_size = np.diff(half.indptr)
    added = []
    for start in range(0, reciprocal.shape[0], block_rows):
        rows = reciprocal[start:start + block_rows]
        # (rows @ half)[i, c] = |R(i, k1) & R(c, k1/2)| (half is symmetric); kept where c is in R(i, k1).
        overlap = (rows @ half).multiply(rows).tocsr()
        overlap.data = (overlap.data > 2 / 3 * half_size[overlap.indices]).astype(np.int32)
        overlap.eliminate_zeros()
        added.append(overlap @ half)
    expanded = (reciprocal + sp.vstack(added, format="csr")).tocsr()
    expanded.sort_indices()
    return expanded


@torch.no_grad()
def _softmax_weights(features: torch.Tensor, sets: sp.csr_array) -> sp.csr_array:
    """V of compute_dist.py:122-138: row i is softmax(-d(i, j)^2) over j in i's set, the squared distances as
    upstream computes them (|x|^2 + |y|^2 - 2 x.y, float32), for those pairs only."""
    rows, starts, nonempty = _segments(sets.indptr)
    cols = sets.indices.astype(np.int64)
    x = np.ascontiguousarray(features.numpy())
    dot = np.empty(cols.size, dtype=np.float32)
    # The dot products of the listed pairs, read in place (no gathered copy of the features).
    faiss.pairwise_indexed_inner_product(x.shape[1], cols.size, faiss.swig_ptr(x), faiss.swig_ptr(rows),
                                         faiss.swig_ptr(x), faiss.swig_ptr(cols), faiss.swig_ptr(dot))
    squared_norms = torch.pow(features, 2).sum(dim=1).numpy()
    dist = squared_norms[rows] + squared_norms[cols] - 2 * dot
    # The softmax in float64: exp(min - d) / sum, as torch's softmax subtracts the row's extreme first.
    lengths = np.diff(sets.indptr)[nonempty]
    neg = -dist.astype(np.float64)
    neg -= np.repeat(np.maximum.reduceat(neg, starts), lengths)
    weights = np.exp(neg)
    weights /= np.repeat(np.add.reduceat(weights, starts), lengths)
    encoded = sp.csr_array((weights.astype(np.float32), sets.indices, sets.indptr), shape=sets.shape)
    encoded.eliminate_zeros()  # weights that underflow are not in upstream's support (V != 0) either
    return encoded


def encode(features: torch.Tensor, initial_rank: np.ndarray, k1: int, k2: int) -> sp.csr_array:
    """V after local query expansion: compute_dist.py:99-148 as a sparse N x N float32 matrix.

    features: (N, d) float32, as upstream's search saw them (L2-normalised for the cosine metric).
    initial_rank: (N, >= k1) each row's nearest rows, nearest first (:func:`nearest_neighbours`).
    """
    encoded = _softmax_weights(features, _expanded_sets(initial_rank, k1))
    if k2 != 1:
        near = initial_rank[:, :min(k2, k1)]
        encoded = (_neighbour_matrix(near, dtype=np.float32) @ encoded).tocsr()
        encoded.data /= np.float32(near.shape[1])
    return encoded


class _SumOfMinima:
    """t[i, j] = sum_l min(V[i, l], V[j, l]) for blocks of query rows i against every gallery row j
    (compute_dist.py:152-166), enumerating the (i, l, j) where both entries are non-zero."""

    def __init__(self, encoded: sp.csr_array, num_query: int):
        self.query = encoded[:num_query]
        # Row l: the gallery images j with V[j, l] != 0, and those entries.
        self.by_column = encoded[num_query:].T.tocsr()
        self.num_gallery = encoded.shape[0] - num_query
        self.column_counts = np.diff(self.by_column.indptr).astype(np.int64)
        # Triples of each query row: its entries' column counts, summed.
        per_entry = np.concatenate([self.column_counts[self.query.indices], [0]])
        self.work = np.add.reduceat(per_entry, self.query.indptr[:-1]) * (np.diff(self.query.indptr) > 0)

    def _batches(self, rows):
        """Consecutive runs of ``rows`` of at most MAX_TRIPLES triples (a row with more stands alone)."""
        work = np.cumsum(self.work[rows])
        start = 0
        while start < rows.size:
            base = work[start - 1] if start else 0
            stop = max(start + 1, int(np.searchsorted(work, base + MAX_TRIPLES, side="right")))
            yield start, stop
            start = stop

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((rows.size, self.num_gallery), dtype=np.float32)  # toarray(out=) zeroes each part
        q, g = self.query, self.by_column
        for start, stop in self._batches(rows):
            counts = q.indptr[rows[start:stop] + 1] - q.indptr[rows[start:stop]]
            entries = _ranges(q.indptr[rows[start:stop]], counts)
            column = q.indices[entries]
            per_entry = self.column_counts[column]
            triples = _ranges(g.indptr[column], per_entry)
            minima = np.minimum(np.repeat(q.data[entries], per_entry), g.data[triples])
            local_row = np.repeat(np.arange(stop - start), self.work[rows[start:stop]])
            # float32 sums, as upstream's temp_min; coo_todense adds duplicates into ``out``.
            sp.coo_matrix((minima, (local_row, g.indices[triples])), shape=(stop - start, self.num_gallery)) \
                .toarray(out=out[start:stop])
        return out


class RerankedDistance:
    """Rows of fast-reid's re-ranked query x gallery distance, ``jaccard * (1 - lambda) + dist * lambda``
    (reid_evaluation.py:93-104), a block of queries at a time; a ``distance(rows)`` callable for the chunked
    evaluator's ranking, with the ``num_gallery`` it reads.

    Args:
        distance: a :class:`~scsn.evaluation.chunked.QueryBlockDistance` (the original distance; its features,
            L2-normalised for the cosine metric, are the ones re-ranking searches, as upstream's).
        k1, k2, lambda_value: TEST.RERANK.K1, K2, LAMBDA (check them with :func:`check_settings` first).
        initial_rank: (queries + gallery, >= k1) neighbour lists if already known (tools/search.py keeps the
            gallery's); by default searched with :func:`nearest_neighbours`.
    """

    def __init__(self, distance, k1: int, k2: int, lambda_value: float, initial_rank: Optional[np.ndarray] = None):
        self.distance, self.lambda_value = distance, float(lambda_value)
        self.num_gallery = distance.num_gallery
        features = distance.features
        began = time.perf_counter()
        if initial_rank is None:
            initial_rank = nearest_neighbours(features.numpy(), k1)
        encoded = encode(features, initial_rank, k1, k2)
        self.minima = _SumOfMinima(encoded, features.size(0) - self.num_gallery)
        logger.info("re-ranking: k-reciprocal encoding of %d images, %d non-zero weights (%.0f s)",
                    features.size(0), encoded.nnz, time.perf_counter() - began)

    def __call__(self, rows) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        # In place, in upstream's float32 order: 1 - t / (2 - t), clipped at 0, then jaccard * (1 - l) + dist * l.
        distances = self.minima(rows)
        np.divide(distances, 2 - distances, out=distances)
        np.subtract(1, distances, out=distances)
        distances[distances < 0] = 0.0
        distances *= 1 - self.lambda_value
        original = self.distance(torch.from_numpy(rows))
        original *= self.lambda_value
        distances += original
        return distances
