"""The run directory and its one owner, `Run` (lock, manifest, local plugin copies, weights, trainer lock)."""

from mmcore.run._lock import Lock, sha256_file, sha256_text
from mmcore.run._run import Run

__all__ = ["Lock", "Run", "sha256_file", "sha256_text"]
