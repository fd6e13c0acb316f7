"""Child-process import check used by `mmcore plugins`: prints one JSON line of verdicts.

Usage: python -m mmcore.registry._probe KIND=module:Class ...
"""

from __future__ import annotations

import json
import sys


def main(argv: list[str]) -> None:
    from mmcore.registry._resolve import import_component

    verdicts: dict[str, str] = {}
    for item in argv:
        kind, value = item.split("=", 1)
        try:
            import_component(kind, value)
            verdicts[item] = "OK"
        except Exception as err:
            verdicts[item] = str(err).splitlines()[0] if str(err) else type(err).__name__
    print(json.dumps(verdicts))


if __name__ == "__main__":
    main(sys.argv[1:])
