"""mmcore-plugin-imagebind: Meta's ImageBind as the `imagebind` encoder (six modalities, each with the
preprocessing of ImageBind's `data.py`, run in data-loader workers)."""

MMCORE_API = 2  # the mmcore plugin API this distribution is built for
__version__ = "0.1.0"
