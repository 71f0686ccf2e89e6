"""A searchable gallery: faiss over L2-normalised descriptors (inner product = cosine similarity), with the image path
of every entry, saved as ``<index>`` (faiss) + ``<index>.json`` (paths and settings).

``flat`` is exact; ``ivfpq`` (inverted lists + product quantisation) is approximate, for galleries too large to scan,
and is trained on the first images added. GPU faiss is used where it is installed and a GPU is visible.

A flat index also keeps each gallery image's ``neighbours`` nearest gallery images (``<index>.neighbours.npz``,
updated by every ``add``), so that :meth:`GalleryIndex.rerank` re-ranks queries with fast-reid's k-reciprocal
re-ranking (scsn/evaluation/rerank.py) without searching the gallery against itself at query time.
"""
import json
import os
from typing import List, Optional, Sequence, Tuple

import faiss
import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ArgumentError, InputNotFoundError
from ..evaluation.chunked import QueryBlockDistance, block_slices
from ..evaluation.rerank import RerankedDistance, check_settings, merge_neighbours

KINDS = ("flat", "ivfpq")
RERANK_OPTIONS = ("--k1", "--k2", "--lambda")


def gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def ivfpq_defaults(num_vectors: int, dim: int) -> Tuple[int, int, int]:
    """(nlist, m, nbits) for ``num_vectors`` training vectors: about 4 sqrt(N) lists with >= 39 vectors each (faiss's
    k-means minimum per centroid), m sub-quantisers of <= 16 dimensions dividing ``dim``, and 2^nbits <= N / 39
    centroids per sub-quantiser (8 bits once N >= 9,984)."""
    nlist = max(1, min(int(4 * num_vectors ** 0.5), num_vectors // 39))
    m = next(m for m in range(max(1, dim // 16), dim + 1) if dim % m == 0)
    nbits = int(max(1, min(8, np.floor(np.log2(max(num_vectors // 39, 2))))))
    return nlist, m, nbits


def neighbour_recall(approximate: np.ndarray, exact: np.ndarray, k: int) -> float:
    """Recall@k of an approximate search against the exact one: the mean over queries of the share of the exact k
    nearest neighbours found among the approximate k. (Q, >= k) int arrays of ids (-1 = none)."""
    if approximate.shape[0] != exact.shape[0] or min(approximate.shape[1], exact.shape[1]) < k:
        raise ArgumentError(f"Need (Q, >= {k}) id arrays of equal Q, got {approximate.shape} and {exact.shape}.")
    found = [len(set(a[:k].tolist()) & set(e[:k].tolist()) - {-1}) for a, e in zip(approximate, exact)]
    return float(np.mean(found)) / k


class GalleryIndex:
    """Image paths and their descriptors, searchable by cosine distance (``1 - cosine similarity``, fast-reid's).

    ``neighbours``: a flat index keeps the squared-L2 nearest gallery images of every gallery image, as many
    (0: none; an IVF-PQ index keeps none), for :meth:`rerank` with k1 up to that many.
    """

    def __init__(self, dim: int, kind: str = "flat", nlist: Optional[int] = None, m: Optional[int] = None,
                 nbits: Optional[int] = None, nprobe: Optional[int] = None, use_gpu: Optional[bool] = None,
                 neighbours: int = 20):
        if kind not in KINDS:
            raise ArgumentError(f"Index kind must be one of {KINDS}, got {kind!r}.")
        if neighbours < 0:
            raise ArgumentError(f"neighbours must be 0 or more, got {neighbours}.")
        self.dim, self.kind = dim, kind
        self.settings = {"nlist": nlist, "m": m, "nbits": nbits, "nprobe": nprobe}
        self.use_gpu = gpu_available() if use_gpu is None else use_gpu
        self.paths: List[str] = []
        self.index = faiss.IndexFlatIP(dim) if kind == "flat" else None  # IVF-PQ: built when trained
        self.neighbours = neighbours if kind == "flat" else 0
        # (gallery, min(neighbours, gallery)): ids and squared L2 distances, nearest first.
        self.neighbour_ids = np.empty((0, 0), dtype=np.int64)
        self.neighbour_distances = np.empty((0, 0), dtype=np.float32)

    def __len__(self) -> int:
        return len(self.paths)

    def _check(self, features: np.ndarray) -> np.ndarray:
        features = np.ascontiguousarray(features, dtype=np.float32)
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise ArgumentError(
                f"Descriptors of shape {features.shape} do not fit this {self.dim}-d index: embed with the model the "
                "index was built with."
            )
        return features

    def _train(self, features: np.ndarray) -> None:
        defaults = ivfpq_defaults(len(features), self.dim)
        nlist, m, nbits = (v if v is not None else d for v, d in zip(
            (self.settings["nlist"], self.settings["m"], self.settings["nbits"]), defaults))
        if self.dim % m:
            raise ArgumentError(f"IVF-PQ needs m dividing the descriptor size {self.dim}, got m={m}.")
        needed = max(nlist, 2 ** nbits)
        if len(features) < needed:
            raise ArgumentError(
                f"IVF-PQ with nlist={nlist}, nbits={nbits} is trained on the first images added and needs at least "
                f"{needed} of them, got {len(features)}; use the exact flat index for a gallery this small."
            )
        quantizer = faiss.IndexFlatIP(self.dim)
        index = faiss.IndexIVFPQ(quantizer, self.dim, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
        index.train(features)
        index.nprobe = self.settings["nprobe"] or max(1, nlist // 8)
        self.settings.update(nlist=nlist, m=m, nbits=nbits, nprobe=index.nprobe)
        self.index = index

    def _searchable(self):
        """The index to search: on the GPU when available (a copy; the CPU index stays the one saved)."""
        if not self.use_gpu:
            return self.index
        if not hasattr(self, "_gpu"):
            self._resources = faiss.StandardGpuResources()
            self._gpu = faiss.index_cpu_to_gpu(self._resources, 0, self.index)
        return self._gpu

    def add(self, features: np.ndarray, paths: Sequence[str]) -> None:
        """features (N, D) L2-normalised, one per path; the first call trains an IVF-PQ index."""
        features = self._check(features)
        if len(features) != len(paths):
            raise ArgumentError(f"{len(features)} descriptors for {len(paths)} paths.")
        if self.index is None:
            self._train(features)
        self.index.add(features)
        self.paths.extend(os.fspath(p) for p in paths)
        self.__dict__.pop("_gpu", None)  # the GPU copy is stale
        if self.neighbours:
            self._add_neighbours(len(features))

    def vectors(self) -> np.ndarray:
        """The flat index's descriptors (gallery, dim), read in place."""
        return faiss.rev_swig_ptr(self.index.get_xb(), self.index.ntotal * self.dim).reshape(-1, self.dim)

    def _add_neighbours(self, num_new: int) -> None:
        """Extend the neighbour lists to the ``num_new`` images just added: theirs searched over the whole gallery,
        the earlier images' merged with their nearest new ones (the top k of a union is in the union of top k's).
        The descriptors are L2-normalised once more first, as :meth:`rerank` (and fast-reid's evaluator) will: the
        distances are then the ones the joint search would compute, and equal descriptors stay at equal distances."""
        vectors = F.normalize(torch.from_numpy(self.vectors()), p=2, dim=1).numpy()
        num_old = len(vectors) - num_new
        k = min(self.neighbours, len(vectors))
        new_distances, new_ids = faiss.knn(vectors[num_old:], vectors, k)
        if num_old:
            distances, ids = faiss.knn(vectors[:num_old], vectors[num_old:], min(k, num_new))
            old_ids, old_distances = merge_neighbours(
                np.concatenate([self.neighbour_ids, ids + num_old], axis=1),
                np.concatenate([self.neighbour_distances, distances], axis=1), k)
            new_ids, new_distances = np.concatenate([old_ids, new_ids]), np.concatenate([old_distances, new_distances])
        self.neighbour_ids, self.neighbour_distances = new_ids, new_distances

    def search(self, queries: np.ndarray, k: int) -> Tuple[List[List[str]], np.ndarray, np.ndarray]:
        """queries (Q, D) -> (top-k paths per query, (Q, k) cosine distances, (Q, k) entry ids); fewer than k when
        the gallery is smaller (ids -1 and distance inf pad the arrays)."""
        if not self.paths:
            raise ArgumentError("The index is empty: add gallery images first.")
        similarity, ids = self._searchable().search(self._check(queries), min(k, len(self.paths)))
        distances = np.where(ids >= 0, 1 - similarity, np.inf)
        return [[self.paths[i] for i in row if i >= 0] for row in ids], distances, ids

    def check_rerank(self, k1: int, k2: int, lambda_value: float, num_query: int = 1) -> None:
        """One clear error for re-ranking settings that this index or fast-reid's re-ranking cannot use."""
        if not self.paths:
            raise ArgumentError("The index is empty: add gallery images first.")
        check_settings(k1, k2, lambda_value, num_query, len(self.paths), names=RERANK_OPTIONS, error=ArgumentError)
        if self.neighbour_ids.shape[1] < k1:
            raise ArgumentError(
                f"Re-ranking with --k1 {k1} needs the {k1} nearest gallery images of every gallery image; this index "
                f"keeps {self.neighbour_ids.shape[1]} (an IVF-PQ index keeps none): build a flat index with "
                f"--neighbours {k1} or more.")

    def rerank(self, queries: np.ndarray, k: int, k1: int = 20, k2: int = 6, lambda_value: float = 0.3,
               max_bytes: int = 256 * 2**20) -> Tuple[List[List[str]], np.ndarray, np.ndarray]:
        """As :meth:`search`, by fast-reid's re-ranked distance: ``jaccard * (1 - lambda) + cosine * lambda`` of
        ``compute_jaccard_distance`` on the queries and the gallery together, as fast-reid's evaluator re-ranks its
        query set with TEST.METRIC cosine (so a query's list depends on the other queries of the call).

        The k-NN lists of that joint set are the queries' own (searched now) and the gallery's kept lists merged
        with the queries, which are exactly its k1 nearest among queries + gallery; those lists came from other
        faiss calls than upstream's one search, so equal distances may be ordered otherwise (ties and float
        rounding aside, the distances are upstream's). Time: a search of the queries, and the re-ranking's
        encoding of the whole gallery (seconds per 10^5 images); memory: O((queries + gallery) k1) and blocks of
        ``max_bytes`` of distances.
        """
        queries = self._check(queries)
        self.check_rerank(k1, k2, lambda_value, len(queries))
        distance = QueryBlockDistance(torch.from_numpy(queries), torch.from_numpy(self.vectors()), "cosine",
                                      joint=True)
        joint = distance.features.numpy()
        num_query = len(queries)
        _, query_ranks = faiss.knn(joint[:num_query], joint, k1)
        # Candidates: the nearest queries (ids first in the joint set), and the gallery's own kept lists.
        query_distances, query_ids = faiss.knn(joint[num_query:], joint[:num_query], min(k1, num_query))
        gallery_ranks, _ = merge_neighbours(
            np.concatenate([query_ids, self.neighbour_ids + num_query], axis=1),
            np.concatenate([query_distances, self.neighbour_distances], axis=1), k1)
        reranked = RerankedDistance(distance, k1, k2, lambda_value,
                                    initial_rank=np.concatenate([query_ranks, gallery_ranks]))
        k = min(k, len(self.paths))
        ids = np.empty((num_query, k), dtype=np.int64)
        distances = np.empty((num_query, k), dtype=np.float32)
        for rows in block_slices(num_query, max(1, max_bytes // (4 * len(self.paths)))):
            block = reranked(np.arange(rows.start, rows.stop))
            ids[rows] = np.argsort(block, axis=1, kind="stable")[:, :k]
            distances[rows] = np.take_along_axis(block, ids[rows], axis=1)
        return [[self.paths[i] for i in row] for row in ids], distances, ids

    def save(self, path: str) -> None:
        faiss.write_index(self.index, path)
        if self.neighbours:
            np.savez(path + ".neighbours.npz", ids=self.neighbour_ids, distances=self.neighbour_distances)
        with open(path + ".json", "w") as f:
            json.dump({"dim": self.dim, "kind": self.kind, "settings": self.settings, "paths": self.paths,
                       "neighbours": self.neighbours}, f)

    @classmethod
    def load(cls, path: str, use_gpu: Optional[bool] = None) -> "GalleryIndex":
        if not os.path.isfile(path) or not os.path.isfile(path + ".json"):
            raise InputNotFoundError(f"No index at {path!r} (needs {path!r} and {path + '.json'!r}); build one first.")
        with open(path + ".json") as f:
            meta = json.load(f)
        # An index saved before neighbour lists were kept has none (re-ranking asks for a rebuild).
        self = cls(meta["dim"], meta["kind"], use_gpu=use_gpu, neighbours=meta.get("neighbours", 0),
                   **meta["settings"])
        self.index = faiss.read_index(path)
        self.paths = meta["paths"]
        if self.index.ntotal != len(self.paths):
            raise ArgumentError(f"{path!r} holds {self.index.ntotal} vectors but its .json {len(self.paths)} paths.")
        if self.neighbours and self.paths:
            lists = path + ".neighbours.npz"
            if not os.path.isfile(lists):
                raise InputNotFoundError(f"{lists!r} is missing: the neighbour lists of the index {path!r}.")
            with np.load(lists) as saved:
                self.neighbour_ids, self.neighbour_distances = saved["ids"], saved["distances"]
            if len(self.neighbour_ids) != len(self.paths):
                raise ArgumentError(f"{lists!r} lists {len(self.neighbour_ids)} images but the index holds "
                                    f"{len(self.paths)}.")
        return self
