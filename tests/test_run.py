"""The run directory has one owner: local plugin copies with hashes, edits detected, no silent
re-assembly over a trained run, one trainer at a time, errors that name the user's manifest, and a
finished run that continues when given more steps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mmcore.cli import main

PLUGIN = '''
import mmcore
from mmcore_plugin_mlp.projectors import LinearProjector

class LocalLinear(LinearProjector):
    """A projector defined in a local plugin file."""

@mmcore.hookimpl
def mmcore_register_components(register):
    register("projector", "local-linear", LocalLinear)
'''

TRAINING = """
[data]
num_workers = 0

[data.datasets.captions]
type = "synthetic-shapes"
size = 16
image_size = 28
tasks = ["caption"]

[[stages]]
name = "align"
trainable = ["projectors"]
template = "plain"
batch_size = 4
max_steps = {steps}
log_every = 1
"""


def _manifest(folder: Path, model_text: str, steps: int = 2, local: bool = False) -> Path:
    """A one-stage training manifest over the tiny model; `local` uses a projector from a plugin file."""
    folder.mkdir(parents=True, exist_ok=True)
    text = model_text.split("[[stages]]")[0] + TRAINING.format(steps=steps)
    if local:
        (folder / "plugin.py").write_text(textwrap.dedent(PLUGIN))
        text = text.replace('type = "mlp"\ndepth = 2', 'type = "local-linear"') + '\n[plugins]\nfiles = ["plugin.py"]\n'
    path = folder / "m.toml"
    path.write_text(text)
    return path


def _assemble(manifest: Path, run: Path, *extra: str) -> int:
    return main(["assemble", str(manifest), "-o", str(run), *extra])


def _align_steps(run: Path) -> list[int]:
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [r["step"] for r in records if r["kind"] == "step" and r["stage"] == "align"]


def test_local_plugin_files_run_from_the_runs_copy(tiny_model_text: str, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """`[plugins] files` are copied into RUN at assemble, so `train RUN` works from any directory, even
    after the original file is gone; every command that runs them names them first."""
    manifest = _manifest(tmp_path / "project", tiny_model_text, local=True)
    assert _assemble(manifest, tmp_path / "run") == 0
    assert "local plugin files" in capsys.readouterr().out
    (manifest.parent / "plugin.py").unlink()
    assert main(["train", str(tmp_path / "run")]) == 0
    assert "running local plugin files of" in capsys.readouterr().err
    assert any((tmp_path / "run" / "plugins").glob("*-plugin.py"))


def test_a_changed_local_plugin_copy_is_refused(tiny_model_text: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A local plugin file whose bytes differ from the hash recorded at assemble never runs."""
    assert _assemble(_manifest(tmp_path / "p", tiny_model_text, local=True), tmp_path / "run") == 0
    copy = next((tmp_path / "run" / "plugins").glob("*-plugin.py"))
    copy.write_text(copy.read_text() + "\nraise SystemExit('this must never run')\n")
    capsys.readouterr()
    assert main(["train", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "changed since assembly" in err[0] and copy.name in err[0]


def test_local_plugins_can_be_switched_off(tiny_model_text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """MMCORE_NO_LOCAL_PLUGINS=1 refuses a run that would run local plugin files."""
    assert _assemble(_manifest(tmp_path / "p", tiny_model_text, local=True), tmp_path / "run") == 0
    monkeypatch.setenv("MMCORE_NO_LOCAL_PLUGINS", "1")
    capsys.readouterr()
    assert main(["generate", str(tmp_path / "run"), "--prompt", "hi"]) == 2
    assert "MMCORE_NO_LOCAL_PLUGINS=1 forbids them" in capsys.readouterr().err


def test_assembling_over_a_trained_run_needs_force(tiny_model_text: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Another manifest assembled over a run with checkpoints is refused, leaving the run untouched."""
    run = tmp_path / "run"
    assert _assemble(_manifest(tmp_path / "a", tiny_model_text), run) == 0
    assert main(["train", str(run)]) == 0
    lock = (run / "assembly.lock").read_bytes()
    other = _manifest(tmp_path / "b", tiny_model_text.replace("depth = 2", "depth = 1"))
    capsys.readouterr()
    assert _assemble(other, run) == 2
    assert "--force" in capsys.readouterr().err
    assert (run / "assembly.lock").read_bytes() == lock


def test_a_changed_model_over_checkpoints_is_one_line(tiny_model_text: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Forced over checkpoints of another model, training stops with one line naming the component."""
    run = tmp_path / "run"
    assert _assemble(_manifest(tmp_path / "a", tiny_model_text), run) == 0
    assert main(["train", str(run)]) == 0
    other = _manifest(tmp_path / "b", tiny_model_text.replace("depth = 2", "depth = 1"), steps=4)
    assert _assemble(other, run, "--force") == 0
    capsys.readouterr()
    assert main(["train", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checkpoint" in err[0] and "'projectors.vision'" in err[0]


def test_an_edited_run_manifest_is_detected(tiny_model_text: str, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Editing RUN/manifest.toml after assembly stops train, eval and generate alike until re-assembled."""
    run = tmp_path / "run"
    assert _assemble(_manifest(tmp_path / "a", tiny_model_text), run) == 0
    (run / "manifest.toml").write_text((run / "manifest.toml").read_text().replace("max_steps = 2", "max_steps = 3"))
    for command in (["train", str(run)], ["eval", str(run), "--data", "captions"],
                    ["generate", str(run), "--prompt", "hi"]):
        capsys.readouterr()
        assert main(command) == 2
        assert "was edited after assembly" in capsys.readouterr().err
    assert _assemble(run / "manifest.toml", run) == 0  # re-assembling the edited manifest accepts the edit
    assert main(["train", str(run)]) == 0 and _align_steps(run)[-1] == 3


def test_a_finished_run_says_so_and_more_steps_continue_it(tiny_model_text: str, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Training a finished run changes nothing and says it is finished; re-assembled with more steps it
    continues the stage from where it ended instead of starting over."""
    run = tmp_path / "run"
    manifest = _manifest(tmp_path / "a", tiny_model_text, steps=2)
    assert _assemble(manifest, run) == 0
    assert main(["train", str(run)]) == 0
    weights = (run / "weights" / "projectors.vision.safetensors").read_bytes()
    capsys.readouterr()
    assert main(["train", str(run)]) == 0
    assert "already trained (align 2 steps)" in capsys.readouterr().out
    assert (run / "weights" / "projectors.vision.safetensors").read_bytes() == weights
    manifest.write_text(manifest.read_text().replace("max_steps = 2", "max_steps = 5"))
    assert _assemble(manifest, run, "--force") == 0
    assert main(["train", str(run)]) == 0
    assert _align_steps(run) == [1, 2, 3, 4, 5]


def test_trained_stages_must_stay_first(tiny_model_text: str, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Renaming or reordering stages that already trained is refused, naming both plans."""
    run = tmp_path / "run"
    manifest = _manifest(tmp_path / "a", tiny_model_text)
    assert _assemble(manifest, run) == 0 and main(["train", str(run)]) == 0
    manifest.write_text(manifest.read_text().replace('name = "align"', 'name = "warmup"'))
    assert _assemble(manifest, run, "--force") == 0
    capsys.readouterr()
    assert main(["train", str(run)]) == 2
    assert "trained stages ['align']" in capsys.readouterr().err


def test_one_trainer_at_a_time(tiny_model_text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A live trainer's lock refuses a second `mmcore train`; a lock left by a dead process is taken over."""
    run = tmp_path / "run"
    assert _assemble(_manifest(tmp_path / "a", tiny_model_text), run) == 0
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import socket

        (run / "train.pid").write_text(f"{sleeper.pid} {socket.gethostname()}")
        capsys.readouterr()
        assert main(["train", str(run)]) == 2
        assert f"another `mmcore train` (pid {sleeper.pid})" in capsys.readouterr().err
    finally:
        sleeper.kill()
        sleeper.wait()
    assert main(["train", str(run)]) == 0  # the holder is gone: taken over
    assert "taking it over" in capsys.readouterr().err
    assert not (run / "train.pid").exists()


def test_errors_name_the_users_manifest(tiny_model_text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """A problem found when a run is used is reported at the user's manifest and line, never RUN's copy;
    a plugin the run needs but that is not loadable names its distribution."""
    manifest = _manifest(tmp_path / "a", tiny_model_text)
    assert _assemble(manifest, tmp_path / "run") == 0
    monkeypatch.setenv("MMCORE_LOAD_PLUGINS", "mmcore-plugin-clip")  # the run's mlp projector is off
    capsys.readouterr()
    assert main(["train", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"{manifest.resolve()}:" in err and "mmcore-plugin-mlp" in err and "run/manifest.toml" not in err


def test_a_lock_remembers_which_distribution_provides_a_type() -> None:
    """A type the lock names but no installed plugin provides says which distribution to install."""
    from mmcore.errors import PluginError
    from mmcore.registry import Registry

    registry = Registry(entries=[], providers={("fancy-projector", "mmcore-plugin-fancy")})
    with pytest.raises(PluginError, match="pip install mmcore-plugin-fancy"):
        registry.resolve("projector", "fancy-projector")


@pytest.mark.parametrize("content", ["{not json", "{}", "[]"])
def test_a_broken_lock_is_one_line(tiny_model_text: str, tmp_path: Path, content: str,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A non-JSON or incomplete assembly.lock is one line saying to re-assemble, exit 2."""
    run = tmp_path / "run"
    assert _assemble(_manifest(tmp_path / "a", tiny_model_text), run) == 0
    (run / "assembly.lock").write_text(content)
    capsys.readouterr()
    assert main(["train", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "assembly.lock" in err[0] and "re-assemble" in err[0]


def test_train_prints_plain_progress_when_not_a_terminal(tiny_model_text: str, tmp_path: Path) -> None:
    """With stdout a pipe, training prints one plain line per logged step: step, loss, lr, tok/s, ETA."""
    run = tmp_path / "run"
    assert _assemble(_manifest(tmp_path / "a", tiny_model_text), run) == 0
    done = subprocess.run([sys.executable, "-m", "mmcore", "train", str(run)], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("[align] step")]
    assert len(lines) == 2 and all(k in lines[-1] for k in ("step 2/2", "loss", "lr", "tok/s", "eta"))
