"""mmcore-plugin-sam: u-LLaVA's SAM mask head as the `sam-mask` head, on the unmodified pip segment-anything."""

MMCORE_API = 2  # the mmcore plugin API this distribution is built for
__version__ = "0.1.0"
