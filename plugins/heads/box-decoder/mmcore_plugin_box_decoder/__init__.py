"""mmcore-plugin-box-decoder: u-LLaVA's [LOC] box decoder as the `box-decoder` head."""

MMCORE_API = 2  # the mmcore plugin API this distribution is built for
__version__ = "0.1.0"
