"""Registries: lazy entry points, broken and conflicting plugins, API versions, allow/deny, strict."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mmcore.errors import PluginError
from mmcore.registry import API_VERSION, Entry, Registry


def _package(root: Path, name: str, body: str, api: int = API_VERSION) -> None:
    (root / name).mkdir(parents=True)
    (root / name / "__init__.py").write_text(f"MMCORE_API = {api}\n")
    (root / name / "component.py").write_text(textwrap.dedent(body))


GOOD = """
from mmcore_plugin_mlp.projectors import LinearProjector

class Other(LinearProjector):
    pass
"""


@pytest.fixture
def plugin_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_broken_plugin_fails_only_when_used(plugin_root: Path) -> None:
    """A plugin whose import raises is an error when resolved; the others still resolve."""
    _package(plugin_root, "broken_plugin", "raise RuntimeError('boom at import')\n")
    registry = Registry([*Registry().entries,
                         Entry("projector", "broken", "broken_plugin.component:X", "mmcore-plugin-broken", "0.1")])
    assert registry.resolve("projector", "mlp").distribution == "mmcore-plugin-mlp"
    with pytest.raises(PluginError, match="boom at import"):
        registry.resolve("projector", "broken")


def test_two_distributions_one_name_is_an_error(plugin_root: Path) -> None:
    """Two distributions claiming one type: resolving it names both."""
    _package(plugin_root, "other_plugin", GOOD)
    registry = Registry([*Registry().entries,
                         Entry("projector", "mlp", "other_plugin.component:Other", "mmcore-plugin-other", "0.2")])
    with pytest.raises(PluginError, match="claimed by both") as caught:
        registry.resolve("projector", "mlp")
    assert "mmcore-plugin-mlp" in str(caught.value) and "mmcore-plugin-other" in str(caught.value)


def test_api_mismatch_is_a_clear_message(plugin_root: Path) -> None:
    """A plugin built for another core API is refused with both versions named."""
    _package(plugin_root, "future_plugin", GOOD, api=3)
    registry = Registry([Entry("projector", "future", "future_plugin.component:Other", "mmcore-plugin-future", "9")])
    with pytest.raises(PluginError, match="built for mmcore API 3, but this mmcore provides API 2"):
        registry.resolve("projector", "future")


def test_wrong_base_class_is_refused(plugin_root: Path) -> None:
    """An entry point naming a class of the wrong kind is an error naming the expected base."""
    _package(plugin_root, "wrong_plugin", "class NotAProjector:\n    pass\n")
    registry = Registry([Entry("projector", "w", "wrong_plugin.component:NotAProjector", "d", "1")])
    with pytest.raises(PluginError, match="is not a Projector"):
        registry.resolve("projector", "w")


def test_deny_and_allow_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    """MMCORE_BLOCK_PLUGINS hides a distribution; MMCORE_LOAD_PLUGINS keeps only the listed ones."""
    monkeypatch.setenv("MMCORE_BLOCK_PLUGINS", "mmcore-plugin-mlp")
    with pytest.raises(PluginError, match="blocked by MMCORE_BLOCK_PLUGINS"):
        Registry().resolve("projector", "mlp")
    monkeypatch.delenv("MMCORE_BLOCK_PLUGINS")
    monkeypatch.setenv("MMCORE_LOAD_PLUGINS", "mmcore-plugin-clip")
    assert Registry().names("projector") == []
    assert Registry().names("encoder") == ["clip"]
    assert "hf-causal-lm" in Registry().names("llm")  # the core's built-ins are always on


def test_strict_mode_raises_on_a_broken_plugin(plugin_root: Path) -> None:
    """Strict loading (MMCORE_STRICT_PLUGINS=1) imports everything and re-raises the first failure."""
    _package(plugin_root, "broken2", "import a_module_that_does_not_exist\n")
    registry = Registry([Entry("projector", "b", "broken2.component:X", "mmcore-plugin-b", "1")], strict=True)
    with pytest.raises(PluginError, match="a_module_that_does_not_exist"):
        registry.load_all()


def test_installed_broken_distribution(tmp_path: Path, tiny_manifest: Path) -> None:
    """A really installed broken distribution shows FAILED in `mmcore plugins`; other manifests assemble."""
    source = tmp_path / "src"
    _package(source, "mmcore_plugin_broken", "raise ImportError('this plugin is broken')\n")
    (source / "pyproject.toml").write_text(textwrap.dedent("""
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "mmcore-plugin-broken"
        version = "0.0.1"
        [project.entry-points."mmcore.projectors"]
        broken = "mmcore_plugin_broken.component:Broken"
        [tool.setuptools]
        packages = ["mmcore_plugin_broken"]
    """))
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(source)], check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(site), "MMCORE_CACHE_DIR": str(tmp_path / "cache")}
    listed = subprocess.run([sys.executable, "-m", "mmcore", "plugins", "--json"], env=env,
                            capture_output=True, text=True, check=True)
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    assert rows["broken"]["status"] == "FAILED" and "this plugin is broken" in rows["broken"]["reason"]
    assert rows["mlp"]["status"] == "OK"
    done = subprocess.run([sys.executable, "-m", "mmcore", "assemble", str(tiny_manifest), "--dry-run"],
                          env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
