"""mmcore-plugin-c-abstractor: Honeybee's C-Abstractor as the `c-abstractor` projector."""

MMCORE_API = 1  # the mmcore plugin API this distribution is built for
__version__ = "0.1.0"
