"""The one data path: a `Sample` becomes model inputs once, by one picklable `Processor`.

    sample ──► media views (each component's own preprocessing: encoders, heads, retrievers)
           ──► template (the upstream prompt as tokenizer calls)
           ──► SequenceBuilder (ids, labels, media spans)
           ──► the heads' targets, checked against their triggers (the rule in `mmcore.kinds.head`)
           ──► collate (padding, media stacked per consumer, targets as tensors with rows) ──► Batch ──► model

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

__all__ = ["HeadTrigger", "Prepared", "Processor"]

Item = tuple[dict[str, torch.Tensor], dict[str, dict[str, Any]]]  # consumer → tensor, consumer → metadata


@dataclass(frozen=True)
class HeadTrigger:
    """What the data path needs of a head: its trigger (text and id) and the target key it consumes."""

    name: str  # "heads.seg"
    trigger: str  # "[SEG]"
    trigger_id: int
    target_key: str | None  # "masks"; None: the head takes no targets


@dataclass
class Prepared:
    """One sample, ready to collate: its tokens, its media as every consumer viewed it, its targets."""

    encoded: Encoded
    media: dict[str, list[Item]] = field(default_factory=dict)  # modality → items in placeholder order
    targets: dict[str, Any] = field(default_factory=dict)  # what it feeds the heads: key → items in trigger order
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
                 templates: dict[str, Template], heads: list[HeadTrigger] | None = None,
                 visible_tokens: list[int] | None = None) -> None:
        self.builder = builder
        self.consumers = consumers
        self.templates = dict(templates)
        self.heads = list(heads or [])
        self.visible_tokens = set(visible_tokens or [])  # special tokens answers keep ([SEG], [tag], ...)

    @classmethod
    def for_model(cls, model: Any, max_length: int, templates: dict[str, Template],
                  preprocess: dict[str, dict[str, Any]] | None = None, max_reply: int | None = None) -> Processor:
        """The processor of an assembled `MultimodalModel`; `preprocess` holds a stage's overrides per encoder,
        `max_reply` is `[model] max_reply_tokens`."""
        consumers: dict[str, list[tuple[str, MediaView]]] = {}
        for modality, name in model.modality_encoder.items():
            view = model.encoders[name].media_view(**(preprocess or {}).get(name, {}))
            consumers[modality] = [(f"encoders.{name}", view)]
        for qualified, module in model.components().items():
            for modality in getattr(module, "view_modalities", ()):
                view = module.media_view()
                if view is not None and modality in consumers:
                    consumers[modality].append((qualified, view))
        heads = [HeadTrigger(f"heads.{n}", h.trigger_token, int(h.trigger_id), h.target_key)
                 for n, h in model.heads.items() if h.trigger_id is not None]
        tokenizer = model.llm.tokenizer
        declared = list(getattr(model, "declared_tokens", ()))
        visible = [int(tokenizer.convert_tokens_to_ids(t)) for t in declared] if tokenizer is not None else []
        builder = SequenceBuilder(tokenizer, model.tokens_per_item, max_length, max_reply)
        return cls(builder, consumers, templates, heads, visible + [h.trigger_id for h in heads])

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
        """Tokens first (cheap, and most bad records fail there), then the heads' targets (training and
        teacher-forced evaluation; a generation prompt has no reply to check), then the media views."""
        encoded = self.encode(sample, template, train)
        targets = self.head_targets(sample, encoded) if train else {}
        media = self.view(sample)
        if targets:
            _check_targets(sample.id, targets, media)
        return Prepared(encoded, media, targets)

    def head_targets(self, sample: Sample, encoded: Encoded) -> dict[str, list[Any]]:
        """The targets `sample` feeds the heads with (key → items in trigger order). A sample feeds a head when
        its conversation holds the head's trigger; then it needs exactly one target per trigger its tokens keep
        (else a SampleError: `trigger-without-target` / `target-without-trigger`)."""
        fed: dict[str, list[Any]] = {}
        for head in self.heads:
            written = sum(turn.text.count(head.trigger) for turn in sample.conversation)
            if not written or head.target_key is None:
                continue
            kept = encoded.input_ids.count(head.trigger_id)
            items = sample.targets.get(head.target_key)
            if items is not None and (isinstance(items, (str, bytes)) or not hasattr(items, "__len__")):
                raise SampleError(f"sample '{sample.id}': targets['{head.target_key}'] is a {type(items).__name__}, "
                                  f"not a list with one item per '{head.trigger}'", "bad-target")
            have = 0 if items is None else len(items)
            if have != kept:
                cut = f" ({written - kept} cut off by max_length {self.builder.max_length})" if kept < written else ""
                raise SampleError(f"sample '{sample.id}': {kept} '{head.trigger}' trigger(s){cut} for {head.name} but "
                                  f"{have} '{head.target_key}' target(s); each trigger needs exactly one target",
                                  "trigger-without-target" if have < kept else "target-without-trigger")
            if kept:
                fed[head.target_key] = list(items)  # type: ignore[arg-type]  # have == kept > 0
        return fed

    # --- batches ---------------------------------------------------------------------------------
    def collate(self, prepared: list[Prepared], train: bool) -> Batch:
        """Right padding for training, left padding for generation."""
        side: Literal["left", "right"] = "right" if train else "left"
        return collate(self.builder, [p.encoded for p in prepared], [p.media for p in prepared],
                       self.modality_order, side, [p.targets for p in prepared])

    def batch(self, samples: list[Sample], template: str, train: bool) -> Batch:
        return self.collate([self.prepare(s, template, train) for s in samples], train)

    def decode(self, new_tokens: torch.Tensor, template: str) -> list[str]:
        """Generated ids → answers: cut at EOS, decoded, then the template's own post-processing. Special tokens
        are dropped except the declared ones (head triggers, u-LLaVA's `[tag]`), which answers keep as text."""
        tpl = self.template(template)
        eos = self.tokenizer.eos_token_id
        hidden = set(self.tokenizer.all_special_ids) - self.visible_tokens
        answers = []
        for row in new_tokens.tolist():
            row = row[: row.index(eos)] if eos in row else row
            if self.visible_tokens:
                text = self.tokenizer.decode([t for t in row if t not in hidden], skip_special_tokens=False)
            else:
                text = self.tokenizer.decode(row, skip_special_tokens=True)
            answers.append(tpl.answer(text))
        return answers


def _check_targets(sid: str, targets: dict[str, list[Any]], media: dict[str, list[Item]]) -> None:
    """The canonical target kinds: `boxes` are xyxy pixels (x2 ≥ x1, y2 ≥ y1); `masks` are 2-D at the size of
    the sample's first image (as a view measured it). A bad one is a SampleError (`bad-target`)."""
    import numpy as np

    images = media.get("image") or []
    sizes = [m["original_size"] for m in images[0][1].values() if "original_size" in m] if images else []
    for k, box in enumerate(targets.get("boxes", [])):
        try:
            values = np.asarray(box, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            values = np.zeros(0)
        if values.size != 4 or not np.isfinite(values).all() or values[2] < values[0] or values[3] < values[1]:
            raise SampleError(f"sample '{sid}': box target {k} is {str(box)[:60]}; boxes are [x1, y1, x2, y2] "
                              f"pixels with x2 ≥ x1 and y2 ≥ y1", "bad-target")
    for k, mask in enumerate(targets.get("masks", [])):
        array = np.asarray(mask)
        shape = tuple(array.shape)
        if len(shape) != 2 or array.dtype.kind not in "biuf" or (sizes and shape != tuple(sizes[0])):
            wanted = f"(H, W) = {tuple(sizes[0])}, the image's size" if sizes else "(H, W)"
            raise SampleError(f"sample '{sid}': mask target {k} has shape {shape} ({array.dtype}); masks are {wanted} "
                              f"numbers or booleans", "bad-target")
