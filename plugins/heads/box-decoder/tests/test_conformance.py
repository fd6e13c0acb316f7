"""The mmcore conformance suite over every component of mmcore-plugin-box-decoder."""

from mmcore.testing import ConformanceSuite


class TestConformance(ConformanceSuite):
    distribution = "mmcore-plugin-box-decoder"
