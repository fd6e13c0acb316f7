"""The `mmcore` command line (argparse; torch is imported only inside commands that need it)."""

from mmcore.cli._main import main

__all__ = ["main"]
