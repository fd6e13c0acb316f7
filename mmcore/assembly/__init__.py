"""Assembly: a manifest becomes a model (on the meta device for checking, or with real weights)."""

from mmcore.assembly._assemble import Assembly, assemble, assemble_loaded
from mmcore.assembly._report import lock_data, summary_table, write_lock

__all__ = ["Assembly", "assemble", "assemble_loaded", "lock_data", "summary_table", "write_lock"]
