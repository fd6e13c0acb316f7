"""`MultimodalModel`: encoders → projectors → LLM (+ heads, + retriever), one forward, one generate."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from mmcore.kinds import LLM, AdapterProjector, Encoder, Features, Head, Projector, Retriever
from mmcore.sequence import IGNORE_INDEX, Batch

__all__ = ["ModelOutput", "MultimodalModel", "run_in_policy"]


@dataclass
class ModelOutput:
    loss: torch.Tensor | None  # LM loss + weighted head losses
    lm_loss: torch.Tensor | None
    logits: torch.Tensor  # (B, L, V)
    hidden_states: torch.Tensor  # (B, L, D) last layer
    head_losses: dict[str, torch.Tensor] = field(default_factory=dict)
    head_outputs: dict[str, Any] = field(default_factory=dict)


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy, mean over supervised tokens. As transformers' ForCausalLMLoss, the
    labels are shifted (padded with IGNORE), not the logits: slicing (B, L, V) logits would copy them."""
    shifted = F.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:].reshape(-1)
    return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), shifted, ignore_index=IGNORE_INDEX)


def run_in_policy(component: nn.Module, features: Features) -> torch.Tensor:
    """Call `component` honouring its `compute_dtype`: autocast off, floating inputs cast to that dtype."""
    dtype = getattr(component, "compute_dtype", None)
    if dtype is None:
        return component(features)
    tokens = features.tokens

    def cast_(t: torch.Tensor | None) -> torch.Tensor | None:
        return t.to(dtype) if t is not None and t.is_floating_point() else t

    levels = tuple(cast(torch.Tensor, cast_(t)) for t in features.levels) if features.levels is not None else None
    cast_features = Features(tokens=cast(torch.Tensor, cast_(tokens)), grid=features.grid,
                             pooled=cast_(features.pooled), levels=levels)
    with torch.autocast(tokens.device.type, enabled=False):
        return component(cast_features)


class MultimodalModel(nn.Module):
    """The assembled model. `modality_encoder` maps each modality to the encoder that takes it."""

    def __init__(self, llm: LLM, encoders: dict[str, Encoder], projectors: dict[str, Projector],
                 modality_encoder: dict[str, str], heads: dict[str, Head] | None = None,
                 retriever: Retriever | None = None, retriever_encoder: str | None = None) -> None:
        super().__init__()
        self.llm = llm
        self.encoders = nn.ModuleDict(encoders)
        self.projectors = nn.ModuleDict(projectors)
        self.heads = nn.ModuleDict(heads or {})
        self.retriever = retriever
        self.modality_encoder = dict(modality_encoder)
        self.retriever_encoder = retriever_encoder
        self._conditions: dict[str, torch.Tensor] = {}  # adapter projector → (B, L_a, D) while running
        self._wire_adapters()

    # --- static description ----------------------------------------------------------------------
    @property
    def modality_order(self) -> list[str]:
        return list(self.modality_encoder)

    def components(self) -> dict[str, nn.Module]:
        """Qualified component name → module: 'llm', 'encoders.vision', 'projectors.vision', ..."""
        named: dict[str, nn.Module] = {"llm": self.llm}
        named.update({f"encoders.{n}": m for n, m in self.encoders.items()})
        named.update({f"projectors.{n}": m for n, m in self.projectors.items()})
        named.update({f"heads.{n}": m for n, m in self.heads.items()})
        if self.retriever is not None:
            named["retriever"] = self.retriever
        return named

    @property
    def tokens_per_item(self) -> dict[str, int]:
        return {m: int(cast(Projector, self.projectors[e]).num_tokens) for m, e in self.modality_encoder.items()}

    # --- adapter mode ----------------------------------------------------------------------------
    def _wire_adapters(self) -> None:
        adapters = {n: p for n, p in self.projectors.items() if isinstance(p, AdapterProjector)}
        if not adapters:
            return
        for layer, site in enumerate(self.llm.attention_sites()):
            site.output_proj.register_forward_pre_hook(self._adapter_hook(adapters, layer, site))

    def _adapter_hook(self, adapters: dict[str, AdapterProjector], layer: int, site: Any) -> Callable[..., Any]:
        """ImageBind-LLM: attention output += tanh(gate[layer, head]) * wv(condition), before `wo`."""
        value_proj = getattr(site.value_proj, "base_layer", site.value_proj)  # frozen base wv, not LoRA
        groups = site.num_heads // site.num_kv_heads

        def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...] | None:
            attended = args[0]  # (B, S, heads * head_dim)
            added = None
            for name, projector in adapters.items():
                condition = self._conditions.get(name)
                if condition is None:
                    continue
                value = value_proj(projector.condition_for_layer(condition, layer))  # (B, 1, kv * hd)
                value = value.view(value.shape[0], 1, site.num_kv_heads, site.head_dim)
                value = value.repeat_interleave(groups, dim=2)  # (B, 1, heads, hd)
                gate = projector.gates[layer].tanh().view(1, 1, -1, 1)
                term = (gate * value).flatten(2)  # (B, 1, heads * hd), broadcast over S
                added = term if added is None else added + term
            return None if added is None else (attended + added.to(attended.dtype), *args[1:])

        return hook

    # --- media -----------------------------------------------------------------------------------
    def _encode(self, modality: str, media: torch.Tensor) -> Features:
        encoder = self.encoders[self.modality_encoder[modality]]
        frozen = not any(p.requires_grad for p in encoder.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            features = encoder(media, modality)
        if self.retriever is not None and self.retriever_encoder == self.modality_encoder[modality]:
            features = self.retriever.enhance(features)
        return features

    def media_tokens(self, batch: Batch) -> torch.Tensor | None:
        """Project all media; fill adapter conditions; return the flat token matrix (T, D) or None."""
        self._conditions = {}
        flat = []
        batch_size = batch.input_ids.shape[0]
        for modality in self.modality_order:
            if modality not in batch.media:
                continue
            name = self.modality_encoder[modality]
            items = batch.media[modality]
            projector = cast(Projector, self.projectors[name])
            features = self._encode(modality, items.views[f"encoders.{name}"])
            projected = run_in_policy(projector, features)  # (N_m, M, D)
            if isinstance(projector, AdapterProjector):
                summed = projected.new_zeros((batch_size, *projected.shape[1:]))
                self._conditions[name] = summed.index_add(0, items.sample_index, projected)
            else:
                flat.append(projected.reshape(-1, projected.shape[-1]))
        return torch.cat(flat) if flat else None

    def embed(self, batch: Batch) -> torch.Tensor:
        """Input embeddings with every media span replaced by its projected tokens (B, L, D)."""
        embeds = self.llm.embed(batch.input_ids)
        tokens = self.media_tokens(batch)
        is_media = batch.media_token_index >= 0
        if tokens is None:
            if bool(is_media.any()):
                raise ValueError("batch has media positions but no media tensors")  # collator bug
            return embeds
        gathered = tokens.to(embeds.dtype)[batch.media_token_index.clamp(min=0)]  # (B, L, D)
        return torch.where(is_media.unsqueeze(-1), gathered, embeds)

    # --- running ---------------------------------------------------------------------------------
    def forward(self, batch: Batch) -> ModelOutput:
        try:
            embeds = self.embed(batch)
            out = self.llm(embeds, batch.attention_mask, batch.position_ids)
        finally:
            self._conditions = {}
        supervised = bool((batch.labels != IGNORE_INDEX).any())
        loss = lm = lm_loss(out.logits, batch.labels) if supervised else None
        head_losses, head_outputs = {}, {}
        for name, module in self.heads.items():
            head = cast(Head, module)
            positions = head.positions(batch.input_ids)  # (B, L) bool
            rows = positions.nonzero()[:, 0]
            result = head(out.hidden_states[positions], rows, batch.media, batch.targets)
            head_outputs[name] = result.predictions
            for key, value in result.losses.items():
                head_losses[f"{name}.{key}"] = value
                loss = value if loss is None else loss + value
        return ModelOutput(loss, lm, out.logits, out.hidden_states, head_losses, head_outputs)

    @torch.no_grad()
    def generate(self, batch: Batch, max_new_tokens: int = 128, do_sample: bool = False,
                 temperature: float = 1.0, top_p: float = 1.0, **generation: Any) -> torch.Tensor:
        """Left-padded prompts → (B, T) new tokens (greedy by default; KV cache)."""
        if bool((batch.attention_mask[:, -1] == 0).any()):
            raise ValueError("generate needs left padding: collate with padding_side='left'")
        options: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": do_sample, **generation}
        if do_sample:
            options.update(temperature=temperature, top_p=top_p)
        else:
            options.update(temperature=None, top_p=None, top_k=None)
        try:
            embeds = self.embed(batch)
            return self.llm.generate(embeds, batch.attention_mask, **options)
        finally:
            self._conditions = {}
