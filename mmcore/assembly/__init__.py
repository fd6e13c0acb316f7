"""Assembly: a manifest becomes a model (on the meta device for checking, or with real weights)."""

from mmcore.assembly._assemble import Assembly, assemble, assemble_loaded
from mmcore.assembly._params import apply_stage_lora, stage_counts, trainable_names
from mmcore.assembly._summary import summary_table

__all__ = ["Assembly", "apply_stage_lora", "assemble", "assemble_loaded", "stage_counts", "summary_table",
           "trainable_names"]
