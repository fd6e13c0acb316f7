"""`mmcore cache build RUN --data NAME -o INDEX`: embed a dataset's media with the run's encoder and write a
faiss index plus `INDEX.json` (the encoder's identity, the dataset, the method and its measured recall).

Exact (flat inner product) below `--exact-below` rows, else IVF (or HNSW with `--method hnsw`), whose search
effort is raised until recall@k on held-out rows reaches `--target-recall` (ImageBind-LLM ships only a
pre-built `knn.index`; no upstream code builds it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from mmcore.errors import MmcoreError

__all__ = ["cache"]


@click.group()
def cache() -> None:
    """Build retrieval caches (knn-cache) from a run's encoder."""


def _dataset(assembly: Any, name: str, tokenizer: Any) -> Any:
    from mmcore.kinds import BuildContext

    datasets = assembly.loaded.manifest.data.datasets
    if name not in datasets:
        raise MmcoreError(f"--data {name}: not a dataset of this run; datasets: {', '.join(datasets) or 'none'}")
    spec = datasets[name]
    cls: Any = assembly.registry.resolve("dataset", spec.type).cls
    ctx = BuildContext(name=name, base_dir=assembly.loaded.base_dir, tokenizer=tokenizer)
    return cls(cls.Config.model_validate(spec.options()), ctx)


def _encoder_name(assembly: Any, wanted: str | None) -> str:
    manifest = assembly.loaded.manifest
    names = list(manifest.model.encoders)
    if wanted is not None and wanted not in names:
        raise MmcoreError(f"--encoder {wanted}: not an encoder of this run; encoders: {', '.join(names)}")
    if wanted is None and manifest.model.retriever is not None:
        return str(manifest.model.retriever.encoder)
    if wanted is None and len(names) != 1:
        raise MmcoreError(f"this run has encoders {names}; name one with --encoder")
    return wanted or names[0]


def embed(model: Any, encoder_name: str, dataset: Any, modality: str, batch_size: int,
          limit: int | None) -> tuple[Any, list[str]]:
    """(N, C) float32 normalised embeddings of every `modality` item of `dataset`, and their sample ids."""
    import numpy as np
    import torch

    encoder = model.encoders[encoder_name]
    view = encoder.media_view()
    rows: list[Any] = []
    ids: list[str] = []
    pending: list[torch.Tensor] = []

    def flush() -> None:
        if pending:
            with torch.no_grad():
                features = encoder(torch.stack(pending), modality)
            pooled = features.pooled if features.pooled is not None else features.tokens.mean(dim=1)
            rows.append(torch.nn.functional.normalize(pooled.float(), dim=-1).numpy())
            pending.clear()

    for index in range(len(dataset) if limit is None else min(limit, len(dataset))):
        sample = dataset[index]
        for item in sample.media.get(modality, []):
            pending.append(view(item, modality)[0])
            ids.append(sample.id)
            if len(pending) == batch_size:
                flush()
    flush()
    if not ids:
        raise MmcoreError(f"the dataset has no {modality} items to cache; choose another --data or --modality")
    return np.concatenate(rows), ids


def _write(index: Any, meta: dict[str, Any], output: Path) -> None:
    """INDEX and INDEX.json written beside their final names, then renamed: nothing half-written is left."""
    import faiss

    tmp = output.with_name(f".{output.name}.tmp{os.getpid()}")
    meta_path = output.with_name(output.name + ".json")
    try:
        faiss.write_index(index, str(tmp))
        tmp.with_name(tmp.name + ".json").write_text(json.dumps(meta, indent=1))
        os.replace(tmp.with_name(tmp.name + ".json"), meta_path)
        os.replace(tmp, output)
    except BaseException:
        for leftover in (tmp, tmp.with_name(tmp.name + ".json"), meta_path):
            leftover.unlink(missing_ok=True)
        raise


@cache.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--data", "data", required=True, help="A [data.datasets] name of the run.")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Index file to write (new).")
@click.option("--encoder", help="Encoder to embed with (default: the retriever's, or the only one).")
@click.option("--modality", default="image", show_default=True, help="Which media of the samples to cache.")
@click.option("--method", type=click.Choice(["auto", "flat", "ivf", "hnsw"]), default="auto", show_default=True)
@click.option("--exact-below", type=click.IntRange(min=1), default=100_000, show_default=True,
              help="auto: exact search below this many rows, IVF above.")
@click.option("--target-recall", type=click.FloatRange(0, 1), default=0.95, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--limit", type=click.IntRange(min=1), help="At most this many samples.")
def build(run: Path, data: str, output: Path, encoder: str | None, modality: str, method: str, exact_below: int,
          target_recall: float, batch_size: int, limit: int | None) -> None:
    """Embed RUN's dataset --data with the run's encoder and write the cache index -o INDEX."""
    if output.exists():
        raise MmcoreError(f"-o {output}: already exists; choose a new file (nothing was written)")
    from mmcore.run import Run
    from mmcore_plugin_cache_retrieval.identity import encoder_identity
    from mmcore_plugin_cache_retrieval.index import IndexSettings, build_index

    opened = Run.open(run)
    assembly = opened.assemble("cpu")
    opened.load_weights(assembly.model)
    model = assembly.model.eval()
    name = _encoder_name(assembly, encoder)
    if modality not in model.encoders[name].modalities:
        raise MmcoreError(f"--modality {modality}: encoder '{name}' takes {list(model.encoders[name].modalities)}")
    dataset = _dataset(assembly, data, model.llm.tokenizer)
    vectors, ids = embed(model, name, dataset, modality, batch_size, limit)
    settings = IndexSettings(method=method, exact_below=exact_below, target_recall=target_recall)  # type: ignore[arg-type]
    index, report = build_index(vectors, settings)
    meta = {"format": "mmcore-knn-cache/1", "encoder": {**encoder_identity(model.encoders[name]), "name": name},
            "dataset": data, "modality": modality, "ids": ids, "run": str(opened.root), **report.as_dict()}
    _write(index, meta, output)
    recall = "" if report.recall is None else f", recall@{settings.k} {report.recall:.3f} at effort {report.effort}"
    click.echo(f"wrote {output} ({report.count} × {report.dim}, {report.method}{recall}, "
               f"{report.build_seconds:.1f}s) and {output}.json")
