"""The language model interface: embeddings, a forward with hidden states, cached generation,
special-token registration, decoder layers and LoRA targets."""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from mmcore.kinds._base import Component

__all__ = ["LLM", "AttentionSite", "LMOutput"]


@dataclass
class AttentionSite:
    """Where an adapter enters one decoder layer: the value projection and the output projection."""

    value_proj: nn.Linear  # (D) → (kv_heads * head_dim)
    output_proj: nn.Linear  # its input is the attention output (B, S, heads * head_dim)
    num_heads: int
    num_kv_heads: int
    head_dim: int


@dataclass
class LMOutput:
    logits: torch.Tensor  # (B, L, V)
    hidden_states: torch.Tensor  # (B, L, D) output of the last decoder layer, after the final norm
    all_hidden_states: tuple[torch.Tensor, ...] | None = None


class LLM(Component):
    """Base LLM. `tokenizer` is a transformers tokenizer (or None on the meta device without one)."""

    kind: ClassVar[str] = "llm"
    tokenizer: Any

    @property
    @abstractmethod
    def hidden_size(self) -> int: ...

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @property
    @abstractmethod
    def max_position_embeddings(self) -> int: ...

    @abstractmethod
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) ids → (B, L, D) input embeddings."""

    @abstractmethod
    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor, output_all_hidden_states: bool = False) -> LMOutput:
        """Embeddings → logits and last hidden states."""

    @abstractmethod
    def generate(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                 **generation: Any) -> torch.Tensor:
        """Left-padded prompt embeddings → (B, T) new token ids, with a KV cache."""

    @abstractmethod
    def add_special_tokens(self, tokens: list[str]) -> list[int]:
        """Register tokens, grow the embedding and LM head (new rows: mean of old rows), return ids."""

    @abstractmethod
    def decoder_layers(self) -> list[nn.Module]:
        """The decoder blocks, first to last."""

    @abstractmethod
    def attention_sites(self) -> list[AttentionSite]:
        """One AttentionSite per decoder layer, for adapter-mode projectors."""

    @abstractmethod
    def lora_target_names(self) -> list[str]:
        """Module-name suffixes of every linear layer a LoRA may target (LM head excluded)."""

    @abstractmethod
    def apply_lora(self, r: int, alpha: float, dropout: float, targets: list[str]) -> None:
        """Add LoRA adapters (peft) to the targeted linear layers of this LLM only; idempotent."""

    @abstractmethod
    def merge_lora(self) -> None:
        """Fold the adapters into the base weights and remove them."""

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute activations in backward to save memory (LLMs that support it override this)."""
        if enabled:
            from mmcore.errors import MmcoreError

            raise MmcoreError(f"{type(self).__name__} does not support gradient checkpointing; set "
                              f"gradient_checkpointing = false")
