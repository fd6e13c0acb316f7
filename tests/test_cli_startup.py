"""The CLI starts without torch: discovery reads metadata only."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def _modules_after(code: str) -> list[str]:
    script = f"import sys\n{code}\nimport json; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         env={**os.environ})
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_help_does_not_import_torch() -> None:
    """`mmcore --help` imports neither torch nor any plugin module."""
    loaded = _modules_after("from mmcore.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass")
    assert "torch" not in loaded
    assert not [m for m in loaded if m.startswith("mmcore_plugin_")]


def test_plugins_does_not_import_torch() -> None:
    """`mmcore plugins` lists components without importing torch or plugin code in its own process."""
    loaded = _modules_after("from mmcore.cli import main\nmain(['plugins'])")
    assert "torch" not in loaded and "transformers" not in loaded
    assert not [m for m in loaded if m.startswith("mmcore_plugin_")]


def test_plugins_lists_first_party_components(capsys) -> None:  # type: ignore[no-untyped-def]
    """Each installed component appears with kind, distribution, version and OK."""
    from mmcore.cli import main

    assert main(["plugins", "--json"]) == 0
    rows = {(r["kind"], r["name"]): r for r in json.loads(capsys.readouterr().out)}
    assert rows[("encoder", "clip")]["distribution"] == "mmcore-plugin-clip"
    assert rows[("projector", "mlp")]["status"] == "OK"
    assert rows[("llm", "hf-causal-lm")]["distribution"] == "mmcore"
