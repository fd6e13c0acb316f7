"""The mmcore conformance suite over every component of mmcore-plugin-c-abstractor."""

from mmcore.testing import ConformanceSuite


class TestConformance(ConformanceSuite):
    distribution = "mmcore-plugin-c-abstractor"
