"""mmcore-plugin-mlp: the `linear`, `mlp` and `identity` projectors."""

MMCORE_API = 1  # the mmcore plugin API this distribution is built for
__version__ = "0.1.0"
