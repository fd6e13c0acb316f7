"""The `mmcore` command line (click; torch is imported only inside the commands that need it)."""

from mmcore.cli._main import main

__all__ = ["main"]
