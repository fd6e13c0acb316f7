"""Two-way interop with transformers' `LlavaForConditionalGeneration` (frameworks-and-plugins.md A.4).

transformers' layout ↔ mmcore's components:

* `model.vision_tower` (a `CLIPVisionModel`)          ↔ `encoders.vision` (`clip`, its `.vision`)
* `model.multi_modal_projector.linear_1 / act / linear_2` ↔ `projectors.vision` (`mlp`, depth 2,
  `layers.0 / GELU / layers.2`; `projector_hidden_act = "gelu"` is LLaVA's `nn.GELU()`)
* `model.language_model` + `lm_head`                    ↔ `llm` (`hf-causal-lm`, its `.model`)
* `vision_feature_layer` ↔ `select_layer`; `vision_feature_select_strategy` "default" / "full" ↔
  `select_feature` "patch" / "cls_patch".

Both directions go through transformers' own loading and saving code (`from_pretrained`,
`save_pretrained`); modules are moved, never re-implemented. transformers marks image positions with
`image_token_id`; mmcore splices media at placeholder spans, so the image token only exists in the
exported vocabulary (added, with LLaVA's mean-row initialisation, when the tokenizer lacks it).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from mmcore.errors import MmcoreError
from mmcore.interop._run import new_folder, new_run
from mmcore.manifest._toml import toml_value

__all__ = ["IMAGE_TOKEN", "export_hf_llava", "import_hf_llava"]

IMAGE_TOKEN = "<image>"  # llava-hf's image token (LlavaProcessor image_token)


def _read_config(src: Path) -> Any:  # a LlavaConfig
    from transformers import LlavaConfig

    if not (src / "config.json").is_file():
        raise MmcoreError(f"{src}: no config.json; point at a directory written by "
                          f"LlavaForConditionalGeneration.save_pretrained")
    try:
        config: Any = LlavaConfig.from_pretrained(str(src))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise MmcoreError(f"{src}/config.json: not a Llava config ({err}); point at a llava-hf directory") from None
    if config.model_type != "llava":
        raise MmcoreError(f"{src}/config.json: model_type '{config.model_type}', not 'llava'; for LLaVA's own "
                          f"checkpoints use `mmcore import llava`")
    problems = []
    if config.vision_config.model_type != "clip_vision_model":
        problems.append(f"vision tower '{config.vision_config.model_type}' (only CLIP is mapped)")
    if not isinstance(config.vision_feature_layer, int):
        problems.append(f"vision_feature_layer {config.vision_feature_layer} (several layers)")
    if config.projector_hidden_act != "gelu" or not config.multimodal_projector_bias:
        problems.append(f"projector act '{config.projector_hidden_act}' / bias {config.multimodal_projector_bias} "
                        f"(LLaVA's mlp2x_gelu has gelu with bias)")
    if problems:
        raise MmcoreError(f"{src}: cannot be expressed with clip + mlp: {'; '.join(problems)}")
    return config


def _load_llava(src: Path, cls: Any) -> Any:
    """`from_pretrained` with a truncated or unreadable weights file as one line naming it."""
    from safetensors import SafetensorError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return cls.from_pretrained(str(src), dtype="auto")
    except (SafetensorError, OSError, ValueError, RuntimeError, EOFError) as err:
        files = sorted(p.name for p in src.glob("*.safetensors")) or sorted(p.name for p in src.glob("*.bin"))
        first = " ".join((str(err).strip().splitlines() or [type(err).__name__])[0].split())[:200]
        raise MmcoreError(f"{src}: its weights ({', '.join(files) or 'none found'}) cannot be loaded ({first}); the "
                          f"file is truncated or damaged — copy or download it again (nothing was written)") from None


def import_hf_llava(src: Path, run: Path) -> Path:
    """DIR (llava-hf) → RUN: `vision/` and `llm/` in save_pretrained format, the projector in
    `upstream/`, a manifest naming all three, and `assembly.lock`."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer, CLIPImageProcessor, LlavaForConditionalGeneration
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    config = _read_config(src)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(src))
    except (OSError, ValueError) as err:
        raise MmcoreError(f"{src}: no loadable tokenizer ({err}); save the tokenizer into it first") from None
    hf = _load_llava(src, LlavaForConditionalGeneration)
    with new_run(run) as tmp:
        hf.model.vision_tower.save_pretrained(tmp / "vision")
        if (src / "preprocessor_config.json").is_file():
            CLIPImageProcessor.from_pretrained(str(src)).save_pretrained(tmp / "vision")
        with torch.device("meta"):
            causal = AutoModelForCausalLM.from_config(config.text_config)
        causal.model = hf.model.language_model
        causal.lm_head = hf.lm_head
        causal.save_pretrained(tmp / "llm")
        tokenizer.save_pretrained(tmp / "llm")
        projector = hf.model.multi_modal_projector
        state = {"layers.0.weight": projector.linear_1.weight, "layers.0.bias": projector.linear_1.bias,
                 "layers.2.weight": projector.linear_2.weight, "layers.2.bias": projector.linear_2.bias}
        (tmp / "upstream").mkdir()  # named by the manifest, so `mmcore train RUN` starts from it too
        save_file({k: v.detach().contiguous() for k, v in state.items()},
                  str(tmp / "upstream" / "projector.safetensors"), metadata={"format": "pt", "from": str(src)})
        positions = int(getattr(config.text_config, "max_position_embeddings", 2048))
        strategy = {"default": "patch", "full": "cls_patch"}[config.vision_feature_select_strategy]
        (tmp / "manifest.toml").write_text(f"""\
# Imported from {src} by `mmcore import hf-llava` (transformers LlavaForConditionalGeneration).

[model]
max_length = {min(2048, positions)}

[model.llm]
type = "hf-causal-lm"
source = "llm"

[model.encoders.vision]
type = "clip"
modalities = ["image"]
source = "vision"
select_layer = {config.vision_feature_layer}
select_feature = {toml_value(strategy)}
image_aspect_ratio = "square"  # LlavaProcessor resizes and crops, without LLaVA's expand2square

[model.projectors.vision]
type = "mlp"
depth = 2  # linear_1, GELU, linear_2
weights = "upstream/projector.safetensors"
""", encoding="utf-8")
    return run


def _check_exportable(model: Any) -> tuple[str, Any, Any]:
    """(encoder name, clip encoder, mlp projector) or a one-line error naming what does not map."""
    encoders = dict(model.encoders.items())
    if len(encoders) != 1 or model.heads or model.retriever is not None:
        raise MmcoreError("hf-llava holds one vision encoder, one projector and the LLM; this run has "
                          f"encoders {list(encoders)}, heads {list(model.heads)}; export it with the "
                          f"default format instead")
    name, encoder = next(iter(encoders.items()))
    projector = model.projectors[name]
    from transformers import CLIPVisionModel

    if not isinstance(getattr(encoder, "vision", None), CLIPVisionModel):
        raise MmcoreError(f"encoder '{name}' is {type(encoder).__name__}; hf-llava needs a `clip` encoder")
    layers = getattr(projector, "layers", None)
    linears = [m for m in layers] if isinstance(layers, torch.nn.Sequential) else []
    if len(linears) != 3 or not isinstance(linears[1], torch.nn.GELU):
        raise MmcoreError(f"projector '{name}' is {type(projector).__name__}; transformers' Llava projector is "
                          f"Linear-GELU-Linear: use type = \"mlp\" with depth = 2")
    return name, encoder, projector


def export_hf_llava(run: Path, output: Path) -> Path:
    """RUN → OUT that `LlavaForConditionalGeneration.from_pretrained` and `AutoProcessor` load.
    LoRA adapters are merged (the format has no place for them)."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    from mmcore.pipeline import load

    if output.exists():
        raise MmcoreError(f"{output}: already exists; choose a new directory (nothing was written)")
    pipeline = load(run)
    model = pipeline.model
    _, encoder, projector = _check_exportable(model)
    llm: Any = model.llm
    if getattr(llm, "lora_config", None):
        llm.merge_lora()
    tokenizer = llm.tokenizer  # this loaded copy of the run is ours to change
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        # new rows = mean of the old ones (LLaVA), so the image token's logit is the mean logit: never the argmax
        llm.add_special_tokens([IMAGE_TOKEN])
    image_token_id = int(tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))
    keep_cls = encoder.config.select_feature == "cls_patch"
    text_config = llm.model.config
    config = LlavaConfig(vision_config=encoder.vision.config.to_dict(), text_config=text_config.to_dict(),
                         image_token_index=image_token_id, image_seq_length=int(projector.num_tokens),
                         projector_hidden_act="gelu",
                         vision_feature_select_strategy="full" if keep_cls else "default",
                         vision_feature_layer=int(encoder.config.select_layer), multimodal_projector_bias=True,
                         tie_word_embeddings=bool(getattr(text_config, "tie_word_embeddings", False)))
    with torch.device("meta"):
        hf = LlavaForConditionalGeneration(config)
    hf.model.vision_tower = encoder.vision
    hf.model.language_model = llm.model.base_model
    hf.lm_head = llm.model.lm_head
    hf.model.multi_modal_projector.linear_1 = projector.layers[0]
    hf.model.multi_modal_projector.linear_2 = projector.layers[2]
    with new_folder(output) as tmp:
        hf.save_pretrained(tmp)
        processor = LlavaProcessor(image_processor=encoder.media_view().processor, tokenizer=tokenizer,
                                   patch_size=encoder.patch_size,
                                   vision_feature_select_strategy=config.vision_feature_select_strategy,
                                   image_token=IMAGE_TOKEN, num_additional_image_tokens=1)
        processor.save_pretrained(tmp)
    return output

