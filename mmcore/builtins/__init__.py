"""Components shipped with the core, registered through the same entry points as any plugin."""

MMCORE_API = 2
