"""Fault injection, commands: bad arguments, broken locks, truncated or unsafe weight files and untrusted runs
are one line naming the culprit and the fix (exit 2), never a traceback. Each test's docstring states the
expected outcome."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from mmcore.cli import main

PLUGIN = '''
import sys
import mmcore
from mmcore_plugin_mlp.projectors import LinearProjector

print("PLUGIN RAN", file=sys.stderr)

class LocalLinear(LinearProjector):
    """A projector defined in a local plugin file."""

@mmcore.hookimpl
def mmcore_register_components(register):
    register("projector", "local-linear", LocalLinear)
'''

PLAN = """
[data]
num_workers = 0

[data.datasets.captions]
type = "synthetic-shapes"
size = 8
image_size = 28
tasks = ["caption"]

[[stages]]
name = "align"
trainable = ["projectors"]
template = "plain"
datasets = ["captions"]
batch_size = 4
max_steps = 1
"""


def _lines(err: str) -> list[str]:
    return [line for line in err.strip().splitlines() if line]


@pytest.fixture(scope="module")
def trained(tiny_model_text: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained run whose projector comes from a local plugin file (copied into RUN/plugins)."""
    folder = tmp_path_factory.mktemp("untrusted")
    (folder / "plugin.py").write_text(textwrap.dedent(PLUGIN))
    text = tiny_model_text.split("[[stages]]")[0].replace('type = "mlp"\ndepth = 2', 'type = "local-linear"')
    (folder / "m.toml").write_text(text + PLAN + '\n[plugins]\nfiles = ["plugin.py"]\n')
    assert main(["assemble", str(folder / "m.toml"), "-o", str(folder / "run")]) == 0
    assert main(["train", str(folder / "run")]) == 0
    (folder / "plugin.py").unlink()  # the run's copy is all that is left, as for a run from someone else
    return folder / "run"


def _use(command: str, run: Path, out: Path) -> int:
    """Run one of the commands that import a run's local plugin files."""
    if command == "mmcore.load":
        import mmcore
        from mmcore.errors import MmcoreError

        try:
            mmcore.load(run)
        except MmcoreError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    argv = {"train": ["train", str(run)], "eval": ["eval", str(run), "--data", "captions", "--max-new-tokens", "1"],
            "generate": ["generate", str(run), "--prompt", "hi", "--max-new-tokens", "1"],
            "export": ["export", str(run), str(out)]}[command]
    return main(argv)


COMMANDS = ["train", "eval", "generate", "export", "mmcore.load"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_names_local_plugin_files_before_running_them(command: str, trained: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """train, eval, generate, export and mmcore.load each name the run's local plugin files (with their
    sha256) on one line before the file runs."""
    capsys.readouterr()
    assert _use(command, trained, tmp_path / "out") == 0
    err = capsys.readouterr().err
    named = err.index("running local plugin files of")
    assert "plugins/0-plugin.py (sha256 " in err and named < err.index("PLUGIN RAN")


@pytest.mark.parametrize("command", COMMANDS)
def test_a_changed_plugin_copy_is_refused_by_every_command(command: str, trained: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """A copy whose bytes differ from the sha256 recorded at assemble never runs: one line, exit 2."""
    import shutil

    run = Path(shutil.copytree(trained, tmp_path / "run"))
    copy = run / "plugins" / "0-plugin.py"
    copy.write_text(copy.read_text() + "\nprint('CHANGED CODE RAN')\n")
    capsys.readouterr()
    assert _use(command, run, tmp_path / "out") == 2
    captured = capsys.readouterr()
    assert _lines(captured.err) == [line for line in _lines(captured.err) if line.startswith("error:")]
    assert len(_lines(captured.err)) == 1 and "changed since assembly" in captured.err
    assert "RAN" not in captured.out + captured.err


@pytest.mark.parametrize("command", COMMANDS)
def test_no_local_plugins_refuses_them_in_every_command(command: str, trained: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """MMCORE_NO_LOCAL_PLUGINS=1 refuses a run with local plugin files in every command: one line, exit 2."""
    monkeypatch.setenv("MMCORE_NO_LOCAL_PLUGINS", "1")
    capsys.readouterr()
    assert _use(command, trained, tmp_path / "out") == 2
    err = _lines(capsys.readouterr().err)
    assert len(err) == 1 and "MMCORE_NO_LOCAL_PLUGINS=1 forbids them" in err[0] and "PLUGIN RAN" not in err[0]


def test_reassembling_a_run_verifies_its_plugin_copies(trained: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """`mmcore assemble RUN/manifest.toml` running the run's copies (the original file is gone) checks and names
    them like every other command: a changed copy is refused, exit 2."""
    import shutil

    run = Path(shutil.copytree(trained, tmp_path / "run"))
    copy = run / "plugins" / "0-plugin.py"
    copy.write_text(copy.read_text() + "\nprint('CHANGED CODE RAN')\n")
    capsys.readouterr()
    assert main(["assemble", str(run / "manifest.toml"), "-o", str(run), "--force"]) == 2
    captured = capsys.readouterr()
    assert "changed since assembly" in captured.err and "RAN" not in captured.out + captured.err


@pytest.mark.parametrize("command", ["train", "eval", "generate", "export"])
@pytest.mark.parametrize("content", ["{not json", "{}"])
def test_a_broken_lock_is_one_line_for_every_command(command: str, content: str, trained: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A non-JSON or `{}` assembly.lock: one line saying to re-assemble, exit 2, for every command."""
    import shutil

    run = Path(shutil.copytree(trained, tmp_path / "run"))
    (run / "assembly.lock").write_text(content)
    capsys.readouterr()
    assert _use(command, run, tmp_path / "out") == 2
    err = _lines(capsys.readouterr().err)
    assert len(err) == 1 and "assembly.lock" in err[0] and "re-assemble" in err[0]


def test_a_plugin_file_that_is_not_python_is_one_line(tiny_model_text: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """`[plugins] files = ["notes.txt"]`: one line naming the manifest line and the file, exit 2."""
    (tmp_path / "notes.txt").write_text("not code")
    manifest = tmp_path / "m.toml"
    manifest.write_text(tiny_model_text + '\n[plugins]\nfiles = ["notes.txt"]\n')
    capsys.readouterr()
    assert main(["assemble", str(manifest), "-o", str(tmp_path / "run")]) == 2
    err = _lines(capsys.readouterr().err)
    assert len(err) == 1 and "'notes.txt' is not a Python file" in err[0] and not (tmp_path / "run").exists()


@pytest.mark.parametrize("value", ["0", "-3"])
def test_generate_needs_a_positive_max_new_tokens(value: str, trained: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """`generate --max-new-tokens 0` (or negative): one usage line naming the option, exit 2."""
    assert main(["generate", str(trained), "--prompt", "hi", "--max-new-tokens", value]) == 2
    err = _lines(capsys.readouterr().err)
    assert len(err) == 1 and "--max-new-tokens" in err[0] and value in err[0]


def test_import_of_a_truncated_safetensors_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`import hf-llava` of a directory whose model.safetensors is truncated: one line naming the file, exit 2,
    no run written."""
    from mmcore.testing import save_tiny_hf_llava

    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "image_size": 28, "patch_size": 14}
    text = {"hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "max_position_embeddings": 256}
    source = save_tiny_hf_llava(tmp_path / "llava", vision, text, image_tokens=4, seed=1)
    weights = source / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    capsys.readouterr()
    assert main(["import", "hf-llava", str(source), "-o", str(tmp_path / "run")]) == 2
    err = _lines(capsys.readouterr().err)
    assert len(err) == 1 and "model.safetensors" in err[0] and "truncated or damaged" in err[0]
    assert not (tmp_path / "run").exists()


def test_a_pickle_refused_by_weights_only_is_one_plain_line(tmp_path: Path, tiny_dirs: dict[str, Path]) -> None:
    """A LLaVA `mm_projector.bin` pickled with protocol 4 holding a non-tensor object: exactly one stderr line
    (torch's protocol warning silenced, no ANSI codes, the refusal's reason), exit 2, no run written."""
    config = json.loads((tiny_dirs["llama"] / "config.json").read_text())
    config.update(model_type="llava_llama", mm_vision_tower=str(tiny_dirs["clip"]), mm_projector_type="mlp2x_gelu")
    source = tmp_path / "llava"
    source.mkdir()
    (source / "config.json").write_text(json.dumps(config))
    torch.save({"model.mm_projector.0.weight": torch.ones(2), "args": argparse.Namespace(lr=1)},
               source / "mm_projector.bin", pickle_protocol=4)
    env: dict[str, Any] = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "mmcore", "import", "llava", str(source), "-o", str(tmp_path / "run"),
                           "--llm", str(tiny_dirs["llama"])], capture_output=True, text=True, env=env, timeout=300)
    err = _lines(done.stderr)
    assert done.returncode == 2 and len(err) == 1, done.stderr
    assert "\x1b[" not in err[0] and "weights_only=True" in err[0] and "(Unsupported operand 149)" in err[0]
    assert not (tmp_path / "run").exists()


def test_a_weights_only_refusal_names_the_object_in_a_whole_sentence(tmp_path: Path) -> None:
    """The refusal names the class the pickle wanted, as torch's whole sentence (never cut in half)."""
    from mmcore.checkpoint import read_state_file
    from mmcore.errors import MmcoreError

    torch.save({"w": torch.ones(2), "args": argparse.Namespace(lr=1)}, tmp_path / "a.bin")
    with pytest.raises(MmcoreError) as caught:
        read_state_file(tmp_path / "a.bin")
    assert "(Unsupported global: GLOBAL argparse.Namespace was not an allowed global by default);" in str(caught.value)


def test_a_plugin_missing_a_declared_dependency_names_the_distribution(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A plugin whose declared requirement is not installed (even one it imports only when built) is a one-line
    PluginError naming its distribution, the requirement and the pip line — before any of its code runs."""
    from mmcore.errors import PluginError
    from mmcore.registry import _resolve

    info = tmp_path / "mmcore_plugin_fake-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mmcore-plugin-fake\nVersion: 0.1.0\n"
                                   "Requires-Dist: torch>=2.4\nRequires-Dist: not-installed-anywhere>=1.2\n")
    (info / "top_level.txt").write_text("mmcore_plugin_fake\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    _resolve._distributions_of.cache_clear()
    try:
        with pytest.raises(PluginError) as caught:
            _resolve.import_component("projector", "mmcore_plugin_fake.projector:Fake")
    finally:
        _resolve._distributions_of.cache_clear()
    assert ('mmcore-plugin-fake needs not-installed-anywhere>=1.2 (not installed): pip install '
            '"not-installed-anywhere>=1.2"') in str(caught.value)
