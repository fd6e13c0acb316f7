"""The mmcore conformance suite over every component of mmcore-plugin-eva."""

from mmcore.testing import ConformanceSuite


class TestConformance(ConformanceSuite):
    distribution = "mmcore-plugin-eva"
