"""The kinds of component mmcore assembles, one base class each (imports torch)."""

from mmcore.kinds._base import BuildContext, Component, ComponentConfig, FeatureSpec
from mmcore.kinds.codec import Box, BoxCodec
from mmcore.kinds.dataset import Dataset
from mmcore.kinds.encoder import Encoder, Features
from mmcore.kinds.head import (
    Head,
    HeadConfig,
    HeadMetric,
    HeadOutput,
    Overlay,
    match_targets,
    select_predictions,
    select_trigger_positions,
    targets_by_row,
)
from mmcore.kinds.llm import LLM, AttentionSite, LMOutput
from mmcore.kinds.projector import AdapterProjector, Projector
from mmcore.kinds.retriever import Retriever
from mmcore.kinds.sample import Sample, Turn
from mmcore.kinds.template import Piece, Template, split_media
from mmcore.kinds.view import MediaView, Viewed

BASE_CLASSES: dict[str, type] = {
    "encoder": Encoder,
    "projector": Projector,
    "llm": LLM,
    "head": Head,
    "retriever": Retriever,
    "dataset": Dataset,
    "template": Template,
    "box_codec": BoxCodec,
}

__all__ = [
    "BASE_CLASSES",
    "LLM",
    "AdapterProjector",
    "AttentionSite",
    "Box",
    "BoxCodec",
    "BuildContext",
    "Component",
    "ComponentConfig",
    "Dataset",
    "Encoder",
    "FeatureSpec",
    "Features",
    "Head",
    "HeadConfig",
    "HeadMetric",
    "HeadOutput",
    "LMOutput",
    "MediaView",
    "Overlay",
    "Piece",
    "Projector",
    "Retriever",
    "Sample",
    "Template",
    "Turn",
    "Viewed",
    "match_targets",
    "select_predictions",
    "select_trigger_positions",
    "split_media",
    "targets_by_row",
]
