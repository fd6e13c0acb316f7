"""mmcore-plugin-bind-network: ImageBind-LLM's bind network as the `bind-network` adapter projector."""

MMCORE_API = 2  # the mmcore plugin API this distribution is built for
__version__ = "0.1.0"
