"""Every hookspec is documented and has a `test_hook_<name>` here (datasette's meta-tests)."""

from __future__ import annotations

import inspect
import textwrap
from pathlib import Path

import pluggy
import pytest

from mmcore.assembly import assemble
from mmcore.registry import hookspecs, new_plugin_manager

SPECS = [name for name, f in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("mmcore_")]

LOCAL_PLUGIN = '''
import mmcore
from mmcore_plugin_mlp.projectors import LinearProjector

CALLS = []

class DoubledLinear(LinearProjector):
    """A projector defined in a local plugin file."""

@mmcore.hookimpl
def mmcore_register_components(register):
    register("projector", "doubled-linear", DoubledLinear)

@mmcore.hookimpl
def mmcore_manifest_loaded(data, path):
    data["model"]["max_length"] = 99
    CALLS.append(("loaded", path))

@mmcore.hookimpl
def mmcore_model_assembled(model, manifest):
    model.marked_by_local_plugin = True
'''


def test_every_hook_is_documented_and_tested() -> None:
    """Each hookspec has a docstring and a test named test_hook_<name> in this file."""
    tested = {name for name in globals() if name.startswith("test_hook_")}
    for spec in SPECS:
        assert inspect.getdoc(getattr(hookspecs, spec)), f"{spec} has no docstring"
        assert f"test_hook_{spec}" in tested, f"{spec} has no test"


@pytest.fixture
def local_manifest(tiny_manifest: Path) -> Path:
    plugin = tiny_manifest.parent / "local_plugin.py"
    plugin.write_text(textwrap.dedent(LOCAL_PLUGIN))
    text = tiny_manifest.read_text().replace('type = "mlp"\ndepth = 2', 'type = "doubled-linear"')
    manifest = tiny_manifest.parent / "with_plugin.toml"
    manifest.write_text(text + '\n[plugins]\nfiles = ["local_plugin.py"]\n')
    return manifest


def test_hook_mmcore_register_components(local_manifest: Path) -> None:
    """A local plugin file named in [plugins] registers a component that the manifest then uses."""
    assembly = assemble(local_manifest)
    assert type(assembly.model.projectors["vision"]).__name__ == "DoubledLinear"
    assert assembly.resolved["projectors.vision"].distribution == "local"


def test_hook_mmcore_manifest_loaded(local_manifest: Path) -> None:
    """The hook can change the manifest before validation; the change is validated and used."""
    assert assemble(local_manifest).max_length == 99


def test_hook_mmcore_model_assembled(local_manifest: Path) -> None:
    """The hook receives the assembled model."""
    assert assemble(local_manifest).model.marked_by_local_plugin is True


def test_hook_mmcore_add_commands(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A hook plugin adds a CLI subcommand, reachable as `mmcore NAME`."""
    import click

    import mmcore
    import mmcore.registry as registry_module
    from mmcore.cli import main

    @click.command()
    def hello() -> None:
        click.echo("hello from a plugin")

    class Commands:
        @mmcore.hookimpl
        def mmcore_add_commands(self, cli):  # type: ignore[no-untyped-def]
            cli.add_command(hello)

    def manager(*args, **kwargs):  # type: ignore[no-untyped-def]
        pm = new_plugin_manager(*args, **kwargs)
        pm.register(Commands())
        return pm

    monkeypatch.setattr(registry_module, "new_plugin_manager", manager)
    assert main(["hello"]) == 0
    assert "hello from a plugin" in capsys.readouterr().out


def _training_hook_check(name: str, kwargs: dict[str, object]) -> None:
    pm = new_plugin_manager(load_entry_points=False)
    seen: list[dict[str, object]] = []
    args = ", ".join(kwargs)
    namespace: dict[str, object] = {"hookimpl": pluggy.HookimplMarker("mmcore"), "seen": seen}
    exec(f"@hookimpl\ndef {name}({args}):\n    seen.append(dict({', '.join(f'{a}={a}' for a in kwargs)}))\n"
         f"@hookimpl(specname='{name}')\ndef wrong(not_an_argument):\n    pass\n", namespace)
    listener = type("Listener", (), {name: staticmethod(namespace[name])})()  # type: ignore[arg-type]
    pm.register(listener)
    getattr(pm.hook, name)(**kwargs)
    assert seen == [kwargs]
    with pytest.raises(pluggy.PluginValidationError):
        pm.register(type("Wrong", (), {"wrong": staticmethod(namespace["wrong"])})())  # type: ignore[arg-type]


def test_hook_mmcore_train_step() -> None:
    """Step listeners receive stage, step and metrics; an impl with an unknown argument is refused."""
    _training_hook_check("mmcore_train_step", {"stage": "align", "step": 3, "metrics": {"loss": 1.0}})


def test_hook_mmcore_evaluated() -> None:
    """Evaluation listeners receive stage, step and metrics."""
    _training_hook_check("mmcore_evaluated", {"stage": "align", "step": 3, "metrics": {"vqa": 0.5}})


def test_hook_mmcore_checkpoint_saved() -> None:
    """Checkpoint listeners receive stage, step and the checkpoint path."""
    _training_hook_check("mmcore_checkpoint_saved", {"stage": "align", "step": 3, "path": "/tmp/ckpt"})


def test_trace_switch_prints_hook_calls(local_manifest: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """MMCORE_TRACE_PLUGINS=1 prints every hook call to stderr."""
    monkeypatch.setenv("MMCORE_TRACE_PLUGINS", "1")
    assemble(local_manifest)
    assert "[mmcore hook] mmcore_manifest_loaded" in capsys.readouterr().err


def test_local_plugin_with_unknown_hook_is_refused(tiny_manifest: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A local plugin implementing a hook that does not exist is a one-line error naming the file."""
    from mmcore.cli import main

    (tiny_manifest.parent / "typo_plugin.py").write_text(
        "import mmcore\n\n@mmcore.hookimpl\ndef mmcore_model_assembeld(model):\n    pass\n")
    manifest = tiny_manifest.parent / "typo.toml"
    manifest.write_text(tiny_manifest.read_text() + '\n[plugins]\nfiles = ["typo_plugin.py"]\n')
    assert main(["assemble", str(manifest), "--dry-run"]) == 2
    assert "typo_plugin.py" in capsys.readouterr().err
