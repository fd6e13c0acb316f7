"""A ready model: `mmcore.load(RUN)` → `Pipeline` (the run's model + its data `Processor` + its defaults).

The pipeline prepares nothing itself: prompts and media go through the run's `Processor` (the same one
training and evaluation use), and the model runs tensors. The template defaults to the run's own (its
`[eval] template`, else its last stage's), so `mmcore.load(run).answer(...)` and `mmcore generate` agree.

Answers are strings; `answer(..., return_heads=True)` returns `Answer` objects instead: the text plus, per head,
its predictions for every trigger the model generated (u-LLaVA's masks and boxes), and what to draw of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch

from mmcore.data import Processor
from mmcore.errors import MmcoreError, SampleError
from mmcore.kinds import Head, Overlay, Sample, Turn
from mmcore.model import MultimodalModel
from mmcore.sequence import placeholder

__all__ = ["Answer", "Pipeline", "load"]

MEDIA_SUFFIXES = {".png": "image", ".jpg": "image", ".jpeg": "image", ".bmp": "image", ".gif": "image",
                  ".webp": "image", ".tif": "image", ".tiff": "image"}


def _media_dict(media: Any) -> dict[str, list[Any]]:
    """One prompt's media: a dict {modality: [items]}, one item (path or PIL image) or a list of items."""
    if media is None:
        return {}
    if isinstance(media, dict):
        return {m: list(v) if isinstance(v, (list, tuple)) else [v] for m, v in media.items()}
    items = list(media) if isinstance(media, (list, tuple)) else [media]
    out: dict[str, list[Any]] = {}
    for item in items:
        modality = MEDIA_SUFFIXES.get(Path(item).suffix.lower(), "image") if isinstance(item, (str, Path)) else "image"
        out.setdefault(modality, []).append(item)
    return out


def with_placeholders(prompt: str, media: dict[str, list[Any]]) -> str:
    """`prompt` with one `<modality>` line per item in front when it names none (LLaVA: "<image>\\n" + q)."""
    lead = "".join(f"{placeholder(m)}\n" * len(items) for m, items in media.items()
                   if items and placeholder(m) not in prompt)
    return lead + prompt


@dataclass
class Answer:
    """One answer with what the model's heads made of it: `predictions[head]` holds that head's outputs for the
    triggers this answer generated, in order (empty when it generated none); `overlays` what to draw."""

    text: str
    predictions: dict[str, dict[str, Any]] = field(default_factory=dict)
    overlays: list[Overlay] = field(default_factory=list)

    def __str__(self) -> str:
        return self.text

    @property
    def masks(self) -> list[Any]:
        """(H, W) bool masks at the image's size, one per generated mask trigger ([SEG])."""
        return [o.value for o in self.overlays if o.kind == "mask"]

    @property
    def boxes(self) -> list[tuple[float, float, float, float]]:
        """(x1, y1, x2, y2) pixel boxes of the image, one per generated box trigger ([LOC])."""
        return [tuple(o.value) for o in self.overlays if o.kind == "box"]


class Pipeline:
    """Answers prompts about media, batched and left-padded, with the run's processor and template."""

    def __init__(self, model: MultimodalModel, processor: Processor, template: str) -> None:
        self.model = model
        self.processor = processor
        self.template = template  # the run's default

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def answer(self, prompts: str | list[str], media: Any = None, template: str | None = None,
               return_heads: bool = False, **generation: Any) -> Any:
        """Greedy answers (sampling with `do_sample=True, temperature=…, top_p=…`).

        `answer("What is it?", "cat.png")` → one answer; `answer([q1, q2], [img1, {"image": [a, b]}])` → a
        list. A prompt that names no `<image>` gets one per image in front, as `mmcore generate` does.
        `return_heads=True`: `Answer` objects (text, the heads' predictions for the triggers generated, masks
        and boxes) instead of strings.
        """
        single = isinstance(prompts, str)
        texts = [prompts] if isinstance(prompts, str) else list(prompts)
        if media is None:
            per_prompt: list[Any] = [None] * len(texts)
        elif single:
            per_prompt = [media]
        else:
            per_prompt = list(media)
        if len(per_prompt) != len(texts):
            raise MmcoreError(f"answer: {len(texts)} prompts but media for {len(per_prompt)}; give one entry per "
                              f"prompt (None for a text-only prompt)")
        samples = []
        for i, (text, item) in enumerate(zip(texts, per_prompt, strict=True)):
            items = _media_dict(item)
            samples.append(Sample(id=f"prompt-{i}", conversation=[Turn("user", with_placeholders(text, items))],
                                  media=items))
        name = template or self.template
        try:
            batch = self.processor.batch(samples, name, train=False).to(self.device)
        except SampleError as err:
            raise MmcoreError(str(err)) from None
        if not return_heads:
            answers: list[Any] = self.processor.decode(self.model.generate(batch, **generation), name)
        else:
            generated = self.model.generate_with_heads(batch, **generation)
            answers = self.answers(self.processor.decode(generated.tokens, name), generated.heads)
        return answers[0] if single else answers

    def answers(self, texts: list[str], heads: dict[str, dict[str, Any]]) -> list[Answer]:
        """Decoded texts and a batch's head predictions → one `Answer` per row."""
        out = [Answer(text) for text in texts]
        for name, predictions in heads.items():
            head = cast(Head, self.model.heads[name])
            for answer, own in zip(out, head.split(predictions, len(texts)), strict=True):
                answer.predictions[name] = own
                answer.overlays += head.overlays(own)
        return out


def load(run: str | Path, device: str = "cpu") -> Pipeline:
    """Rebuild a run's model with its trained (or imported) weights, ready to answer."""
    from mmcore.run import Run

    return Run.open(run).pipeline(device)
