"""The conformance checks behind `ConformanceSuite`, usable one by one as plain functions."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from mmcore.kinds import (
    AdapterProjector,
    BoxCodec,
    BuildContext,
    Dataset,
    Encoder,
    Features,
    FeatureSpec,
    Head,
    Projector,
    Sample,
    Template,
    Turn,
)
from mmcore.registry import Registry

__all__ = ["ConformanceSuite", "build_for_test", "example_forward"]

# Upstream shapes every projector / head is tested against: a 4×4 grid of 32-d tokens → a 48-d LLM.
TEST_UPSTREAM = FeatureSpec(dim=32, num_tokens=16, grid=(4, 4), pooled_dim=32)
TEST_LLM_WIDTH = 48


def _tiny_llm_sites() -> list[Any]:
    from mmcore.builtins.hf_llm import HFCausalLM, HFCausalLMConfig

    config = HFCausalLMConfig.model_validate(HFCausalLM.tiny_config())
    llm = HFCausalLM(config, BuildContext(name="llm"))
    return llm.attention_sites()


def build_for_test(kind: str, cls: Any, device: str = "cpu", seed: int = 0) -> Any:
    """Build `cls` from its `tiny_config()` with the standard test upstream, seeded."""
    torch.manual_seed(seed)
    config = cls.Config.model_validate(cls.tiny_config())
    ctx = BuildContext(name=f"test-{kind}", device=torch.device(device))
    if kind in ("projector", "retriever"):
        ctx.upstream = TEST_UPSTREAM
        ctx.llm_hidden_size = TEST_LLM_WIDTH
        if issubclass(cls, AdapterProjector):
            sites = _tiny_llm_sites()
            ctx.llm_hidden_size = sites[0].value_proj.in_features
            ctx.llm_layout = sites
    if kind == "head":
        ctx.llm_hidden_size = TEST_LLM_WIDTH
    for key, value in getattr(cls, "tiny_wiring", dict)().items():
        setattr(ctx, key, value)
    return cls(config, ctx)


def example_forward(kind: str, component: Any, batch_size: int = 2) -> Any:
    """Run `component` on tiny random inputs and check the output shapes its kind promises."""
    if isinstance(component, Encoder):
        out = {}
        for modality in component.modalities:
            spec = component.feature_spec(modality)  # token counts are per modality (CLIP video: T + N)
            features = component(torch.randn(batch_size, *component.input_shape(modality)), modality)
            assert features.tokens.shape == (batch_size, spec.num_tokens, spec.dim), features.tokens.shape
            if spec.grid is not None:
                assert spec.grid[0] * spec.grid[1] == spec.num_tokens
            out[modality] = features.tokens
        return out
    if isinstance(component, Projector):
        tokens = torch.randn(batch_size, TEST_UPSTREAM.num_tokens, TEST_UPSTREAM.dim)
        result = component(Features(tokens, TEST_UPSTREAM.grid, torch.randn(batch_size, TEST_UPSTREAM.dim)))
        if not isinstance(component, AdapterProjector):
            assert result.shape == (batch_size, component.num_tokens, component.output_dim), result.shape
        return result
    if isinstance(component, Head):
        inputs = cast(Any, component).example_inputs(batch_size)
        return component(*inputs).predictions
    if kind == "llm":
        ids = torch.randint(0, component.vocab_size, (batch_size, 7))
        mask = torch.ones_like(ids)
        out = component(component.embed(ids), mask, (mask.cumsum(-1) - 1))
        assert out.logits.shape == (batch_size, 7, component.vocab_size)
        assert out.hidden_states.shape == (batch_size, 7, component.hidden_size)
        return out.logits
    raise TypeError(f"no example forward for {kind} {type(component).__name__}")


def _outputs_equal(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return all(torch.equal(a[k], b[k]) for k in a)
    return bool(torch.equal(a, b))


class ConformanceSuite:
    """Subclass in a plugin's tests and set `distribution`; every component is tested."""

    distribution: str | None = None

    @staticmethod
    def _resolve(component: tuple[str, str]) -> tuple[str, Any]:
        kind, name = component
        return kind, Registry().resolve(kind, name).cls

    def test_config_roundtrip(self, component: tuple[str, str]) -> None:
        """A component's tiny config survives dump → validate unchanged, and unknown keys are refused."""
        import pydantic

        _, cls = self._resolve(component)
        config = cls.Config.model_validate(cls.tiny_config())
        again = cls.Config.model_validate(config.model_dump())
        assert again == config
        try:
            cls.Config.model_validate({**cls.tiny_config(), "surely_not_a_key": 1})
        except pydantic.ValidationError:
            return
        raise AssertionError(f"{cls.__name__}.Config accepts unknown keys; inherit ComponentConfig")

    def test_meta_build(self, component: tuple[str, str]) -> None:
        """On the meta device a component builds with every parameter on meta (no weights read)."""
        kind, cls = self._resolve(component)
        if kind in ("template", "dataset", "box_codec"):
            return self._check_data_component(kind, cls)
        built = build_for_test(kind, cls, device="meta")
        params = list(built.parameters())
        assert all(p.is_meta for p in params), "parameters were materialised on the meta device"

    def _check_data_component(self, kind: str, cls: Any) -> None:
        from mmcore.builtins.byte_tokenizer import byte_level_tokenizer
        from mmcore.sequence import IGNORE_INDEX, SequenceBuilder

        tokenizer = byte_level_tokenizer()
        built = cls(cls.Config.model_validate(cls.tiny_config()), BuildContext(name="test", tokenizer=tokenizer))
        if isinstance(built, Template):
            conversation = [Turn("user", "<image>\nWhat is it?"), Turn("assistant", "A cat.")]
            builder = SequenceBuilder(tokenizer, {"image": 2}, 512)
            learned = builder.encode(built.render(conversation), {"image": 1}, "t").labels
            assert any(t != IGNORE_INDEX for t in learned), "render() marks no assistant text as learned"
            prompt = builder.encode(built.generation_prompt(conversation[:1]), {"image": 1}, "t", train=False).labels
            assert all(t == IGNORE_INDEX for t in prompt), "generation_prompt() marks text as learned"
        elif isinstance(built, Dataset):
            assert len(built) > 0 and isinstance(built[0], Sample)
        elif isinstance(built, BoxCodec):
            box = (10.0, 20.0, 30.0, 40.0)
            decoded = built.decode(f"it is {built.encode(box, (100, 50))}.", (100, 50))
            assert decoded is not None and max(abs(a - b) for a, b in zip(decoded, box, strict=True)) <= 1.0

    def test_forward_shapes(self, component: tuple[str, str]) -> None:
        """A forward on tiny CPU inputs returns the shapes the kind promises."""
        kind, cls = self._resolve(component)
        if kind in ("template", "dataset", "box_codec"):
            return self._check_data_component(kind, cls)
        example_forward(kind, build_for_test(kind, cls).eval())

    def test_state_dict_roundtrip(self, component: tuple[str, str], tmp_path: Path) -> None:
        """Weights saved as safetensors load into a differently seeded build and reproduce outputs."""
        from safetensors.torch import load_file, save_file

        kind, cls = self._resolve(component)
        if kind in ("template", "dataset", "box_codec"):
            return
        first = build_for_test(kind, cls, seed=0).eval()
        _perturb(first)
        path = tmp_path / "weights.safetensors"
        save_file({k: v.contiguous().clone() for k, v in first.state_dict().items()}, str(path))
        second = build_for_test(kind, cls, seed=1).eval()
        second.load_state_dict(load_file(str(path)))
        torch.manual_seed(0)
        expected = example_forward(kind, first)
        torch.manual_seed(0)
        assert _outputs_equal(expected, example_forward(kind, second))

    def test_determinism(self, component: tuple[str, str]) -> None:
        """The same seed builds the same weights, and the same input gives the same output."""
        kind, cls = self._resolve(component)
        if kind in ("template", "dataset", "box_codec"):
            return
        a, b = build_for_test(kind, cls, seed=3).eval(), build_for_test(kind, cls, seed=3).eval()
        for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
            assert torch.equal(pa, pb), f"{name} differs between two builds with one seed"
        torch.manual_seed(0)
        first = example_forward(kind, a)
        torch.manual_seed(0)
        assert _outputs_equal(first, example_forward(kind, a))


def _perturb(module: nn.Module) -> None:
    """Move zero-initialised parameters (gates, LoRA B) off zero so the round trip is meaningful."""
    with torch.no_grad():
        for p in module.parameters():
            if p.is_floating_point() and not p.any():
                p.add_(0.01)
