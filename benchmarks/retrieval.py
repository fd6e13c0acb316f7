"""The knn-cache's index builder on clustered 1024-d embeddings (issue 13): flat / IVF / HNSW.

For each size and method: build time (IVF: k-means training included), ms per query at batch 1 (one faiss
thread, as faiss advises for single queries) and inside a batch of 64 (all threads), recall@10 against
exact search on held-out queries drawn from the same distribution (never in the index), the index's
memory (resident-set growth while building it) and the process peak. The ANN's search effort (IVF nprobe,
HNSW efSearch) is the one the builder picked from its own held-out rows; the other efforts are measured
too. Goal: recall@10 >= 0.95 at <= 5 ms per query at 1M.

Data as in next-systems.md §4.2: N/100 random unit centres, point = normalise(centre + 0.033·N(0, 1)).

    .venv/bin/python benchmarks/retrieval.py [--sizes 100000 1000000] [--methods flat ivf hnsw]
        [--threads 2] [--queries 200] [--json OUT]
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins" / "retrievers" / "cache"))
from mmcore_plugin_cache_retrieval.index import (
    EFFORTS,
    IndexSettings,
    build_index,
    recall_at_k,
    set_search_effort,
)

DIM, K = 1024, 10


def rss_gib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**30


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def clustered(count: int, centres: np.ndarray, rng: np.random.Generator, chunk: int = 100_000) -> np.ndarray:
    """(count, DIM) float32 unit rows around random centres, generated in chunks (1M rows: 4 GiB)."""
    out = np.empty((count, DIM), dtype=np.float32)
    for start in range(0, count, chunk):
        n = min(chunk, count - start)
        rows = centres[rng.integers(len(centres), size=n)] + 0.033 * rng.standard_normal((n, DIM), dtype=np.float32)
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        out[start : start + n] = rows
    return out


def per_query_ms(index: Any, queries: np.ndarray, batch: int, threads: int, repeats: int = 1) -> float:
    import faiss

    faiss.omp_set_num_threads(threads)
    start = time.perf_counter()
    for _ in range(repeats):
        for first in range(0, len(queries), batch):
            index.search(queries[first : first + batch], K)
    return (time.perf_counter() - start) * 1000 / (repeats * len(queries))


def measure(method: str, data: np.ndarray, queries: np.ndarray, truth: np.ndarray, threads: int) -> dict[str, Any]:
    import faiss

    faiss.omp_set_num_threads(threads)
    gc.collect()
    before = rss_gib()
    index, report = build_index(data, IndexSettings(method=method, k=K, threads=threads))  # type: ignore[arg-type]
    memory = rss_gib() - before
    row: dict[str, Any] = {"method": method, "count": len(data), "build_s": round(report.build_seconds, 1),
                           "train_s": round(report.train_seconds, 1), "effort": report.effort,
                           "index_gib": round(memory, 2)}
    batch1 = queries[: 50 if len(data) > 300_000 and method == "flat" else len(queries)]
    row["ms_batch1"] = round(per_query_ms(index, batch1, 1, 1), 3)
    row["ms_batch64"] = round(per_query_ms(index, queries, 64, threads), 3)
    faiss.omp_set_num_threads(threads)
    row["recall@10"] = round(recall_at_k(index.search(queries, K)[1], truth), 4)
    if method != "flat":
        others = {}
        for effort in EFFORTS[method]:
            set_search_effort(index, method, effort)
            others[effort] = {"recall@10": round(recall_at_k(index.search(queries, K)[1], truth), 4),
                              "ms_batch1": round(per_query_ms(index, queries[:100], 1, 1), 3)}
            if others[effort]["recall@10"] >= 0.999:
                break
        row["by_effort"] = others
    row["peak_gib"] = round(peak_gib(), 2)
    del index
    gc.collect()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--methods", nargs="+", default=["flat", "ivf", "hnsw"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import faiss

    faiss.cvar.distance_compute_blas_threshold = 20  # batched flat search through BLAS (environment.md §8)
    rows = []
    for size in args.sizes:
        rng = np.random.default_rng(size)
        centres = rng.standard_normal((size // 100, DIM), dtype=np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        start = time.perf_counter()
        data = clustered(size, centres, rng)
        queries = clustered(args.queries, centres, np.random.default_rng(size + 1))  # held out: not indexed
        flat = faiss.IndexFlatIP(DIM)
        flat.add(data)
        truth = flat.search(queries, K)[1]
        del flat
        print(f"# {size:,} rows: data + exact ground truth in {time.perf_counter() - start:.0f}s", flush=True)
        for method in args.methods:
            row = measure(method, data, queries, truth, args.threads)
            rows.append(row)
            print(json.dumps(row), flush=True)
        del data
        gc.collect()
    print("\nmethod  rows        build s  ms/q b1  ms/q b64  recall@10  index GiB  effort   goal (1M: R>=0.95, <=5 ms)")
    for r in rows:
        met = r["recall@10"] >= 0.95 and r["ms_batch1"] <= 5
        ok = "" if r["count"] < 1_000_000 else ("met" if met else "missed")
        print(f"{r['method']:<7} {r['count']:<11,} {r['build_s']:>7.1f}  {r['ms_batch1']:>7.2f}  "
              f"{r['ms_batch64']:>8.2f}  {r['recall@10']:>9.3f}  {r['index_gib']:>9.2f}  {r['effort']!s:<7}  {ok}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
