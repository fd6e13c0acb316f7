"""mmcore-plugin-cache-retrieval: ImageBind-LLM's training-free kNN cache (`knn-cache`) and `mmcore cache build`."""

MMCORE_API = 2  # the mmcore plugin API this distribution is built for
__version__ = "0.1.0"
