"""faiss indexes over unit-norm embeddings: exact for small caches, IVF or HNSW beyond a size threshold,
their query-time setting tuned until recall@k on held-out queries reaches a target.

Inner product on L2-normalised rows is cosine similarity, the score ImageBind-LLM's formula softmaxes
(`llama_adapter.py::forward_visual`: `softmax(sims * cache_t)` over raw index scores).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

__all__ = ["BuildReport", "IndexSettings", "build_index", "exact_neighbours", "recall_at_k", "set_search_effort"]

Method = Literal["auto", "flat", "ivf", "hnsw"]
EFFORTS = {"ivf": (8, 16, 32, 64, 128, 256, 512), "hnsw": (32, 64, 128, 256, 512, 1024)}


@dataclass
class IndexSettings:
    """How to build: `auto` is exact up to `exact_below` rows, then `ann`; the ANN's search effort (IVF
    nprobe, HNSW efSearch) grows until recall@k on `holdout` queries reaches `target_recall`."""

    method: Method = "auto"
    exact_below: int = 100_000
    ann: Literal["ivf", "hnsw"] = "ivf"
    k: int = 10
    target_recall: float = 0.95
    holdout: int = 500
    nlist: int | None = None  # IVF lists; default 4·√N rounded to a power of two (1024 at 100k, 4096 at 1M)
    train_points_per_list: int = 64  # IVF k-means sample (faiss's default 256 trains on all of 1M rows)
    hnsw_m: int = 32
    ef_construction: int = 40  # faiss's default
    threads: int | None = None


@dataclass
class BuildReport:
    """What was built and what it measured (written into the index's metadata)."""

    method: str
    count: int
    dim: int
    build_seconds: float
    train_seconds: float = 0.0
    effort: int | None = None  # nprobe (IVF) or efSearch (HNSW) chosen
    recall: float | None = None  # recall@k vs exact search on held-out queries (ANN only)
    recall_by_effort: dict[int, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _faiss() -> Any:
    import faiss

    return faiss


def exact_neighbours(data: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k inner products ((Q, k) scores, (Q, k) ids) with a flat index."""
    faiss = _faiss()
    flat = faiss.IndexFlatIP(data.shape[1])
    flat.add(data)
    return flat.search(queries, k)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of the true top-k ids found: (Q, k) ids each."""
    hits = sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True))
    return hits / truth.size


def set_search_effort(index: Any, method: str, effort: int | None) -> None:
    """Apply a stored query-time setting (IVF nprobe, HNSW efSearch)."""
    if effort is None:
        return
    faiss = _faiss()
    if method == "ivf":
        faiss.extract_index_ivf(index).nprobe = int(effort)
    elif method == "hnsw":
        index.hnsw.efSearch = int(effort)


def _nlist(count: int, wanted: int | None) -> int:
    if wanted is not None:
        return wanted
    return max(16, 2 ** round(math.log2(4 * math.sqrt(count))))


def _ann(data: np.ndarray, method: str, settings: IndexSettings) -> tuple[Any, float]:
    """An IVF-Flat or HNSW-Flat inner-product index over `data`; (index, training seconds)."""
    faiss = _faiss()
    dim = data.shape[1]
    if method == "hnsw":
        index = faiss.IndexHNSWFlat(dim, settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = settings.ef_construction
        return index, 0.0
    nlist = _nlist(len(data), settings.nlist)
    # Above 1,024 lists the coarse search over the centroids dominates a query: an HNSW graph over them
    # replaces the flat scan (faiss's IVF + HNSW quantizer recipe).
    if nlist > 1024:
        quantizer = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        quantizer.hnsw.efSearch = 128  # assignment at add and query time: the default 16 misroutes ~25 % of rows
    else:
        quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.clustering_index = faiss.IndexFlatIP(dim)  # k-means assigns exactly; the centroids then go into the graph
    index.cp.max_points_per_centroid = settings.train_points_per_list  # k-means on at most this · nlist rows
    start = time.perf_counter()
    index.train(data)
    trained = time.perf_counter() - start
    index.make_direct_map()  # `reconstruct` of the retrieved prototypes (ImageBind-LLM's formula)
    return index, trained


def _add(index: Any, data: np.ndarray, chunk: int = 100_000) -> None:
    for start in range(0, len(data), chunk):
        index.add(np.ascontiguousarray(data[start : start + chunk]))


def _tune(index: Any, method: str, data: np.ndarray, settings: IndexSettings,
          rng: np.random.Generator) -> tuple[int, float, dict[int, float]]:
    """Smallest effort whose recall@k (self-matches dropped) on held-out rows reaches the target."""
    chosen = rng.choice(len(data), size=min(settings.holdout, len(data)), replace=False)
    queries = np.ascontiguousarray(data[chosen])
    k = settings.k
    _, truth = exact_neighbours(data, queries, k + 1)
    truth = np.stack([[i for i in row if i != q][:k] for row, q in zip(truth, chosen, strict=True)])
    measured: dict[int, float] = {}
    for effort in EFFORTS[method]:
        set_search_effort(index, method, effort)
        _, found = index.search(queries, k + 1)
        found = np.stack([[i for i in row if i != q][:k] for row, q in zip(found, chosen, strict=True)])
        measured[effort] = recall_at_k(found, truth)
        if measured[effort] >= settings.target_recall:
            return effort, measured[effort], measured
    effort = max(measured, key=lambda e: (measured[e], -e))
    set_search_effort(index, method, effort)
    return effort, measured[effort], measured


def build_index(data: np.ndarray, settings: IndexSettings | None = None, seed: int = 0) -> tuple[Any, BuildReport]:
    """An inner-product faiss index over the (N, C) float32 rows of `data` (normalised by the caller)."""
    settings = settings or IndexSettings()
    faiss = _faiss()
    if settings.threads:
        faiss.omp_set_num_threads(settings.threads)
    data = np.ascontiguousarray(data, dtype=np.float32)
    method = settings.method
    if method == "auto":
        method = "flat" if len(data) < settings.exact_below else settings.ann
    start = time.perf_counter()
    if method == "flat":
        index, trained = faiss.IndexFlatIP(data.shape[1]), 0.0
    else:
        index, trained = _ann(data, method, settings)
    _add(index, data)
    report = BuildReport(method, len(data), data.shape[1], time.perf_counter() - start, trained)
    if method != "flat":
        report.effort, report.recall, report.recall_by_effort = _tune(
            index, method, data, settings, np.random.default_rng(seed))
    return index, report
