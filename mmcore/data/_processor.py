"""The one data path: a `Sample` becomes model inputs once, by one picklable `Processor`.

    sample ──► media views (each component's own preprocessing: encoders, heads, retrievers)
           ──► template (the upstream prompt as tokenizer calls)
           ──► SequenceBuilder (ids, labels, media spans)
           ──► collate (padding, media stacked per consumer) ──► Batch ──► model

Training, evaluation, `generate` and the Python API all use it; it carries the tokenizer, templates and
views — never weights — so data-loader workers can run it under fork or spawn.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from mmcore.errors import MmcoreError, SampleError, choices_text, did_you_mean
from mmcore.kinds import MediaView, Sample, Template
from mmcore.sequence import Batch, Encoded, SequenceBuilder, collate

__all__ = ["Prepared", "Processor"]

Item = tuple[dict[str, torch.Tensor], dict[str, dict[str, Any]]]  # consumer → tensor, consumer → metadata


@dataclass
class Prepared:
    """One sample, ready to collate: its tokens, its media as every consumer viewed it, its targets."""

    encoded: Encoded
    media: dict[str, list[Item]] = field(default_factory=dict)  # modality → items in placeholder order
    targets: dict[str, Any] = field(default_factory=dict)
    origin: str = ""  # where it came from, for messages: "dataset#index" (set by the stage's data)


@contextmanager
def _guarded(sid: str, modality: str) -> Iterator[None]:
    """A media item that cannot be read is a SampleError with its reason, never a crash: missing, corrupt (any
    decoder error) or oversized — an image whose header claims more than PIL's MAX_IMAGE_PIXELS is refused
    before it is decoded (a decompression bomb), not decoded with a warning."""
    import struct

    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            yield
        except FileNotFoundError as err:
            raise SampleError(f"sample '{sid}': {modality} file missing ({err.filename})", "missing-media") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise SampleError(f"sample '{sid}': {modality} item refused ({err})", "oversized-media") from None
        except (OSError, ValueError, SyntaxError, EOFError, struct.error) as err:
            raise SampleError(f"sample '{sid}': {modality} item could not be read ({type(err).__name__}: {err})",
                              "corrupt-media") from None


class Processor:
    """Sample → `Prepared` → `Batch`. `consumers[modality]` lists (component, view) pairs; the encoder of
    the modality comes first."""

    def __init__(self, builder: SequenceBuilder, consumers: dict[str, list[tuple[str, MediaView]]],
                 templates: dict[str, Template]) -> None:
        self.builder = builder
        self.consumers = consumers
        self.templates = dict(templates)

    @classmethod
    def for_model(cls, model: Any, max_length: int, templates: dict[str, Template],
                  preprocess: dict[str, dict[str, Any]] | None = None) -> Processor:
        """The processor of an assembled `MultimodalModel`; `preprocess` holds a stage's overrides per encoder."""
        consumers: dict[str, list[tuple[str, MediaView]]] = {}
        for modality, name in model.modality_encoder.items():
            view = model.encoders[name].media_view(**(preprocess or {}).get(name, {}))
            consumers[modality] = [(f"encoders.{name}", view)]
        for qualified, module in model.components().items():
            for modality in getattr(module, "view_modalities", ()):
                view = module.media_view()
                if view is not None and modality in consumers:
                    consumers[modality].append((qualified, view))
        return cls(SequenceBuilder(model.llm.tokenizer, model.tokens_per_item, max_length), consumers, templates)

    @property
    def tokenizer(self) -> Any:
        return self.builder.tokenizer

    @property
    def modality_order(self) -> list[str]:
        return list(self.consumers)

    def template(self, name: str) -> Template:
        if name not in self.templates:
            names = list(self.templates)
            raise MmcoreError(f"template '{name}' is not one of this run's{did_you_mean(name, names)}; "
                              f"templates: {choices_text(names)}")
        return self.templates[name]

    # --- one sample ------------------------------------------------------------------------------
    def view(self, sample: Sample) -> dict[str, list[Item]]:
        """Each media item through every consumer's view; a bad item is a SampleError with its reason."""
        out: dict[str, list[Item]] = {}
        for modality, items in sample.media.items():
            consumers = self.consumers.get(modality)
            if consumers is None:
                raise SampleError(f"sample '{sample.id}': no encoder takes '{modality}' (encoded: "
                                  f"{', '.join(self.consumers) or 'none'})", "unknown-modality")
            out[modality] = [self._view_item(sample.id, modality, item, consumers) for item in items]
        return out

    @staticmethod
    def _view_item(sid: str, modality: str, item: Any, consumers: list[tuple[str, MediaView]]) -> Item:
        tensors, meta = {}, {}
        for name, view in consumers:
            with _guarded(sid, modality):
                tensors[name], meta[name] = view(item, modality)
        return tensors, meta

    def encode(self, sample: Sample, template: str, train: bool) -> Encoded:
        tpl = self.template(template)
        pieces = tpl.render(sample.conversation, sample.task) if train else \
            tpl.generation_prompt(sample.conversation, sample.task)
        counts = {m: len(items) for m, items in sample.media.items()}
        return self.builder.encode(pieces, counts, sample.id, train=train)

    def prepare(self, sample: Sample, template: str, train: bool) -> Prepared:
        """Tokens first (cheap, and most bad records fail there), then the media views."""
        encoded = self.encode(sample, template, train)
        return Prepared(encoded, self.view(sample), sample.targets)

    # --- batches ---------------------------------------------------------------------------------
    def collate(self, prepared: list[Prepared], train: bool) -> Batch:
        """Right padding for training, left padding for generation."""
        side: Literal["left", "right"] = "right" if train else "left"
        return collate(self.builder, [p.encoded for p in prepared], [p.media for p in prepared],
                       self.modality_order, side, [p.targets for p in prepared])

    def batch(self, samples: list[Sample], template: str, train: bool) -> Batch:
        return self.collate([self.prepare(s, template, train) for s in samples], train)

    def decode(self, new_tokens: torch.Tensor, template: str) -> list[str]:
        """Generated ids → answers: cut at EOS, decoded, then the template's own post-processing."""
        tpl = self.template(template)
        eos = self.tokenizer.eos_token_id
        answers = []
        for row in new_tokens.tolist():
            row = row[: row.index(eos)] if eos in row else row
            answers.append(tpl.answer(self.tokenizer.decode(row, skip_special_tokens=True)))
        return answers
