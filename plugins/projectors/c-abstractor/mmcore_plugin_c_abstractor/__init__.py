"""mmcore-plugin-c-abstractor: Honeybee's C-Abstractor as the `c-abstractor` projector."""

MMCORE_API = 2  # the mmcore plugin API this distribution is built for
__version__ = "0.2.0"
