"""mmcore-plugin-eva: the `eva-vit` encoder (timm's EVA, with BLIP-2 / MiniGPT-v2's EVA-ViT-g exactly)."""

MMCORE_API = 2  # the mmcore plugin API this distribution is built for
__version__ = "0.1.0"
