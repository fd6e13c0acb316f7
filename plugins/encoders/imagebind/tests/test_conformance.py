"""The mmcore conformance suite over every component of mmcore-plugin-imagebind."""

from mmcore.testing import ConformanceSuite


class TestConformance(ConformanceSuite):
    distribution = "mmcore-plugin-imagebind"
