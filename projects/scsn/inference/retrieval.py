"""A searchable gallery: faiss over L2-normalised descriptors (inner product = cosine similarity), with the image path
of every entry, saved as ``<index>`` (faiss) + ``<index>.json`` (paths and settings).

``flat`` is exact; ``ivfpq`` (inverted lists + product quantisation) is approximate, for galleries too large to scan,
and is trained on the first images added. GPU faiss is used where it is installed and a GPU is visible.
"""
import json
import os
from typing import List, Optional, Sequence, Tuple

import faiss
import numpy as np

from ..errors import ArgumentError, InputNotFoundError

KINDS = ("flat", "ivfpq")


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
    """Image paths and their descriptors, searchable by cosine distance (``1 - cosine similarity``, fast-reid's)."""

    def __init__(self, dim: int, kind: str = "flat", nlist: Optional[int] = None, m: Optional[int] = None,
                 nbits: Optional[int] = None, nprobe: Optional[int] = None, use_gpu: Optional[bool] = None):
        if kind not in KINDS:
            raise ArgumentError(f"Index kind must be one of {KINDS}, got {kind!r}.")
        self.dim, self.kind = dim, kind
        self.settings = {"nlist": nlist, "m": m, "nbits": nbits, "nprobe": nprobe}
        self.use_gpu = gpu_available() if use_gpu is None else use_gpu
        self.paths: List[str] = []
        self.index = faiss.IndexFlatIP(dim) if kind == "flat" else None  # IVF-PQ: built when trained

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

    def search(self, queries: np.ndarray, k: int) -> Tuple[List[List[str]], np.ndarray, np.ndarray]:
        """queries (Q, D) -> (top-k paths per query, (Q, k) cosine distances, (Q, k) entry ids); fewer than k when
        the gallery is smaller (ids -1 and distance inf pad the arrays)."""
        if not self.paths:
            raise ArgumentError("The index is empty: add gallery images first.")
        similarity, ids = self._searchable().search(self._check(queries), min(k, len(self.paths)))
        distances = np.where(ids >= 0, 1 - similarity, np.inf)
        return [[self.paths[i] for i in row if i >= 0] for row in ids], distances, ids

    def save(self, path: str) -> None:
        faiss.write_index(self.index, path)
        with open(path + ".json", "w") as f:
            json.dump({"dim": self.dim, "kind": self.kind, "settings": self.settings, "paths": self.paths}, f)

    @classmethod
    def load(cls, path: str, use_gpu: Optional[bool] = None) -> "GalleryIndex":
        if not os.path.isfile(path) or not os.path.isfile(path + ".json"):
            raise InputNotFoundError(f"No index at {path!r} (needs {path!r} and {path + '.json'!r}); build one first.")
        with open(path + ".json") as f:
            meta = json.load(f)
        self = cls(meta["dim"], meta["kind"], use_gpu=use_gpu, **meta["settings"])
        self.index = faiss.read_index(path)
        self.paths = meta["paths"]
        if self.index.ntotal != len(self.paths):
            raise ArgumentError(f"{path!r} holds {self.index.ntotal} vectors but its .json {len(self.paths)} paths.")
        return self
