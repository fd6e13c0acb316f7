"""Shared fixtures: tiny real models saved with save_pretrained, and a manifest writer."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMCORE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "mmcore-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny CLIP vision tower and a tiny Llama (+ byte-level tokenizer), saved in the real formats."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    from mmcore.builtins.byte_tokenizer import byte_level_tokenizer

    root = tmp_path_factory.mktemp("tiny-models")
    torch.manual_seed(0)
    clip = CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                            num_attention_heads=4, image_size=28, patch_size=14))
    clip.save_pretrained(root / "clip")
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=260, hidden_size=48, intermediate_size=96,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=256, bos_token_id=1, eos_token_id=2,
                                         pad_token_id=0))
    llama.save_pretrained(root / "llama")
    byte_level_tokenizer().save_pretrained(root / "llama")
    return {"clip": root / "clip", "llama": root / "llama"}


TINY_MODEL = """
seed = 0

[model]
max_length = 256

[model.llm]
type = "hf-causal-lm"
source = "{llama}"

[model.encoders.vision]
type = "clip"
source = "{clip}"

[model.projectors.vision]
type = "mlp"
depth = 2

[data.datasets.shapes]
type = "synthetic-shapes"
size = 8
image_size = 28

[[stages]]
name = "align"
trainable = ["projectors"]
template = "plain"

[[stages]]
name = "instruct"
trainable = ["projectors", "llm"]
template = "vicuna_v1"
"""


@pytest.fixture
def write_manifest(tmp_path: Path) -> Callable[[str], Path]:
    """Write TOML text (dedented) to a fresh manifest file and return its path."""
    counter = iter(range(1000))

    def write(text: str, name: str | None = None) -> Path:
        path = tmp_path / (name or f"manifest{next(counter)}.toml")
        path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
        return path

    return write


@pytest.fixture(scope="session")
def tiny_model_text(tiny_dirs: dict[str, Path]) -> str:
    """The tiny manifest's TOML text, over the saved tiny models."""
    return TINY_MODEL.format(llama=tiny_dirs["llama"], clip=tiny_dirs["clip"])


@pytest.fixture
def tiny_manifest(write_manifest: Callable[[str], Path], tiny_dirs: dict[str, Path]) -> Path:
    """A manifest over the saved tiny CLIP and Llama (loaded through from_pretrained)."""
    return write_manifest(TINY_MODEL.format(llama=tiny_dirs["llama"], clip=tiny_dirs["clip"]))


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The tiny manifest assembled with real weights, as `mmcore.load` returns it."""
    from mmcore.assembly import assemble
    from mmcore.pipeline import load
    from mmcore.run import Run

    folder = tmp_path_factory.mktemp("tiny-run")
    manifest = folder / "tiny.toml"
    manifest.write_text(TINY_MODEL.format(llama=tiny_dirs["llama"], clip=tiny_dirs["clip"]))
    Run.create(folder / "run", assemble(manifest))
    return load(folder / "run")


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three small images of different sizes and colours."""
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    paths = []
    for i, (size, colour) in enumerate([((40, 20), (200, 30, 30)), ((20, 40), (30, 200, 30)),
                                        ((32, 32), (30, 30, 200))]):
        path = root / f"img{i}.png"
        Image.new("RGB", size, colour).save(path)
        paths.append(path)
    return paths
