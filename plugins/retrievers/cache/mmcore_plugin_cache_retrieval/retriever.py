"""`knn-cache`: ImageBind-LLM's training-free cache retrieval (`llama_adapter.py::forward_visual`,
next-systems.md §4.1) over a faiss index of the encoder's normalised embeddings.

    sims, ids = index.search(f, k)                    # f: (B, C) normalised (fused) embedding
    protos    = index.reconstruct(ids)                # (B, k, C)
    r         = normalize(Σ_k softmax(T · sims)_k · protos_k)      # per sample
    f'        = normalize((1 − α) · f + α · r)        # k 10, T 20, α 0.5 (the gradio defaults)

Upstream computes `softmax(sims) @ protos` with shapes (B, k) @ (B, k, C), which broadcasts to (B, B, C) and
mixes samples for B > 1 (it only ever runs B = 1); here each sample uses its own neighbours. Inference only
unless `training = true`. The index is a faiss file: `mmcore cache build` writes one with a metadata file
(`INDEX.json`: the encoder's identity, the dataset, the method and its measured recall); an index without
metadata (upstream's `knn.index`) loads as it is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from mmcore.errors import MmcoreError
from mmcore.kinds import BuildContext, ComponentConfig, Features, Retriever
from mmcore_plugin_cache_retrieval.identity import encoder_identity, same_encoder
from mmcore_plugin_cache_retrieval.index import set_search_effort

__all__ = ["KnnCache", "KnnCacheConfig", "cache_mix", "read_index"]


class KnnCacheConfig(ComponentConfig):
    index: str | None = None  # a faiss index file; None: an empty exact cache filled with build_index()
    k: int = Field(10, ge=1)  # cache_size
    temperature: float = Field(20.0, gt=0)  # cache_t
    alpha: float = Field(0.5, ge=0, le=1)  # cache_weight
    training: bool = False  # also enhance features while training
    effort: int | None = Field(None, ge=1)  # override the index's IVF nprobe / HNSW efSearch


def read_index(path: Path) -> tuple[Any, dict[str, Any]]:
    """(faiss index, metadata or {}) of an index file; a one-line error for anything unreadable."""
    import faiss

    if not path.is_file():
        raise MmcoreError(f"index {path}: no such file; build one with `mmcore cache build RUN --data NAME -o {path}`")
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as err:
        raise MmcoreError(f"index {path}: not a faiss index ({str(err).splitlines()[0][:120]}); rebuild it") from None
    meta_path = path.with_name(path.name + ".json")
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if meta.get("method") in ("ivf", "hnsw"):
        set_search_effort(index, meta["method"], meta.get("effort"))
    return index, meta


def cache_mix(features: torch.Tensor, sims: torch.Tensor, protos: torch.Tensor, temperature: float,
              alpha: float) -> torch.Tensor:
    """(B, C) features, (B, k) scores, (B, k, C) prototypes → (B, C): the formula above, per sample."""
    weights = (sims * temperature).softmax(dim=-1)
    retrieved = F.normalize(torch.einsum("bk,bkc->bc", weights, protos), dim=-1)
    return F.normalize((1 - alpha) * features + alpha * retrieved, dim=-1)


class KnnCache(Retriever):
    """A faiss cache of embeddings; `enhance` mixes each item's top-k neighbours into its pooled embedding."""

    Config: ClassVar[type[ComponentConfig]] = KnnCacheConfig

    def __init__(self, config: KnnCacheConfig, ctx: BuildContext) -> None:
        super().__init__(config, ctx)
        self.dim = ctx.upstream.pooled_dim or ctx.upstream.dim if ctx.upstream is not None else None
        self.meta: dict[str, Any] = {}
        self.index: Any = None
        self._checked = False
        if config.index is not None:
            path = ctx.path(config.index)
            if not path.is_file():
                raise MmcoreError(f"index {path}: no such file; build it with `mmcore cache build RUN --data NAME "
                                  f"-o {config.index}`")
            if not ctx.on_meta:
                self.index, self.meta = read_index(path)
                self._check_dim(str(path))
                if config.effort is not None:
                    set_search_effort(self.index, self.meta.get("method", ""), config.effort)

    def _check_dim(self, where: str) -> None:
        if self.dim is not None and self.index is not None and self.index.d != self.dim:
            raise MmcoreError(f"index {where}: {self.index.d}-d vectors, but the encoder's embedding is {self.dim}-d; "
                              f"build the cache with this run's encoder")

    def build_index(self, embeddings: torch.Tensor) -> None:
        import faiss

        if self.index is None:
            self.index = faiss.IndexFlatIP(embeddings.shape[1])
            self._checked = True  # built here, from whatever the caller embedded
        self.index.add(np.ascontiguousarray(F.normalize(embeddings.float(), dim=-1).cpu().numpy()))

    def _check_encoder(self) -> None:
        """Refuse a cache built with another encoder (type, config or weights), once, at first use."""
        recorded = self.meta.get("encoder")
        if not self._checked and recorded is not None and self.encoder is not None:
            differs = same_encoder(recorded, encoder_identity(self.encoder))
            if differs:
                raise MmcoreError(f"retriever index {self.config.index}: built with another encoder ({differs} "
                                  f"differs from this run's '{self.encoder.name}'); rebuild it with "
                                  f"`mmcore cache build`")
        self._checked = True

    def enhance(self, features: Features) -> Features:
        if self.index is None or self.index.ntotal == 0:
            raise MmcoreError("knn-cache has an empty cache; set `index` to a file from `mmcore cache build`")
        self._check_encoder()
        query = features.pooled if features.pooled is not None else features.tokens[:, 0]
        flat = np.ascontiguousarray(query.detach().float().cpu().numpy())
        k = min(self.config.k, self.index.ntotal)
        sims, ids = self.index.search(flat, k)
        protos = np.stack([self.index.reconstruct_batch(row) for row in ids])  # (B, k, C)
        mixed = cache_mix(query.float(), torch.from_numpy(sims).to(query.device),
                          torch.from_numpy(protos).to(query.device), self.config.temperature, self.config.alpha)
        mixed = mixed.to(query.dtype)
        tokens = mixed.unsqueeze(1) if features.tokens.shape[1:] == (1, mixed.shape[-1]) else features.tokens
        return Features(tokens=tokens, grid=features.grid, pooled=mixed, levels=features.levels)
