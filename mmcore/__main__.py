"""`python -m mmcore` is the `mmcore` command."""

from mmcore.cli import main

raise SystemExit(main())
