"""knn-cache: ImageBind-LLM's formula (per sample for B > 1), its index files, and `mmcore cache build`."""
# ruff: noqa: E501  (TOML fixtures keep their inline tables on one line)

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mmcore_plugin_cache_retrieval.index import IndexSettings, build_index
from mmcore_plugin_cache_retrieval.retriever import KnnCache, KnnCacheConfig, cache_mix

from mmcore.errors import MmcoreError
from mmcore.kinds import BuildContext, Features, FeatureSpec


def _unit(rows: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    data = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    return data / np.linalg.norm(data, axis=1, keepdims=True)


def _cache(tmp_path: Path, rows: int = 200, **options: Any) -> KnnCache:
    index = faiss.IndexFlatIP(16)
    index.add(_unit(rows))
    faiss.write_index(index, str(tmp_path / "knn.index"))  # upstream's knn.index: a bare faiss file
    ctx = BuildContext(name="retriever", base_dir=tmp_path, upstream=FeatureSpec(dim=16, num_tokens=1, pooled_dim=16))
    return KnnCache(KnnCacheConfig.model_validate({"index": "knn.index", **options}), ctx)


def _upstream_forward_visual(feats: torch.Tensor, index: Any, k: int = 10, t: float = 20.0, w: float = 0.5) -> Any:
    """LLaMA-Adapter imagebind_LLM/llama/llama_adapter.py::forward_visual (knn branch, lines 118-131), as written."""
    visual_feats_ori = feats
    sims, indices = index.search(feats.cpu(), int(k))
    b = sims.shape[0]
    prototypes = [index.reconstruct(x) for x in indices.reshape(-1, ).tolist()]
    prototypes = np.vstack(prototypes).reshape(b, int(k), -1)
    sims = torch.tensor(sims)
    prototypes = torch.tensor(prototypes)
    sims = (sims * t).softmax(dim=-1)
    feats = sims @ prototypes
    feats = feats / feats.norm(dim=-1, keepdim=True)
    feats = (1 - w) * visual_feats_ori + w * feats
    return feats / feats.norm(dim=-1, keepdim=True)


def test_batch_of_one_equals_upstream(tmp_path: Path) -> None:
    """At B = 1 the enhanced embedding equals upstream's forward_visual knn branch (k 10, T 20, α 0.5)."""
    cache = _cache(tmp_path)
    query = torch.from_numpy(_unit(1, seed=5))
    ours = cache.enhance(Features(tokens=query.unsqueeze(1), pooled=query))
    theirs = _upstream_forward_visual(query, cache.index)
    torch.testing.assert_close(ours.pooled, theirs.reshape(1, -1))
    torch.testing.assert_close(ours.tokens, ours.pooled.unsqueeze(1))


def test_batch_equals_per_sample(tmp_path: Path) -> None:
    """A batch of 5 gives each sample what it gets alone (upstream's (B,k)@(B,k,C) would mix the samples)."""
    cache = _cache(tmp_path)
    queries = torch.from_numpy(_unit(5, seed=7))
    batched = cache.enhance(Features(tokens=queries.unsqueeze(1), pooled=queries)).pooled
    for row in range(5):
        alone = cache.enhance(Features(tokens=queries[row : row + 1, None], pooled=queries[row : row + 1])).pooled
        torch.testing.assert_close(batched[row : row + 1], alone)
    assert _upstream_forward_visual(queries, cache.index).shape == (5, 5, 16)  # the upstream bug, for the record


def test_cache_mix_formula() -> None:
    """normalize((1−α)·f + α·normalize(softmax(T·sims) @ protos)), per sample."""
    f = F.normalize(torch.randn(2, 4), dim=-1)
    sims, protos = torch.randn(2, 3), F.normalize(torch.randn(2, 3, 4), dim=-1)
    r = F.normalize(torch.stack([(sims[b] * 20).softmax(-1) @ protos[b] for b in range(2)]), dim=-1)
    torch.testing.assert_close(cache_mix(f, sims, protos, 20.0, 0.5), F.normalize(0.5 * f + 0.5 * r, dim=-1))


def test_inference_only_unless_asked(tmp_path: Path) -> None:
    """The retriever is skipped while training unless `training = true`."""
    assert not _cache(tmp_path).applies_in_training
    assert _cache(tmp_path, training=True).applies_in_training


def test_bad_index_files_are_one_line_errors(tmp_path: Path) -> None:
    """A missing index, a non-faiss file and a wrong dimension name the file and the fix."""
    ctx = BuildContext(name="r", base_dir=tmp_path, upstream=FeatureSpec(dim=8, num_tokens=1, pooled_dim=8))
    with pytest.raises(MmcoreError, match="mmcore cache build"):
        KnnCache(KnnCacheConfig(index="nope.index"), ctx)
    (tmp_path / "junk.index").write_bytes(b"not faiss")
    with pytest.raises(MmcoreError, match="not a faiss index"):
        KnnCache(KnnCacheConfig(index="junk.index"), ctx)
    _cache(tmp_path)
    with pytest.raises(MmcoreError, match="16-d vectors, but the encoder's embedding is 8-d"):
        KnnCache(KnnCacheConfig(index="knn.index"), ctx)


@pytest.mark.parametrize("method", ["ivf", "hnsw"])
def test_ann_recall_measured_on_held_out_rows(method: str) -> None:
    """Beyond the size threshold an ANN index is built and its effort raised until recall@10 reaches the target."""
    centres = _unit(30, dim=32, seed=1)
    rng = np.random.default_rng(2)
    data = centres[rng.integers(30, size=3000)] + 0.05 * rng.standard_normal((3000, 32)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    _, report = build_index(data, IndexSettings(exact_below=1000, ann=method, holdout=100))
    assert report.method == method and report.recall is not None and report.recall >= 0.95
    assert report.effort in report.recall_by_effort
    assert build_index(data[:500], IndexSettings(exact_below=1000))[1].method == "flat"


TINY = ('architecture = { out_embed_dim = 16, vision_embed_dim = 16, vision_num_blocks = 1, vision_num_heads = 2, '
        'audio_embed_dim = 16, audio_num_blocks = 1, audio_num_heads = 2, text_embed_dim = 8, text_num_blocks = 1, '
        'text_num_heads = 2, depth_embed_dim = 8, depth_num_blocks = 1, depth_num_heads = 2, thermal_embed_dim = 8, '
        'thermal_num_blocks = 1, thermal_num_heads = 2, imu_embed_dim = 8, imu_num_blocks = 1, imu_num_heads = 2 }')
MANIFEST = """seed = {seed}
[model.llm]
type = "hf-causal-lm"
tokenizer = "byte-level"
config = {{ model_type = "llama", vocab_size = 260, hidden_size = 32, intermediate_size = 64, num_hidden_layers = 1, num_attention_heads = 4, max_position_embeddings = 512 }}

[model.encoders.bind]
type = "imagebind"
modalities = ["image", "audio"]
{tiny}

[model.projectors.bind]
type = "bind-network"
hidden_multiplier = 2

[data.datasets.shapes]
type = "synthetic-shapes"
size = 12
image_size = 32
tasks = ["vqa/colour"]
{retriever}"""


def _run(tmp_path: Path, name: str, seed: int = 0, retriever: str = "") -> Path:
    from mmcore.assembly import assemble
    from mmcore.run import Run

    path = tmp_path / f"{name}.toml"
    path.write_text(MANIFEST.format(seed=seed, tiny=TINY, retriever=retriever))
    Run.create(tmp_path / name, assemble(path))
    return tmp_path / name


def test_cache_build_and_use(tmp_path: Path) -> None:
    """`mmcore cache build` embeds a run's dataset with its encoder; a run with the same encoder answers with
    the cache; a run whose encoder differs is refused; -o over an existing file writes nothing."""
    from mmcore.cli import main
    from mmcore.pipeline import load

    run = _run(tmp_path, "base")
    assert main(["cache", "build", str(run), "--data", "shapes", "-o", str(tmp_path / "shapes.index")]) == 0
    meta = json.loads((tmp_path / "shapes.index.json").read_text())
    assert meta["method"] == "flat" and meta["count"] == 12 and meta["encoder"]["name"] == "bind"
    retriever = '\n[model.retriever]\ntype = "knn-cache"\nencoder = "bind"\nindex = "shapes.index"\n'
    from PIL import Image

    image = Image.new("RGB", (32, 32), (200, 20, 20))
    assert isinstance(load(_run(tmp_path, "same", retriever=retriever)).answer("What colour?", image,
                                                                               max_new_tokens=2), str)
    other = load(_run(tmp_path, "other", seed=1, retriever=retriever))  # seed 1: other random encoder weights
    with pytest.raises(MmcoreError, match="built with another encoder"):
        other.answer("What colour?", image, max_new_tokens=2)
    assert main(["cache", "build", str(run), "--data", "shapes", "-o", str(tmp_path / "shapes.index")]) == 2
