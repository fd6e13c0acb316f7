"""The `mmcore` click group: lazy built-ins, plugin commands from entry points, the error contract.

* Built-in commands live in `_commands.py`, which imports only click; each imports what it needs inside.
* Plugin commands are declared as entry points of the `mmcore.commands` group (`cache = "pkg.cli:cache"`;
  `import.ullava = "pkg.cli:import_ullava"` adds a layout under `mmcore import`). They are listed in
  `--help` from metadata, with their distribution, and imported only when invoked.
* Hook modules may add commands with `mmcore_add_commands(cli)`; those are looked up only when a
  command is neither built in nor declared, so `mmcore --help` stays fast.
* A user error (`MmcoreError`) prints one line and exits 2; usage errors exit 2 with click's usage text;
  `--debug` (anywhere on the line) shows the traceback instead.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib import metadata
from typing import Any

import click

from mmcore.errors import MmcoreError

__all__ = ["LazyGroup", "main"]

COMMANDS_GROUP = "mmcore.commands"


def _declared(prefix: str) -> dict[str, metadata.EntryPoint]:
    """Entry points of `mmcore.commands` under `prefix` ("" for top level, "import." for import layouts)."""
    from mmcore.registry import plugin_filter
    from mmcore.registry._discovery import _distributions

    found: dict[str, metadata.EntryPoint] = {}
    for dist in _distributions():
        if plugin_filter(dist.metadata["Name"]) is not None:
            continue
        for ep in dist.entry_points:
            if ep.group == COMMANDS_GROUP and ep.name.startswith(prefix) and "." not in ep.name[len(prefix):]:
                found.setdefault(ep.name[len(prefix):], ep)
    return found


class LazyGroup(click.Group):
    """A group whose built-in commands are given and whose plugin commands come from entry points."""

    def __init__(self, *args: Any, entry_prefix: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.entry_prefix = entry_prefix

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(_declared(self.entry_prefix)))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is not None:
            return command
        ep = _declared(self.entry_prefix).get(name)
        if ep is not None:
            try:
                loaded = ep.load()
            except Exception as err:
                raise MmcoreError(f"command '{name}' from {ep.dist.name if ep.dist else '?'} failed to import: "
                                  f"{type(err).__name__}: {err}") from err
            if not isinstance(loaded, click.Command):
                raise MmcoreError(f"entry point {ep.value} ({COMMANDS_GROUP}) is not a click command")
            return loaded
        if not self.entry_prefix:  # hook modules may add top-level commands; ask them only now
            from mmcore.registry import new_plugin_manager

            new_plugin_manager().hook.mmcore_add_commands(cli=self)
            return super().get_command(ctx, name)
        return None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Built-ins with their help; plugin commands with their distribution, without importing them."""
        rows = [(name, cmd.get_short_help_str(100)) for name, cmd in sorted(self.commands.items()) if not cmd.hidden]
        for name, ep in sorted(_declared(self.entry_prefix).items()):
            if name not in self.commands:
                dist = ep.dist
                rows.append((name, f"(from {dist.name} {dist.version})" if dist else "(plugin)"))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0, 2 for user and usage errors, 130 when interrupted)."""
    from mmcore.cli._commands import cli

    args = list(sys.argv[1:] if argv is None else argv)
    cut = args.index("--") if "--" in args else len(args)
    debug = "--debug" in args[:cut]
    args = [a for i, a in enumerate(args) if not (a == "--debug" and i < cut)]
    try:
        result = cli.main(args=args, prog_name="mmcore", standalone_mode=False)
        return int(result or 0)
    except click.exceptions.Exit as done:
        return int(done.exit_code)
    except click.UsageError as err:  # one line too, exit 2: "error: mmcore train: Missing argument 'RUN'. (...)"
        where = err.ctx.command_path if err.ctx is not None else "mmcore"
        message = " ".join(err.format_message().split())
        print(f"error: {where}: {message} (see `{where} --help`)", file=sys.stderr)
        return err.exit_code
    except click.ClickException as err:
        print(f"error: {' '.join(err.format_message().split())}", file=sys.stderr)
        return err.exit_code
    except click.exceptions.Abort:
        print("interrupted", file=sys.stderr)
        return 130
    except MmcoreError as err:
        if debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
