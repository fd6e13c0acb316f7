"""User-facing errors: one line that names the culprit and the fix.

Every error a person can cause (a manifest, a data file, a checkpoint, a CLI argument) is raised as
an `MmcoreError`; the CLI prints `error: <message>` and exits 2. Bugs stay ordinary exceptions.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["ManifestError", "MmcoreError", "PluginError", "SampleError", "did_you_mean"]


class MmcoreError(Exception):
    """An error caused by user input. `str(err)` is a single line meant for people."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split("\n")))


class ManifestError(MmcoreError):
    """A manifest is malformed: bad TOML, an unknown key, a wrong type, an impossible combination."""


class PluginError(MmcoreError):
    """A plugin is missing, broken, claimed twice or built for another core API."""


class SampleError(MmcoreError):
    """A data record cannot become a training sample; `reason` is its counting key.

    Reasons: missing-media, corrupt-media, oversized-media (a decompression bomb), malformed-record,
    placeholder-mismatch, over-length, no-supervision, unknown-modality. The trainer adds non-finite-loss
    and non-finite-gradient for batches a stage with `skip_non_finite` skips.
    """

    def __init__(self, message: str, reason: str = "malformed-record") -> None:
        super().__init__(message)
        self.reason = reason


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' — did you mean 'x'?' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" — did you mean '{close[0]}'?" if close else ""


def choices_text(choices: Iterable[str]) -> str:
    """'a', 'b', 'c' — sorted, quoted, for 'valid choices: ...' tails."""
    names = sorted(set(choices))
    return ", ".join(f"'{n}'" for n in names) if names else "(none installed)"
