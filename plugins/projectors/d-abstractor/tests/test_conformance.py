"""The mmcore conformance suite over every component of mmcore-plugin-d-abstractor."""

from mmcore.testing import ConformanceSuite


class TestConformance(ConformanceSuite):
    distribution = "mmcore-plugin-d-abstractor"
