"""The mmcore conformance suite over the core's own built-in components."""

from mmcore.testing import ConformanceSuite


class TestBuiltinConformance(ConformanceSuite):
    distribution = "mmcore"
