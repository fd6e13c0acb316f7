"""TOML model manifests: schema, loading with one-line errors, cross-checks."""

from mmcore.manifest._checks import component_names, qualify
from mmcore.manifest._load import LoadedManifest, load_manifest, parse_manifest
from mmcore.manifest._schema import (
    ComponentSpec,
    DataSpec,
    EncoderSpec,
    EvalSpec,
    HeadSpec,
    LoraSpec,
    Manifest,
    ModelSpec,
    PluginsSpec,
    ProjectorSpec,
    RetrieverSpec,
    StageSpec,
)

__all__ = [
    "ComponentSpec",
    "DataSpec",
    "EncoderSpec",
    "EvalSpec",
    "HeadSpec",
    "LoadedManifest",
    "LoraSpec",
    "Manifest",
    "ModelSpec",
    "PluginsSpec",
    "ProjectorSpec",
    "RetrieverSpec",
    "StageSpec",
    "component_names",
    "load_manifest",
    "parse_manifest",
    "qualify",
]
