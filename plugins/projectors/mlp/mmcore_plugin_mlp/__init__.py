"""mmcore-plugin-mlp: the `linear`, `mlp`, `identity` and `concat-linear` projectors."""

MMCORE_API = 2  # the mmcore plugin API this distribution is built for
__version__ = "0.2.0"
