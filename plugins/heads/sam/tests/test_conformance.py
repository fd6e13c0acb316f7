"""The mmcore conformance suite over every component of mmcore-plugin-sam."""

from mmcore.testing import ConformanceSuite


class TestConformance(ConformanceSuite):
    distribution = "mmcore-plugin-sam"
