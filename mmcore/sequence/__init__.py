"""Sequence building shared by training and generation: placeholders, labels, padding, media index."""

from mmcore.sequence._batch import Batch, MediaBatch, TargetBatch, collate, target_batches
from mmcore.sequence._builder import IGNORE_INDEX, Encoded, SequenceBuilder, placeholder

__all__ = ["IGNORE_INDEX", "Batch", "Encoded", "MediaBatch", "SequenceBuilder", "TargetBatch", "collate", "placeholder",
           "target_batches"]
