"""mmcore-plugin-d-abstractor: Honeybee's D-Abstractor (`d-abstractor`) and the `resampler` baseline."""

MMCORE_API = 2  # the mmcore plugin API this distribution is built for
__version__ = "0.2.0"
