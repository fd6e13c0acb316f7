"""The component kinds and their entry-point groups (data only, no imports)."""

from __future__ import annotations

KINDS: tuple[str, ...] = ("encoder", "projector", "llm", "head", "retriever", "dataset", "template", "box_codec")
GROUPS: dict[str, str] = {kind: f"mmcore.{kind}s" for kind in KINDS}
HOOKS_GROUP = "mmcore.plugins"

# The core API version plugins declare as `MMCORE_API = 2` in their top-level package (2: encoders give a
# picklable `media_view` instead of preprocessing in the module; templates return tokenizer-call `Piece`s).
API_VERSION = 2

# First-party components and the distribution that provides each, so an unknown `type` can say
# what to `pip install`. Third-party names are found through the installed entry points instead.
KNOWN_PROVIDERS: dict[str, dict[str, str]] = {
    "encoder": {
        "clip": "mmcore-plugin-clip",
        "eva-vit": "mmcore-plugin-eva",
        "imagebind": "mmcore-plugin-imagebind",
    },
    "projector": {
        "linear": "mmcore-plugin-mlp",
        "mlp": "mmcore-plugin-mlp",
        "identity": "mmcore-plugin-mlp",
        "c-abstractor": "mmcore-plugin-c-abstractor",
        "d-abstractor": "mmcore-plugin-d-abstractor",
        "resampler": "mmcore-plugin-d-abstractor",
        "concat-linear": "mmcore-plugin-mlp",
        "bind-network": "mmcore-plugin-bind-network",
    },
    "llm": {"hf-causal-lm": "mmcore"},
    "head": {"sam-mask": "mmcore-plugin-sam", "box-decoder": "mmcore-plugin-box-decoder"},
    "retriever": {"knn-cache": "mmcore-plugin-cache-retrieval"},
    "dataset": {"llava-json": "mmcore", "synthetic-shapes": "mmcore"},
    "template": {"plain": "mmcore", "vicuna_v1": "mmcore", "llama2": "mmcore", "honeybee": "mmcore",
                 "alpaca": "mmcore"},
    "box_codec": {"honeybee": "mmcore", "minigpt": "mmcore"},
}
