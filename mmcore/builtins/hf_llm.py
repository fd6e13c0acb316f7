"""`hf-causal-lm`: any transformers causal LM, from a directory, an offline preset or a config table."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, ClassVar, Literal, cast

import torch
from pydantic import Field, model_validator
from torch import nn

from mmcore.errors import MmcoreError
from mmcore.kinds import LLM, AttentionSite, BuildContext, ComponentConfig, LMOutput
from mmcore.sources import check_config_table, config_class, resolve_source

__all__ = ["LLAMA_ADAPTER_BIASES", "HFCausalLM", "HFCausalLMConfig"]

LLAMA_ADAPTER_BIASES = ("q_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # llama.py: w_bias


class HFCausalLMConfig(ComponentConfig):
    source: str | None = None  # a save_pretrained directory, a preset or a hub id
    config: dict[str, Any] | None = None  # or: a transformers config (model_type + kwargs), random init
    init: Literal["pretrained", "random"] = "pretrained"  # "random": the source's config, new weights
    tokenizer: str | None = None  # "byte-level", a directory, or None: the source's own tokenizer
    attn_implementation: Literal["eager", "sdpa"] = "sdpa"
    # LLaMA-Adapter bias tuning: zero-initialised biases added to these linear layers (module-name suffixes), or
    # "llama-adapter" = its wq, wo, w1, w2, w3 (q_proj, o_proj, gate_proj, up_proj, down_proj; not wk, wv).
    # They are ordinary parameters of the LLM: trained by a stage's `bias_norm`, saved and loaded with it, and
    # declared in the config (`attention_bias`, `mlp_bias`) by `save_pretrained`.
    bias_tuning: list[str] | Literal["llama-adapter"] = Field(default_factory=list)
    # Special tokens registered at build, in order, before any head's trigger (new rows: the mean of the old
    # ones). u-LLaVA's vocabulary of 32011, in its id order: stage I [PAD], <image_patch>, <video_patch>, <img_beg>,
    # </img_end>, <vid_beg>, </vid_end> (32000-32006), then stage II [SEG] 32007, [LOC] 32008, [tag], [/tag].
    special_tokens: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_source(self) -> HFCausalLMConfig:
        if (self.source is None) == (self.config is None):
            raise ValueError("give exactly one of `source` (path, preset or hub id) and `config` (a table)")
        if self.config is not None and self.tokenizer is None:
            raise ValueError("a `config` table has no tokenizer files: set tokenizer = \"byte-level\" "
                             "or a tokenizer directory")
        if self.config is not None:  # checked against the transformers class, before any module is built
            options = dict(self.config)
            check_config_table(config_class(str(options.pop("model_type", "llama"))), options)
        return self


def _hf_config(cfg: HFCausalLMConfig, ctx: BuildContext) -> tuple[Any, Any]:
    """(transformers config, Source or None)."""
    from transformers import AutoConfig

    if cfg.config is not None:
        options = dict(cfg.config)
        return check_config_table(config_class(str(options.pop("model_type", "llama"))), options), None
    source = resolve_source(str(cfg.source), ctx.base_dir)
    options = dict(source.config)
    return AutoConfig.for_model(options.pop("model_type", "llama"), **options), source


def _load_tokenizer(cfg: HFCausalLMConfig, source: Any, ctx: BuildContext) -> Any:
    from transformers import AutoTokenizer

    if cfg.tokenizer == "byte-level":
        from mmcore.builtins.byte_tokenizer import byte_level_tokenizer

        return byte_level_tokenizer()
    folder = ctx.path(cfg.tokenizer) if cfg.tokenizer else (source.path if source else None)
    if folder is None:
        if ctx.on_meta:
            return None  # a preset without files: assembly counts the vocabulary from the config
        raise MmcoreError(f"llm source '{cfg.source}' has no tokenizer files here; set `tokenizer` to a "
                          f"tokenizer directory or \"byte-level\"")
    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as err:
        raise MmcoreError(f"tokenizer '{folder}' could not be loaded ({err}); point `tokenizer` at a "
                          f"directory written by save_pretrained") from None


class HFCausalLM(LLM):
    """Wraps `AutoModelForCausalLM`; `self.model` keeps transformers' own module names and keys."""

    Config: ClassVar[type[ComponentConfig]] = HFCausalLMConfig
    model: Any  # a transformers *ForCausalLM
    lora_config: dict[str, Any] | None = None  # the LoRA applied by apply_lora, if any

    def __init__(self, config: HFCausalLMConfig, ctx: BuildContext) -> None:
        super().__init__(config, ctx)
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # keep stderr for mmcore's own one-line messages
        hf_config, source = _hf_config(config, ctx)
        hf_config._attn_implementation = config.attn_implementation
        self.tokenizer = _load_tokenizer(config, source, ctx)
        pretrained = source is not None and config.init == "pretrained"
        if pretrained and not ctx.on_meta:
            if source.path is None:
                raise MmcoreError(f"llm source '{config.source}': weights are not on this machine (only "
                                  f"its preset config is); download them, or set init = \"random\"")
            self.model = AutoModelForCausalLM.from_pretrained(
                str(source.path), dtype=torch.float32, attn_implementation=config.attn_implementation)
        else:
            with ctx.device:
                self.model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)
        if self.tokenizer is not None and self.tokenizer.pad_token is None:
            # LLaVA: tokenizer.pad_token = tokenizer.unk_token (every template but v0)
            self.tokenizer.pad_token = self.tokenizer.unk_token or self.tokenizer.eos_token
        if self.tokenizer is not None and len(self.tokenizer) > self.vocab_size:
            self._resize(len(self.tokenizer))
        if config.bias_tuning:
            self._add_biases(LLAMA_ADAPTER_BIASES if config.bias_tuning == "llama-adapter" else config.bias_tuning)
        self._counted: list[str] = []  # tokens registered without a tokenizer (a preset on meta): counted only
        if config.special_tokens:
            self.add_special_tokens(list(config.special_tokens))

    def _add_biases(self, names: tuple[str, ...] | list[str]) -> None:
        """LLaMA-Adapter `ModelArgs.w_bias`: a zero bias on each named linear layer that has none."""
        unknown = sorted(set(names) - set(self.lora_target_names()))
        if unknown:
            raise MmcoreError(f"bias_tuning: {unknown} are not linear layers of {type(self.model).__name__}; "
                              f"choose from {self.lora_target_names()} or \"llama-adapter\"")
        for name, module in self.model.named_modules():
            if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in names and module.bias is None:
                module.bias = nn.Parameter(torch.zeros(module.out_features, device=module.weight.device,
                                                       dtype=module.weight.dtype))

    @classmethod
    def tiny_config(cls) -> dict[str, Any]:
        return {"config": {"model_type": "llama", "vocab_size": 260, "hidden_size": 32,
                           "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                           "num_key_value_heads": 2, "max_position_embeddings": 256},
                "tokenizer": "byte-level"}

    # --- sizes -----------------------------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_input_embeddings().num_embeddings)

    @property
    def max_position_embeddings(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 1 << 30))

    # --- running ---------------------------------------------------------------------------------
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(input_ids)  # (B, L, D)

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor, output_all_hidden_states: bool = False) -> LMOutput:
        out = self.model.base_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                               position_ids=position_ids, use_cache=False,
                               output_hidden_states=output_all_hidden_states)
        hidden = out.last_hidden_state  # (B, L, D), after the final norm
        logits = self.model.lm_head(hidden)  # (B, L, V)
        return LMOutput(logits, hidden, out.hidden_states if output_all_hidden_states else None)

    def generate(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                 **generation: Any) -> torch.Tensor:
        tok = self.tokenizer
        generation.setdefault("pad_token_id", tok.pad_token_id if tok is not None else 0)
        generation.setdefault("eos_token_id", tok.eos_token_id if tok is not None else None)
        return self.model.generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                   use_cache=True, **generation)  # (B, T) new tokens only

    # --- structure -------------------------------------------------------------------------------
    def add_special_tokens(self, tokens: list[str]) -> list[int]:
        if self.tokenizer is None:  # meta device, preset without tokenizer files: count only (once per token)
            new = [t for t in dict.fromkeys(tokens) if t not in self._counted]
            first = self.vocab_size - len(self._counted)  # the base vocabulary
            self._counted += new
            self._resize(self.vocab_size + len(new))
            return [first + self._counted.index(t) for t in tokens]
        self.tokenizer.add_special_tokens({"additional_special_tokens": tokens},
                                          replace_extra_special_tokens=False)
        if len(self.tokenizer) > self.vocab_size:
            self._resize(len(self.tokenizer))
        return [int(self.tokenizer.convert_tokens_to_ids(t)) for t in tokens]

    def _resize(self, size: int) -> None:
        """Grow embedding and LM head; new rows are the mean of the old ones (LLaVA
        `initialize_vision_tokenizer`)."""
        old = self.vocab_size
        self.model.resize_token_embeddings(size, mean_resizing=False)
        if self.model.get_input_embeddings().weight.is_meta:
            return
        with torch.no_grad():
            for matrix in (self.model.get_input_embeddings().weight, self.model.get_output_embeddings().weight):
                matrix[old:] = matrix[:old].mean(dim=0, keepdim=True)

    def decoder_layers(self) -> list[nn.Module]:
        base = self.model.base_model
        layers = getattr(base, "layers", None) or getattr(base, "h", None)  # Llama family / GPT-2 family
        if layers is None:
            raise MmcoreError(f"{type(self.model).__name__}: cannot find its decoder layers "
                              f"(no .layers or .h on the base model)")
        return list(layers)

    def attention_sites(self) -> list[AttentionSite]:
        sites = []
        cfg = self.model.config
        heads = int(cfg.num_attention_heads)
        kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
        head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
        for layer in self.decoder_layers():
            attention = getattr(layer, "self_attn", None)
            if attention is None or not hasattr(attention, "v_proj") or not hasattr(attention, "o_proj"):
                raise MmcoreError(f"{type(self.model).__name__}: adapter-mode projectors need separate "
                                  f"v_proj/o_proj attention projections (Llama-style models)")
            sites.append(AttentionSite(attention.v_proj, attention.o_proj, heads, kv_heads, head_dim))
        return sites

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        modern = hasattr(self.model, "activation_checkpointing_enable")  # transformers >= 5 renamed it
        if enabled and modern:
            self.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        elif enabled:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        elif getattr(self, "_checkpointing", False):
            (self.model.activation_checkpointing_disable if modern else self.model.gradient_checkpointing_disable)()
        self._checkpointing = enabled

    def apply_lora(self, r: int, alpha: float, dropout: float, targets: list[str]) -> None:
        """peft `inject_adapter_in_model` on this LLM alone, so LoRA never reaches the vision tower."""
        if getattr(self, "lora_config", None) is not None:
            return
        from peft import LoraConfig, inject_adapter_in_model

        config = LoraConfig(r=r, lora_alpha=cast(Any, alpha), lora_dropout=dropout, target_modules=targets, bias="none")
        inject_adapter_in_model(config, self.model)
        self.lora_config = {"r": r, "alpha": alpha, "dropout": dropout, "targets": list(targets)}

    def merge_lora(self) -> None:
        from peft.tuners.lora import LoraLayer

        for name, module in list(self.model.named_modules()):
            if isinstance(module, LoraLayer):
                module.merge()
                parent_name, _, child = name.rpartition(".")
                setattr(self.model.get_submodule(parent_name), child, module.get_base_layer())
        self.lora_config = None

    def save_pretrained(self, folder: str | Path) -> None:
        """A plain transformers directory: LoRA merged into a copy, added biases declared (`attention_bias` /
        `mlp_bias`, with zero biases for the layers bias tuning left without), tokenizer alongside."""
        model = copy.deepcopy(self.model)
        from peft.tuners.lora import LoraLayer

        for name, module in list(model.named_modules()):
            if isinstance(module, LoraLayer):
                module.merge()
                parent, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent), child, module.get_base_layer())
        biased = {n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                  if isinstance(m, nn.Linear) and m.bias is not None}
        if biased - {"lm_head"}:
            attention, mlp = {"q_proj", "k_proj", "v_proj", "o_proj"}, {"gate_proj", "up_proj", "down_proj"}
            model.config.attention_bias = bool(biased & attention)
            model.config.mlp_bias = bool(biased & mlp)
            wanted = (attention if model.config.attention_bias else set()) | (mlp if model.config.mlp_bias else set())
            self_free = [m for n, m in model.named_modules() if isinstance(m, nn.Linear) and m.bias is None
                         and n.rsplit(".", 1)[-1] in wanted]
            for module in self_free:
                module.bias = nn.Parameter(torch.zeros(module.out_features, dtype=module.weight.dtype))
        model.save_pretrained(str(folder))
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(folder))

    def lora_target_names(self) -> list[str]:
        """LLaVA `find_all_linear_names`: every nn.Linear leaf name except the LM head."""
        names = {name.split(".")[-1] for name, module in self.model.named_modules()
                 if isinstance(module, nn.Linear)}
        names.discard("lm_head")
        return sorted(names)
