"""pytest plugin (entry point `pytest11: mmcore`): parametrises `ConformanceSuite` subclasses.

It imports neither torch nor mmcore's kinds at load time, so it costs nothing in unrelated suites.
"""

from __future__ import annotations

from typing import Any


def pytest_generate_tests(metafunc: Any) -> None:
    cls = metafunc.cls
    if cls is None or "component" not in metafunc.fixturenames:
        return
    distribution = getattr(cls, "distribution", None)
    if distribution is None:
        return
    from mmcore.registry import discover_entries

    entries = [e for e in discover_entries() if e.distribution == distribution
               and e.kind in ("encoder", "projector", "llm", "head", "retriever", "template", "dataset", "box_codec")]
    if not entries:
        raise LookupError(f"{cls.__name__}: distribution '{distribution}' registers no mmcore component; "
                          f"is it installed (pip install -e .) and are its entry points right?")
    metafunc.parametrize("component", [(e.kind, e.name) for e in entries],
                         ids=[f"{e.kind}:{e.name}" for e in entries])
