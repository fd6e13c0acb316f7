"""A ready model: `mmcore.load(RUN)` → `Pipeline` (model + preprocessing + sequence builder)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, cast

import torch

from mmcore.errors import MmcoreError, SampleError
from mmcore.kinds import BuildContext, Encoder, Sample, Template, Turn
from mmcore.model import MultimodalModel
from mmcore.sequence import Batch, Encoded, SequenceBuilder, collate

__all__ = ["Pipeline", "load"]


class Pipeline:
    """Turns `Sample`s into batches (one path for training and generation) and answers prompts."""

    def __init__(self, model: MultimodalModel, max_length: int, registry: Any, base_dir: Path) -> None:
        self.model = model
        self.tokenizer = model.llm.tokenizer
        self.builder = SequenceBuilder(self.tokenizer, model.tokens_per_item, max_length)
        self.registry = registry
        self._base_dir = base_dir
        self._templates: dict[str, Template] = {}

    def template(self, name: str) -> Template:
        if name not in self._templates:
            cls = self.registry.resolve("template", name).cls
            ctx = BuildContext(name=name, base_dir=self._base_dir, tokenizer=self.tokenizer)
            self._templates[name] = cls(cls.Config(), ctx)
        return self._templates[name]

    def preprocess(self, sample: Sample) -> dict[str, list[torch.Tensor]]:
        """Each media item through its encoder's own preprocessing (runs in data-loader workers)."""
        out: dict[str, list[torch.Tensor]] = {}
        for modality, items in sample.media.items():
            encoder_name = self.model.modality_encoder.get(modality)
            if encoder_name is None:
                raise SampleError(f"sample '{sample.id}': no encoder takes '{modality}'", "unknown-modality")
            encoder = cast(Encoder, self.model.encoders[encoder_name])
            try:
                out[modality] = [encoder.preprocess(item, modality) for item in items]
            except FileNotFoundError as err:
                raise SampleError(f"sample '{sample.id}': {modality} file missing ({err.filename})",
                                  "missing-media") from None
            except (OSError, ValueError) as err:
                raise SampleError(f"sample '{sample.id}': {modality} item could not be read ({err})",
                                  "corrupt-media") from None
        return out

    def encode(self, sample: Sample, template: str, train: bool) -> Encoded:
        tpl = self.template(template)
        if train:
            segments = tpl.render(sample.conversation, sample.task)
        else:
            segments = tpl.generation_prompt(sample.conversation, sample.task)
        counts = {m: len(items) for m, items in sample.media.items()}
        return self.builder.encode(segments, counts, sample.id, add_bos=tpl.add_bos, train=train)

    def batch(self, samples: list[Sample], template: str, train: bool) -> Batch:
        """Samples → a Batch: right padding for training, left padding for generation."""
        side: Literal["left", "right"] = "right" if train else "left"
        encoded = [self.encode(s, template, train) for s in samples]
        media = [self.preprocess(s) for s in samples]
        return collate(self.builder, encoded, media, self.model.modality_order, side,
                       [s.targets for s in samples])

    def answer(self, prompts: list[str], media: list[dict[str, list[Any]]] | None = None,
               template: str = "vicuna_v1", **generation: Any) -> list[str]:
        """Batched answers to `prompts` (each may hold placeholders for its `media` items)."""
        media = media or [{} for _ in prompts]
        samples = [Sample(id=f"prompt-{i}", conversation=[Turn("user", p)], media=m)
                   for i, (p, m) in enumerate(zip(prompts, media, strict=True))]
        batch = self.batch(samples, template, train=False).to(self.device)
        return self.decode(self.model.generate(batch, **generation), template)

    def decode(self, new_tokens: torch.Tensor, template: str) -> list[str]:
        """Generated ids → answers, cut at the template's stop strings and EOS."""
        stops = self.template(template).stop_strings()
        eos = self.tokenizer.eos_token_id
        answers = []
        for row in new_tokens.tolist():
            row = row[: row.index(eos)] if eos in row else row
            text = self.tokenizer.decode(row, skip_special_tokens=True)
            for stop in stops:
                text = text.split(stop)[0]
            answers.append(text.strip())
        return answers

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def load(run_dir: str | Path, device: str = "cpu") -> Pipeline:
    """Rebuild a run's model with real weights: its sources, then `RUN/weights/*.safetensors`."""
    from mmcore.assembly import assemble
    from mmcore.checkpoint import load_component_weights

    run = Path(run_dir)
    lock_path = run / "assembly.lock"
    if not lock_path.exists():
        raise MmcoreError(f"{run}: no assembly.lock here; run `mmcore assemble MANIFEST -o {run}` first")
    try:
        lock = json.loads(lock_path.read_text())
    except ValueError as err:
        raise MmcoreError(f"{lock_path}: corrupt ({err}); re-run `mmcore assemble`") from None
    assembly = assemble(run / "manifest.toml", device="cpu", base_dir=Path(lock["base_dir"]))
    model = assembly.model
    modules = model.components()
    lora = run / "weights" / "lora.json"
    if lora.exists():
        model.llm.apply_lora(**json.loads(lora.read_text()))
    load_component_weights(modules, run / "weights")
    model.to(device).eval()
    return Pipeline(model, assembly.max_length, assembly.registry, assembly.loaded.base_dir)
