"""The click CLI: plugin commands from entry points (listed without import, loaded when invoked), the
error contract (one line, exit 2; --debug anywhere) and the real default manifest in the help."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from mmcore.cli import main

COMMANDS = '''
import click

@click.group()
def cache():
    """Build and inspect retrieval caches."""

@cache.command()
@click.argument("run")
def build(run):
    click.echo(f"building a cache for {run}")

@click.command()
@click.argument("source")
def fancy(source):
    """Import a fancy checkpoint."""
    click.echo(f"imported {source}")
'''


@pytest.fixture
def plugin_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An installed distribution (a dist-info on sys.path) declaring `cache` and `import.fancy` commands."""
    (tmp_path / "fancy_cli.py").write_text(textwrap.dedent(COMMANDS))
    info = tmp_path / "mmcore_plugin_fancy-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mmcore-plugin-fancy\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text("[mmcore.commands]\ncache = fancy_cli:cache\n"
                                           "import.fancy = fancy_cli:fancy\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "fancy_cli", raising=False)
    return "fancy_cli"


def test_plugin_commands_are_listed_without_importing_them(plugin_distribution: str,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """`mmcore --help` lists an entry-point command with its distribution and does not import it."""
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "cache" in out and "(from mmcore-plugin-fancy 0.3)" in out
    assert plugin_distribution not in sys.modules


def test_plugin_commands_run_like_built_ins(plugin_distribution: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`mmcore cache build RUN` and `mmcore import fancy SRC` come from the plugin, imported when invoked."""
    assert main(["cache", "build", "runs/x"]) == 0
    assert "building a cache for runs/x" in capsys.readouterr().out
    assert main(["import", "--help"]) == 0
    assert "fancy" in capsys.readouterr().out
    assert main(["import", "fancy", "ckpt.pth"]) == 0
    assert "imported ckpt.pth" in capsys.readouterr().out


def test_usage_errors_are_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    """A bad option, a missing argument or an out-of-range number is one `error:` line and exit 2."""
    for argv in (["assemble", "--nope"], ["train"], ["generate", "run", "--prompt", "x", "--max-new-tokens", "0"],
                 ["train", "run", "--nproc", "0"], ["nosuchcommand"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: mmcore"), (argv, err)


def test_debug_is_accepted_after_the_subcommand(tmp_path: Path) -> None:
    """`mmcore assemble BAD --debug` shows the traceback (the error is raised) instead of one line."""
    from mmcore.errors import MmcoreError

    bad = tmp_path / "bad.toml"
    bad.write_text("modle = 1\n")
    with pytest.raises(MmcoreError):
        main(["assemble", str(bad), "--debug"])


def test_assemble_help_names_the_real_default(capsys: pytest.CaptureFixture[str]) -> None:
    """`assemble --help` names the default manifest, which exists where the package is installed."""
    import mmcore

    assert main(["assemble", "--help"]) == 0
    assert "mmcore/defaults/tiny.toml" in capsys.readouterr().out
    assert (Path(mmcore.__file__).parent / "defaults" / "tiny.toml").is_file()
