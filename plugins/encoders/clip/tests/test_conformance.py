"""The mmcore conformance suite over every component of mmcore-plugin-clip."""

from mmcore.testing import ConformanceSuite


class TestConformance(ConformanceSuite):
    distribution = "mmcore-plugin-clip"
