"""Test kit for plugin authors: conformance tests run over every component a distribution registers.

    # tests/test_conformance.py of your plugin
    from mmcore.testing import ConformanceSuite

    class TestConformance(ConformanceSuite):
        distribution = "mmcore-plugin-my-projector"

Each registered component gets: config round-trip, meta-device build, forward shapes on tiny CPU
inputs, safetensors state-dict round-trip and determinism (timm-style, parametrised over the registry).
The pytest plugin that parametrises them is installed with mmcore (entry point `pytest11`).
"""

from mmcore.testing.conformance import ConformanceSuite, build_for_test, example_forward
from mmcore.testing.fixtures import model_manifest, save_tiny_hf_llava, tiny_manifest

__all__ = ["ConformanceSuite", "build_for_test", "example_forward", "model_manifest", "save_tiny_hf_llava",
           "tiny_manifest"]
