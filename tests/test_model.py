"""The assembled model: loss and gradients, batched generation, adapter mode, trigger positions."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from mmcore.kinds import AdapterProjector, BuildContext, ComponentConfig, Features, Sample, Turn
from mmcore.kinds.head import select_trigger_positions


def _sample(i: int, image: Path, question: str, answer: str = "") -> Sample:
    turns = [Turn("user", f"<image>\n{question}")] + ([Turn("assistant", answer)] if answer else [])
    return Sample(id=f"s{i}", conversation=turns, media={"image": [image]})


def test_forward_loss_and_projector_gradients(tiny_pipeline: Any, images: list[Path]) -> None:
    """Training forward gives a finite LM loss; backward reaches the projector, not a frozen encoder."""
    model = tiny_pipeline.model
    model.encoders.requires_grad_(False)
    batch = tiny_pipeline.processor.batch([_sample(0, images[0], "colour?", "red"),
                                           _sample(1, images[1], "q", "green")], "vicuna_v1", train=True)
    out = model(batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.projectors.parameters())
    assert all(p.grad is None for p in model.encoders.parameters())
    model.zero_grad()
    model.encoders.requires_grad_(True)


def test_media_tokens_replace_placeholder_embeddings(tiny_pipeline: Any, images: list[Path]) -> None:
    """Embeddings at media positions are exactly the projector's output, in order."""
    model = tiny_pipeline.model
    processor = tiny_pipeline.processor
    batch = processor.batch([_sample(0, images[0], "q", "a")], "plain", train=True)
    with torch.no_grad():
        embeds = model.embed(batch)
        features = model.encoders["vision"](batch.media["image"].views["encoders.vision"], "image")
        projected = model.projectors["vision"](features)[0]  # (M, D)
    (_, start, length), = processor.encode(_sample(0, images[0], "q", "a"), "plain", True).media_spans
    assert torch.allclose(embeds[0, start : start + length], projected)


def test_batched_generation_equals_one_by_one(tiny_pipeline: Any, images: list[Path]) -> None:
    """Greedy generation of a left-padded batch of mixed prompt lengths equals batch size 1."""
    prompts = ["<image>\nWhat colour is it?", "<image>\nHi", "<image>\nDescribe the picture in detail please.",
               "<image>\nShape?"]
    media = [{"image": [images[i % 3]]} for i in range(4)]
    batched = tiny_pipeline.answer(prompts, media, template="vicuna_v1", max_new_tokens=6)
    single = [tiny_pipeline.answer(p, m, template="vicuna_v1", max_new_tokens=6)
              for p, m in zip(prompts, media, strict=True)]
    assert batched == single


def test_answer_takes_one_prompt_and_adds_the_placeholder(tiny_pipeline: Any, images: list[Path]) -> None:
    """`answer("text", image)` answers one prompt; a prompt without `<image>` gets it in front, as the CLI does."""
    with_placeholder = tiny_pipeline.answer("<image>\nWhat colour?", images[0], max_new_tokens=4)
    assert isinstance(with_placeholder, str)
    assert tiny_pipeline.answer("What colour?", images[0], max_new_tokens=4) == with_placeholder


def test_answer_uses_the_runs_template(tiny_model_text: str, tmp_path: Path, images: list[Path]) -> None:
    """`mmcore.load(run)` answers with the run's own template (its last stage's), not a fixed default."""
    from mmcore.assembly import assemble
    from mmcore.pipeline import load
    from mmcore.run import Run

    manifest = tmp_path / "m.toml"
    manifest.write_text(tiny_model_text.replace('template = "vicuna_v1"', 'template = "llama2"'))
    pipeline = load(Run.create(tmp_path / "run", assemble(manifest)).root)
    assert pipeline.template == "llama2"
    assert pipeline.answer("What colour?", images[0], max_new_tokens=4) == \
        pipeline.answer("What colour?", images[0], template="llama2", max_new_tokens=4)


def test_sampling_is_seeded(tiny_pipeline: Any, images: list[Path]) -> None:
    """Sampling with the same seed gives the same answer."""
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        runs.append(tiny_pipeline.answer(["<image>\nq"], [{"image": [images[0]]}], max_new_tokens=5,
                                         do_sample=True, temperature=1.5, top_p=0.9))
    assert runs[0] == runs[1]


class _GatedCondition(AdapterProjector):
    """A minimal adapter-mode projector: pooled features → one condition vector per item."""

    Config: ClassVar[type[ComponentConfig]] = ComponentConfig

    def __init__(self, config: ComponentConfig, ctx: BuildContext) -> None:
        super().__init__(config, ctx)
        self.proj = torch.nn.Linear(self.input_spec.dim, self.output_dim)

    def forward(self, features: Features) -> torch.Tensor:
        return self.proj(features.tokens.mean(1, keepdim=True))  # (B, 1, D)


def _adapter_model(tiny_pipeline: Any) -> Any:
    from mmcore.model import MultimodalModel

    base = tiny_pipeline.model
    ctx = BuildContext(name="vision", upstream=base.encoders["vision"].output_spec,
                       llm_hidden_size=base.llm.hidden_size, llm_layout=base.llm.attention_sites())
    return MultimodalModel(base.llm, dict(base.encoders), {"vision": _GatedCondition(ComponentConfig(), ctx)},
                           {"image": "vision"})


def test_adapter_mode_zero_gate_is_identity(tiny_pipeline: Any, images: list[Path]) -> None:
    """Adapter mode adds no tokens, and with zero-initialised gates the LLM's logits are unchanged."""
    from mmcore.data import Processor

    model = _adapter_model(tiny_pipeline)
    assert model.tokens_per_item == {"image": 0}
    processor = Processor.for_model(model, 256, tiny_pipeline.processor.templates)
    batch = processor.batch([_sample(0, images[0], "what?", "red")], "vicuna_v1", train=True)
    plain = model.llm(model.llm.embed(batch.input_ids), batch.attention_mask, batch.position_ids).logits
    with torch.no_grad():
        assert torch.equal(model(batch).logits, plain)
    out = model(batch)
    out.loss.backward()
    gates = model.projectors["vision"].gates
    assert gates.grad is not None and gates.grad.abs().sum() > 0, "the zero gate must still learn"
    with torch.no_grad():
        gates.fill_(0.5)
        assert not torch.allclose(model(batch).logits, plain)
        gates.zero_()
    model.zero_grad()


def test_trigger_positions_before_and_at() -> None:
    """Heads read the state before the trigger (u-LLaVA) or at it."""
    ids = torch.tensor([[5, 6, 9, 7], [9, 1, 2, 9]])
    assert select_trigger_positions(ids, 9, "before").tolist() == [[False, True, False, False],
                                                                    [False, False, True, False]]
    assert select_trigger_positions(ids, 9, "at").tolist() == [[False, False, True, False],
                                                                [True, False, False, True]]


def test_generate_refuses_right_padding(tiny_pipeline: Any, images: list[Path]) -> None:
    """generate() needs a left-padded batch."""
    batch = tiny_pipeline.processor.batch([_sample(0, images[0], "q", "a"),
                                           _sample(1, images[1], "longer question", "b")], "vicuna_v1", train=True)
    with pytest.raises(ValueError, match="left padding"):
        tiny_pipeline.model.generate(batch)
