"""The one data path: datasets, mixtures and packing, and the `Processor` that turns a `Sample` into model
inputs for training, evaluation, `generate` and the Python API alike."""

from mmcore.data._mixture import PRESETS, epoch_order, group_by_modality_length, rank_batches, stage_order
from mmcore.data._packing import PackedDataset
from mmcore.data._processor import Prepared, Processor
from mmcore.data._stage import LoadedBatch, Skipped, StageData, build_datasets, modality_lengths

__all__ = [
    "PRESETS",
    "LoadedBatch",
    "PackedDataset",
    "Prepared",
    "Processor",
    "Skipped",
    "StageData",
    "build_datasets",
    "epoch_order",
    "group_by_modality_length",
    "modality_lengths",
    "rank_batches",
    "stage_order",
]
