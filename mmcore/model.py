"""`MultimodalModel`: encoders → projectors → LLM (+ heads, + retriever), one forward, one generate.

Heads run through the dtype policy (`run_in_policy`) on the hidden states their trigger selects; their
weighted losses join the LM loss, each term kept apart (`ModelOutput.terms`: "lm", "heads.seg.bce", ...).
`generate_with_heads` returns, with the new tokens, the heads' predictions for every trigger the model
generated: one forward over prompt + generated ids (batched, left-padded prompts) from which each head reads
the states of the generated positions — so a batch gives what batch size 1 gives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from mmcore.kinds import LLM, AdapterProjector, Component, Encoder, Features, Head, Projector, Retriever
from mmcore.kinds.projector import weighted_mean
from mmcore.sequence import IGNORE_INDEX, Batch, MediaBatch

__all__ = ["Generation", "ModelOutput", "MultimodalModel", "run_in_policy"]


@dataclass
class ModelOutput:
    loss: torch.Tensor | None  # LM loss + weighted head losses
    lm_loss: torch.Tensor | None
    logits: torch.Tensor  # (B, L, V)
    hidden_states: torch.Tensor  # (B, L, D) last layer
    head_losses: dict[str, torch.Tensor] = field(default_factory=dict)  # "seg.bce" → weighted term
    head_outputs: dict[str, Any] = field(default_factory=dict)  # head name → its predictions

    @property
    def terms(self) -> dict[str, torch.Tensor]:
        """Every term of `loss` on its own: "lm" and "heads.<head>.<term>"."""
        lm = {} if self.lm_loss is None else {"lm": self.lm_loss}
        return {**lm, **{f"heads.{k}": v for k, v in self.head_losses.items()}}


@dataclass
class Generation:
    """New tokens (B, T) and, per head, its predictions for the triggers the model generated (rows are the
    batch's samples, in the order generated)."""

    tokens: torch.Tensor
    heads: dict[str, dict[str, Any]] = field(default_factory=dict)


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy, mean over supervised tokens. As transformers' ForCausalLMLoss, the
    labels are shifted (padded with IGNORE), not the logits: slicing (B, L, V) logits would copy them."""
    shifted = F.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:].reshape(-1)
    return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), shifted, ignore_index=IGNORE_INDEX)


def _cast(value: Any, dtype: torch.dtype) -> Any:
    """Floating tensors (alone or in `Features`) cast to `dtype`; anything else unchanged."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, Features):
        levels = tuple(_cast(t, dtype) for t in value.levels) if value.levels is not None else None
        return Features(_cast(value.tokens, dtype), value.grid, _cast(value.pooled, dtype), levels)
    return value


def run_in_policy(component: nn.Module, *inputs: Any) -> Any:
    """Call `component` honouring its `compute_dtype` (mmcore.kinds.Component): float32 runs with autocast off
    and its floating inputs cast; a half dtype runs under autocast to it (its fp32-kept parameters meet its
    half weights as under upstream's AMP) and returns fp32; None runs as the caller does."""
    dtype = getattr(component, "compute_dtype", None)
    if dtype is None:
        return component(*inputs)
    device = next(t.device if isinstance(t, torch.Tensor) else t.tokens.device
                  for t in inputs if isinstance(t, (torch.Tensor, Features))).type
    if dtype == torch.float32:
        with torch.autocast(device, enabled=False):
            return component(*(_cast(t, dtype) for t in inputs))
    with torch.autocast(device, dtype=dtype):
        return _cast(component(*inputs), torch.float32)


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
        if retriever is not None and retriever_encoder is not None:
            retriever.bind_encoder(encoders[retriever_encoder])
        self._conditions: dict[str, torch.Tensor] = {}  # adapter projector → (B, L_a, D) while running
        self.declared_tokens: list[str] = []  # special tokens assembly registered on purpose (answers keep them)
        self.loss_terms: dict[str, float] = {}  # the last forward's terms as numbers, for the run log (with heads)
        for component in self.components().values():
            if isinstance(component, Component):
                component.apply_dtype_policy()  # fp16 / bf16 towers keep some parameters fp32
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
        """Tokens per media item of each modality: its projector's count for its encoder's features of that
        modality (one CLIP + mlp: image N, video T + N)."""
        return {m: int(cast(Projector, self.projectors[e]).tokens_for(cast(Encoder, self.encoders[e]).feature_spec(m)))
                for m, e in self.modality_encoder.items()}

    # --- adapter mode ---------------------------------------------------------------------------
    def _wire_adapters(self) -> None:
        self._adapters = {n: p for n, p in self.projectors.items() if isinstance(p, AdapterProjector)}
        self._hooked: list[tuple[nn.Module, Any]] = []  # (module, hook handle) per decoder layer
        self._sync_adapter_hooks()

    def _sync_adapter_hooks(self) -> None:
        """Hook each layer's CURRENT output projection. peft's LoRA replaces `o_proj` by a wrapper computing
        base(x) + B(A(x)); a hook left on the base layer would feed the LoRA term x without the adapter term
        (upstream `llama.py::Attention`: wo(out) + lora_wo(out), out including the adapter). Merging puts the
        base layer back; the hook follows it."""
        if not self._adapters:
            return
        sites = self.llm.attention_sites()
        if [m for m, _ in self._hooked] == [site.output_proj for site in sites]:
            return
        for _, handle in self._hooked:
            handle.remove()
        self._hooked = [(site.output_proj, site.output_proj.register_forward_pre_hook(self._adapter_hook(layer, site)))
                        for layer, site in enumerate(sites)]

    def _adapter_hook(self, layer: int, site: Any) -> Callable[..., Any]:
        """ImageBind-LLM: attention output += tanh(gate[layer, head]) * wv(condition), before `wo`."""
        value_proj = getattr(site.value_proj, "base_layer", site.value_proj)  # frozen base wv, not LoRA
        groups = site.num_heads // site.num_kv_heads

        def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...] | None:
            attended = args[0]  # (B, S, heads * head_dim)
            added = None
            for name, projector in self._adapters.items():
                condition = self._conditions.get(name)
                layer_condition = None if condition is None else projector.condition_for_layer(condition, layer)
                if layer_condition is None:
                    continue
                value = value_proj(layer_condition)  # (B, 1, kv * hd)
                value = value.view(value.shape[0], 1, site.num_kv_heads, site.head_dim)
                value = value.repeat_interleave(groups, dim=2)  # (B, 1, heads, hd)
                gate = projector.gates[layer].tanh().view(1, 1, -1, 1)
                term = (gate * value).flatten(2)  # (B, 1, heads * hd), broadcast over S
                added = term if added is None else added + term
            return None if added is None else (attended + added.to(attended.dtype), *args[1:])

        return hook

    # --- media -----------------------------------------------------------------------------------
    def _encode(self, modality: str, items: MediaBatch, retrieve: bool = True) -> Features:
        """The modality's encoder on its view of `items`, through its frozen-feature cache when one is attached."""
        name = self.modality_encoder[modality]
        encoder = cast(Encoder, self.encoders[name])
        frozen = not any(p.requires_grad for p in encoder.parameters())

        def compute(media: torch.Tensor) -> Features:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
                return cast(Features, run_in_policy(encoder, media, modality))  # its dtype policy (EVA in fp16)

        consumer = f"encoders.{name}"
        features = encoder.through_cache(items.views[consumer], items.meta.get(consumer, []), compute, modality)
        return self._retrieve(name, features) if retrieve else features

    def _retrieve(self, encoder: str, features: Features) -> Features:
        retriever = self.retriever
        if retriever is not None and self.retriever_encoder == encoder and (
                not retriever.training or retriever.applies_in_training):
            return retriever.enhance(features)
        return features

    def _adapter_condition(self, name: str, projector: AdapterProjector, batch: Batch) -> torch.Tensor | None:
        """(B, L, D) condition of one adapter projector from every modality of its encoder in the batch,
        combined as the projector declares (`fusion`); rows without media stay zero."""
        batch_size = batch.input_ids.shape[0]
        parts: dict[str, tuple[Features, torch.Tensor]] = {}
        for modality in self.modality_order:
            if self.modality_encoder[modality] == name and modality in batch.media:
                items = batch.media[modality]
                fused = projector.fusion == "features"
                parts[modality] = (self._encode(modality, items, retrieve=not fused),
                                   items.sample_index)
        if not parts:
            return None
        if projector.fusion == "features":
            missing = [m for m, (f, _) in parts.items() if f.pooled is None]
            if missing:
                raise ValueError(f"projector '{name}' fuses pooled features, but encoder '{name}' gives none for "
                                 f"{missing}")
            pooled_parts = {m: (cast(torch.Tensor, f.pooled), i) for m, (f, i) in parts.items()}
            pooled, rows = projector.fuse_features(pooled_parts, batch_size)
            features = self._retrieve(name, Features(tokens=pooled.unsqueeze(1), pooled=pooled))
            projected = run_in_policy(projector, features)  # (R, L, D)
        else:
            conditions = {m: (run_in_policy(projector, f), i) for m, (f, i) in parts.items()}
            projected, rows = weighted_mean(conditions, {m: projector.modality_weight(m) for m in parts}, batch_size)
        return projected.new_zeros((batch_size, *projected.shape[1:])).index_copy(0, rows, projected)

    def media_tokens(self, batch: Batch) -> torch.Tensor | None:
        """Project all media; fill adapter conditions; return the flat token matrix (T, D) or None."""
        self._sync_adapter_hooks()
        self._conditions = {}
        for name, projector in self._adapters.items():
            condition = self._adapter_condition(name, projector, batch)
            if condition is not None:
                self._conditions[name] = condition
        flat = []
        for modality in self.modality_order:
            name = self.modality_encoder[modality]
            if modality not in batch.media or name in self._adapters:
                continue
            features = self._encode(modality, batch.media[modality])
            projected = run_in_policy(self.projectors[name], features)  # (N_m, M, D)
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
            rows = positions.nonzero()[:, 0]  # (K,)
            # Contract: a supervised batch (the Processor's train path) gives every row holding a trigger exactly its
            # targets — a head meeting a trigger without one raises, never a silent zero loss; a generation batch has
            # no labels and no targets (None: predictions only).
            targets = batch.targets if supervised else None
            result = run_in_policy(head, out.hidden_states[positions], rows, batch.media, targets)
            head_outputs[name] = result.predictions
            for key, value in result.losses.items():
                head_losses[f"{name}.{key}"] = value
                loss = value if loss is None else loss + value
        output = ModelOutput(loss, lm, out.logits, out.hidden_states, head_losses, head_outputs)
        if self.heads:
            self.loss_terms = {k: float(v.detach()) for k, v in output.terms.items()}
        return output

    def _options(self, batch: Batch, max_new_tokens: int, do_sample: bool, temperature: float, top_p: float,
                 generation: dict[str, Any]) -> dict[str, Any]:
        if bool((batch.attention_mask[:, -1] == 0).any()):
            raise ValueError("generate needs left padding: collate with padding_side='left'")
        options: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": do_sample, **generation}
        if do_sample:
            options.update(temperature=temperature, top_p=top_p)
        else:
            options.update(temperature=None, top_p=None, top_k=None)
        return options

    @torch.no_grad()
    def generate(self, batch: Batch, max_new_tokens: int = 128, do_sample: bool = False,
                 temperature: float = 1.0, top_p: float = 1.0, **generation: Any) -> torch.Tensor:
        """Left-padded prompts → (B, T) new tokens (greedy by default; KV cache)."""
        options = self._options(batch, max_new_tokens, do_sample, temperature, top_p, generation)
        try:
            embeds = self.embed(batch)
            return self.llm.generate(embeds, batch.attention_mask, **options)
        finally:
            self._conditions = {}

    @torch.no_grad()
    def generate_with_heads(self, batch: Batch, max_new_tokens: int = 128, do_sample: bool = False,
                            temperature: float = 1.0, top_p: float = 1.0, **generation: Any) -> Generation:
        """`generate`, plus each head's predictions for every trigger the model generated."""
        options = self._options(batch, max_new_tokens, do_sample, temperature, top_p, generation)
        try:
            embeds = self.embed(batch)
            tokens = self.llm.generate(embeds, batch.attention_mask, **options)
            eos = options.get("eos_token_id", getattr(self.llm.tokenizer, "eos_token_id", None))
            return Generation(tokens, self._generated_heads(batch, embeds, tokens, eos))
        finally:
            self._conditions = {}

    def _generated_heads(self, batch: Batch, embeds: torch.Tensor, tokens: torch.Tensor,
                         eos: int | list[int] | None) -> dict[str, dict[str, Any]]:
        """One forward over prompt + generated tokens (those up to each row's first EOS); each head reads the
        states its trigger selects among the GENERATED positions (a trigger in the prompt is not an answer's)."""
        if not self.heads:
            return {}
        stops = torch.tensor([] if eos is None else [eos] if isinstance(eos, int) else list(eos),
                             dtype=tokens.dtype, device=tokens.device)
        ended = torch.isin(tokens, stops).long()  # (B, T)
        live = (ended.cumsum(-1) - ended) == 0  # up to and including the first EOS
        attention = torch.cat([batch.attention_mask, live.long()], dim=1)  # (B, L + T)
        chosen = torch.cat([torch.full_like(batch.input_ids, -1), tokens.masked_fill(~live, -1)], dim=1)
        selections = {n: cast(Head, h).positions(chosen) for n, h in self.heads.items()}  # (B, L + T) each
        hidden = None
        if any(bool(s.any()) for s in selections.values()):
            full = torch.cat([embeds, self.llm.embed(tokens).to(embeds.dtype)], dim=1)
            positions = (attention.cumsum(-1) - 1).clamp(min=0)
            hidden = self.llm(full, attention, positions).hidden_states  # (B, L + T, D)
        out = {}
        for name, module in self.heads.items():
            selected = selections[name]
            states = embeds.new_zeros((0, embeds.shape[-1])) if hidden is None else hidden[selected]  # (K, D)
            out[name] = run_in_policy(module, states, selected.nonzero()[:, 0], batch.media, None).predictions
        return out
