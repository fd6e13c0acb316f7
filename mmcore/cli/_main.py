"""Parser, dispatch and the error contract: a user error prints one line and exits 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mmcore.errors import MmcoreError

__all__ = ["build_parser", "main"]

BUILTIN_COMMANDS = ("plugins", "assemble", "train", "eval", "export", "import", "generate", "plugin")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise MmcoreError(f"{self.prog}: {message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    from mmcore.cli import _commands

    parser = _Parser(prog="mmcore", description="Build, train and run multimodal LLMs from manifests.",
                     epilog="Plugins may add commands through the `mmcore_add_commands` hook.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _commands.add_plugins(sub)
    _commands.add_assemble(sub)
    _commands.add_train(sub)
    _commands.add_eval(sub)
    _commands.add_export(sub)
    _commands.add_import(sub)
    _commands.add_generate(sub)
    _commands.add_plugin_new(sub)
    return parser


def _add_hook_commands(parser: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    """Load hook plugins only when the command is not a built-in one (keeps --help fast)."""
    wanted = next((a for a in argv if not a.startswith("-")), None)
    if wanted is None or wanted in BUILTIN_COMMANDS:
        return
    from mmcore.registry import new_plugin_manager

    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    new_plugin_manager().hook.mmcore_add_commands(subparsers=sub)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        parser = build_parser()
        _add_hook_commands(parser, argv)
        args = parser.parse_args(argv)
        if args.version:
            from importlib.metadata import version

            print(f"mmcore {version('mmcore')}")
            return 0
        if args.command is None:
            parser.print_help()
            return 0
        return int(args.func(args) or 0)
    except MmcoreError as err:
        if debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
