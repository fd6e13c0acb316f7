"""Meta-format LLaMA → transformers, and `mmcore import imagebind-llm`: logits equal the upstream code's.

`tests/data/imagebind_llm_tiny/` was produced by RUNNING OpenGVLab/LLaMA-Adapter 521a09d `imagebind_LLM/llama/
llama.py` (unchanged) and `llama/llama_adapter.py` (the widths 4096 → 32 and 1024 → 16 substituted; ImageBind
replaced by nn.Identity so the feature goes in directly) on tiny random weights (dim 32, 2 layers, 4 heads,
vocabulary 260): `meta/` is the base LLaMA in Meta's layout (params.json + consolidated.00.pth), `adapter.pth`
the `{"model": ...}` release layout (bias/gate/lora/norm + image_bind_* + prefix_query, all off zero),
`expected.pt` the last-token logits of `LLaMA_adapter.forward_inference` for three prompt lengths and of the
plain `Transformer.forward`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("mmcore_plugin_imagebind")
pytest.importorskip("mmcore_plugin_bind_network")

DATA = Path(__file__).parent / "data" / "imagebind_llm_tiny"
EXPECTED = torch.load(DATA / "expected.pt", weights_only=True)
TINY = {"out_embed_dim": 16, "vision_embed_dim": 16, "vision_num_blocks": 1, "vision_num_heads": 2,
        "audio_embed_dim": 16, "audio_num_blocks": 1, "audio_num_heads": 2, "text_embed_dim": 8, "text_num_blocks": 1,
        "text_num_heads": 2, "depth_embed_dim": 8, "depth_num_blocks": 1, "depth_num_heads": 2, "thermal_embed_dim": 8,
        "thermal_num_blocks": 1, "thermal_num_heads": 2, "imu_embed_dim": 8, "imu_num_blocks": 1, "imu_num_heads": 2}


def test_meta_llama_converts_to_transformers(tmp_path: Path) -> None:
    """`mmcore import llama` (rotary rows permuted) gives LlamaForCausalLM the logits of Meta's Transformer."""
    from transformers import LlamaForCausalLM

    from mmcore.cli import main

    assert main(["import", "llama", str(DATA / "meta"), "-o", str(tmp_path / "hf"), "--tokenizer", "byte-level"]) == 0
    model = LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        logits = model(input_ids=EXPECTED["tokens"]).logits[:, -1]
    torch.testing.assert_close(logits, EXPECTED["plain_logits"], atol=1e-4, rtol=1e-4)


def test_imagebind_llm_checkpoint_gives_upstream_logits(tmp_path: Path) -> None:
    """`mmcore import imagebind-llm` (bind network, prefix, gates, biases, LoRA r = alpha, norms; `llma` read
    as `llama`) gives, for the same ImageBind feature, LLaMA_adapter.forward_inference's logits."""
    import json

    from mmcore.cli import main
    from mmcore.kinds import Features
    from mmcore.pipeline import load

    state = torch.load(DATA / "adapter.pth", weights_only=True)
    renamed = {"model": {k.replace("llama.", "llma.", 1): v for k, v in state["model"].items()}}  # pre-convert_ckpt
    torch.save(renamed, tmp_path / "checkpoint-3.pth")
    code = main(["import", "imagebind-llm", str(tmp_path / "checkpoint-3.pth"), "--llama", str(DATA / "meta"),
                 "-o", str(tmp_path / "run"), "--tokenizer", "byte-level", "--encoder-architecture", json.dumps(TINY)])
    assert code == 0
    model = load(tmp_path / "run").model
    feature = F.normalize(EXPECTED["feature"], dim=-1) / (1 + 1e-6)  # forward_visual: one input of weight 1
    with torch.no_grad():
        model._conditions = {"bind": model.projectors["bind"](Features(tokens=feature[:, None], pooled=feature))}
        model._sync_adapter_hooks()
        for row, length in enumerate((5, 9, 13)):
            ids = EXPECTED["tokens"][:, :length]
            mask = torch.ones_like(ids)
            logits = model.llm(model.llm.embed(ids), mask, mask.cumsum(-1) - 1).logits[:, -1]
            torch.testing.assert_close(logits, EXPECTED["logits"][row], atol=1e-4, rtol=1e-4)


def test_bad_sources_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file that is not ImageBind-LLM's and a folder that is not Meta's LLaMA: exit 2, nothing written."""
    from mmcore.cli import main

    torch.save({"model": {"x": torch.zeros(1)}}, tmp_path / "other.pth")
    assert main(["import", "imagebind-llm", str(tmp_path / "other.pth"), "--llama", str(DATA / "meta"),
                 "-o", str(tmp_path / "run")]) == 2
    assert "no image_bind_* keys" in capsys.readouterr().err and not (tmp_path / "run").exists()
    shutil.copytree(DATA / "meta", tmp_path / "meta")
    (tmp_path / "meta" / "params.json").unlink()
    assert main(["import", "llama", str(tmp_path / "meta"), "-o", str(tmp_path / "hf")]) == 2
    assert "params.json" in capsys.readouterr().err and not (tmp_path / "hf").exists()
