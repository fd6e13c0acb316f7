"""The frozen-feature cache (mmcore.cache): reused when it may be, never when it must not be."""

from __future__ import annotations

import multiprocessing
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from mmcore.cache import FEATURE_KEY, FeatureCache, tensor_digest
from mmcore.errors import ManifestError
from mmcore.testing import tiny_manifest

SAM = ('\n[model.heads.seg]\ntype = "sam-mask"\ncache_features = true\npreset = "vit_b"\nimage_size = 64\n'
       'encoder_width = 32\nencoder_depth = 1\nencoder_heads = 2\nglobal_attn_layers = [0]\nprompt_dim = 32\n'
       'decoder_depth = 1\ndecoder_mlp_dim = 64\ndecoder_heads = 2\n')


@pytest.fixture
def run(tmp_path: Path) -> Any:
    """A run whose CLIP encoder and SAM head both set `cache_features = true`."""
    from mmcore.assembly import assemble
    from mmcore.run import Run

    (tmp_path / "m.toml").write_text(tiny_manifest('type = "mlp"', "cache_features = true", extra=SAM))
    return Run.create(tmp_path / "run", assemble(tmp_path / "m.toml"))


def _model_and_batch(run: Any, **preprocess: Any) -> tuple[Any, Any]:
    """The run's model (eval, frozen as in a stage that trains none of it) and a batch of 3 shapes `mask` samples
    (cropped to 40 × 28) through its Processor."""
    from mmcore.builtins.datasets.shapes import ShapesConfig, SyntheticShapes
    from mmcore.data import Processor
    from mmcore.kinds import BuildContext

    assembly = run.assemble("cpu")
    model = assembly.model.eval().requires_grad_(False)
    processor = Processor.for_model(model, assembly.max_length, {"plain": assembly.template("plain")},
                                    {"vision": preprocess} if preprocess else None)
    shapes = SyntheticShapes(ShapesConfig(size=3, tasks=["mask"], image_size=40), BuildContext(name="s"))
    samples = list(shapes)
    for sample in samples:
        sample.media["image"] = [sample.media["image"][0].crop((0, 0, 40, 28))]
        sample.targets = {"masks": [sample.targets["masks"][0][:28]]}
    return model, processor.batch(samples, "plain", train=True)


def _stats(model: Any, name: str) -> dict[str, int]:
    component = model.components()[name]
    return dict(component.feature_cache.stats)


def test_second_pass_reads_the_cache_and_changes_nothing(run: Any) -> None:
    """Epoch 2 reads every item's features back; the outputs equal those of a model without a cache."""
    from mmcore.assembly import assemble

    model, batch = _model_and_batch(run)
    with torch.no_grad():
        first, second = model(batch), model(batch)
        plain = assemble(run.manifest_path, device="cpu", base_dir=run.lock.base_dir).model.eval().requires_grad_(
            False)(batch)
    for name in ("encoders.vision", "heads.seg"):
        assert _stats(model, name) == {"misses": 3, "stored": 3, "hits": 3}, name
    assert torch.equal(first.logits, second.logits) and torch.equal(first.logits, plain.logits)
    assert torch.equal(first.loss, second.loss) and torch.allclose(second.loss, plain.loss)
    assert len(list((run.root / "feature-cache" / "heads.seg").rglob("*.safetensors"))) == 3


def test_keys_come_from_the_data_workers(run: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each item's key is in its view metadata; the model step never hashes pixels."""
    model, batch = _model_and_batch(run)
    meta = batch.media["image"].meta
    pixels = batch.media["image"].views["encoders.vision"]
    assert [m[FEATURE_KEY] for m in meta["encoders.vision"]] == [tensor_digest(p) for p in pixels]
    monkeypatch.setattr("mmcore.cache.tensor_digest", lambda tensor: pytest.fail("hashed pixels in the model step"))
    with torch.no_grad():
        model(batch)
        model(batch)
    assert _stats(model, "encoders.vision")["hits"] == 3


def test_a_trainable_encoder_bypasses_the_cache(run: Any) -> None:
    """An encoder that trains in this stage is computed (with gradients), never read from or written to the cache."""
    model, batch = _model_and_batch(run)
    encoder = model.encoders["vision"]
    encoder.requires_grad_(True)
    model(batch).loss.backward()
    model(batch)
    assert _stats(model, "encoders.vision") == {"bypassed": 6}
    assert not (run.root / "feature-cache" / "encoders.vision").exists()
    assert any(p.grad is not None for p in encoder.parameters())


def test_new_weights_are_a_new_namespace(run: Any) -> None:
    """Loading other weights into a cached module invalidates what it stored; the old entries are not read."""
    model, batch = _model_and_batch(run)
    encoder = model.encoders["vision"]
    with torch.no_grad():
        before = model(batch).logits
        encoder.load_state_dict({k: v * 1.5 for k, v in encoder.state_dict().items()})
        after = model(batch).logits
    assert _stats(model, "encoders.vision") == {"misses": 6, "stored": 6}
    assert len(list((run.root / "feature-cache" / "encoders.vision").iterdir())) == 2  # two namespaces
    assert not torch.equal(before, after)


def test_a_preprocessing_change_is_a_new_key(run: Any) -> None:
    """The same images under other view settings (a stage's preprocess override) miss the cache."""
    model, batch = _model_and_batch(run)
    _, squared = _model_and_batch(run, image_aspect_ratio="square")
    keys = [m[FEATURE_KEY] for m in batch.media["image"].meta["encoders.vision"]]
    other = [m[FEATURE_KEY] for m in squared.media["image"].meta["encoders.vision"]]
    assert not set(keys) & set(other)
    with torch.no_grad():
        model(batch)
        model(squared)
    assert "hits" not in _stats(model, "encoders.vision")


def test_entries_are_reused_by_a_later_process(run: Any) -> None:
    """A new assembly of the run (a later stage, a resumed run) with the same weights reads the stored entries."""
    model, batch = _model_and_batch(run)
    with torch.no_grad():
        expected = model(batch).logits
    later, batch = _model_and_batch(run)
    with torch.no_grad():
        assert torch.equal(later(batch).logits, expected)
    assert _stats(later, "encoders.vision") == {"hits": 3} and _stats(later, "heads.seg") == {"hits": 3}


def test_a_damaged_entry_is_recomputed(run: Any) -> None:
    """A truncated entry is counted, recomputed and rewritten; the result is unchanged."""
    model, batch = _model_and_batch(run)
    with torch.no_grad():
        expected = model(batch).logits
        entry = next((run.root / "feature-cache" / "encoders.vision").rglob("*.safetensors"))
        entry.write_bytes(entry.read_bytes()[:40])
        assert torch.allclose(model(batch).logits, expected, atol=1e-6)  # that item alone: batch-size rounding
        model(batch)
    stats = _stats(model, "encoders.vision")
    assert stats["damaged"] == 1 and stats["stored"] == 4 and stats["hits"] == 2 + 3


def _store_many(folder: str, rounds: int) -> None:
    cache = FeatureCache(Path(folder))
    for _ in range(rounds):
        for key in ("ab12", "ab34", "cd56"):
            cache._store(cache.path("ns", key), {"tensor": torch.full((64, 64), float(len(key)))}, {"type": "tensor"})


def test_concurrent_writers_leave_whole_entries(tmp_path: Path) -> None:
    """Several processes writing the same entries (workers, ranks) leave only whole files, no temporaries."""
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_store_many, args=(str(tmp_path), 20)) for _ in range(3)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    cache = FeatureCache(tmp_path)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["ab12.safetensors", "ab34.safetensors",
                                                                          "cd56.safetensors"]
    loaded = cache._load(cache.path("ns", "cd56"), torch.device("cpu"))
    assert loaded is not None and torch.equal(loaded[0]["tensor"], torch.full((64, 64), 4.0))


def test_an_unwritable_cache_is_not_fatal(run: Any) -> None:
    """A cache that cannot write (full disk, a file in the way) warns once and the model runs on."""
    model, batch = _model_and_batch(run)
    (run.root / "feature-cache").mkdir(exist_ok=True)
    (run.root / "feature-cache" / "blocked").write_text("a file where the folder should be")
    model.encoders["vision"].feature_cache = FeatureCache(run.root / "feature-cache" / "blocked")
    with pytest.warns(RuntimeWarning, match="cannot write"), torch.no_grad():
        first = model(batch).logits
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once only
        with torch.no_grad():
            assert torch.equal(model(batch).logits, first)
    assert _stats(model, "encoders.vision") == {"misses": 6, "write_errors": 6}


def test_the_sam_image_encoder_runs_only_for_new_images(run: Any) -> None:
    """With the head's cache warm, its image encoder does not run at all."""
    model, batch = _model_and_batch(run)
    calls: list[int] = []
    model.heads["seg"].image_encoder.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    with torch.no_grad():
        model(batch)
        model(batch)
    assert calls == [3]


def test_the_compute_context_is_part_of_the_namespace(run: Any) -> None:
    """Features computed under bf16 autocast are kept apart from fp32 ones (and from other modalities)."""
    model, _ = _model_and_batch(run)
    encoder = model.encoders["vision"]
    cache = encoder.feature_cache
    cpu = torch.device("cpu")
    plain = cache.namespace(encoder, encoder, "image", cpu)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert cache.namespace(encoder, encoder, "image", cpu) != plain
    assert cache.namespace(encoder, encoder, "video", cpu) != plain


def test_cache_features_where_nothing_is_frozen_is_one_line(tmp_path: Path) -> None:
    """`cache_features` on a component with nothing to cache (a projector) names its table and the fix."""
    from mmcore.assembly import assemble

    (tmp_path / "m.toml").write_text(tiny_manifest('type = "mlp"\ncache_features = true'))
    with pytest.raises(ManifestError, match=r"\[model.projectors.vision\] cache_features: 'mlp' has no frozen"):
        assemble(tmp_path / "m.toml")


def test_a_keyed_view_pickles_and_reads_through() -> None:
    """A keyed view travels to spawned workers and still shows the wrapped view's settings."""
    import pickle

    import numpy as np
    from mmcore_plugin_sam.view import SamView

    from mmcore.cache import KeyedView

    view = pickle.loads(pickle.dumps(KeyedView.wrap(SamView(64))))
    pixels, meta = view(np.zeros((20, 30, 3), np.uint8), "image")
    assert view.image_size == 64 and KeyedView.wrap(view) is view
    assert meta[FEATURE_KEY] == tensor_digest(pixels) and meta["original_size"] == (20, 30)


def test_mmcore_train_writes_the_cache_once_and_reads_it_after(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`mmcore train` with `cache_features = true` on its frozen CLIP: the first epoch computes and stores one entry
    per image, the second and third epochs (and the next stage) read them back — CLIP runs on no item twice — and the
    trained weights equal those of the same run without a cache."""
    from mmcore.assembly import assemble
    from mmcore.run import Run
    from mmcore.train import train

    data = ('\n[data]\nnum_workers = 0\n\n[data.datasets.captions]\ntype = "synthetic-shapes"\nsize = 8\n'
            'image_size = 28\ntasks = ["caption"]\n')
    stages = ''.join(f'\n[[stages]]\nname = "{name}"\ntrainable = ["projectors"]\ntemplate = "plain"\n'
                     f'datasets = ["captions"]\nlr = 1e-3\nbatch_size = 4\nepochs = {epochs}\n'
                     for name, epochs in (("one", 3), ("two", 1)))
    computed: list[int] = []
    original = FeatureCache.run

    def counting(self: FeatureCache, component: Any, inputs: torch.Tensor, metadata: Any, compute: Any,
                 tag: str = "") -> Any:
        def counted(missing: torch.Tensor) -> Any:
            computed.append(int(missing.shape[0]))
            return compute(missing)

        return original(self, component, inputs, metadata, counted, tag)

    monkeypatch.setattr(FeatureCache, "run", counting)
    for cached in ("true", "false"):
        folder = tmp_path / cached
        folder.mkdir()
        (folder / "m.toml").write_text(tiny_manifest('type = "mlp"', f"cache_features = {cached}", extra=data + stages))
        run = Run.create(folder / "run", assemble(folder / "m.toml"))
        train(run.root)
        if cached == "true":
            assert sum(computed) == 8, computed  # 8 images, computed once over 4 epochs in two stages
            entries = [p for p in (run.root / "feature-cache").rglob("*") if p.is_file()]
            assert len(entries) == 8
    from mmcore.pipeline import load

    trained = {c: load(tmp_path / c / "run").model.projectors["vision"].state_dict() for c in ("true", "false")}
    assert all(torch.allclose(trained["true"][k], trained["false"][k], atol=1e-6) for k in trained["true"])
