"""The mmcore conformance suite over every component of mmcore-plugin-bind-network."""

from mmcore.testing import ConformanceSuite


class TestConformance(ConformanceSuite):
    distribution = "mmcore-plugin-bind-network"
