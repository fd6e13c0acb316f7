"""`mmcore plugin new NAME --kind KIND`: a plugin distribution that installs and passes its tests."""

from __future__ import annotations

import keyword
import re
from pathlib import Path

from mmcore.errors import MmcoreError
from mmcore.registry import API_VERSION

__all__ = ["scaffold"]

PYPROJECT = '''[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "{dist}"
version = "0.2.0"
description = "mmcore {kind}: {name}"
readme = "README.md"
requires-python = ">=3.11"
dependencies = ["mmcore>=0.2,<0.3", "torch>=2.4"]

[project.entry-points."mmcore.{kind}s"]
{name} = "{package}.component:{cls}"

[tool.setuptools]
packages = ["{package}"]
'''

INIT = '''"""{dist}: the `{name}` {kind} for mmcore."""

MMCORE_API = {api}  # the mmcore plugin API this distribution is built for
__version__ = "0.2.0"
'''

COMPONENTS = {
    "projector": '''"""`{name}`: a two-layer projector (edit me)."""

from typing import Any, ClassVar

import torch
from torch import nn

from mmcore.kinds import BuildContext, ComponentConfig, Features, Projector


class {cls}Config(ComponentConfig):
    hidden_multiplier: int = 2


class {cls}(Projector):
    Config: ClassVar[type[ComponentConfig]] = {cls}Config

    def __init__(self, config: {cls}Config, ctx: BuildContext) -> None:
        super().__init__(config, ctx)
        hidden = self.output_dim * config.hidden_multiplier
        self.layers = nn.Sequential(nn.Linear(self.input_spec.dim, hidden, device=ctx.device), nn.GELU(),
                                    nn.Linear(hidden, self.output_dim, device=ctx.device))

    @classmethod
    def tiny_config(cls) -> dict[str, Any]:
        return {{"hidden_multiplier": 1}}

    @property
    def num_tokens(self) -> int:
        return self.input_spec.num_tokens

    def forward(self, features: Features) -> torch.Tensor:
        return self.layers(features.tokens)  # (B, N, C) → (B, N, D_llm)
''',
    "encoder": '''"""`{name}`: a patch-embedding image encoder (edit me)."""

from typing import Any, ClassVar

import torch
from torch import nn

from mmcore.kinds import BuildContext, ComponentConfig, Encoder, FeatureSpec, Features, MediaView, Viewed


class {cls}Config(ComponentConfig):
    image_size: int = 224
    patch_size: int = 16
    width: int = 256


class {cls}View(MediaView):
    """The encoder's preprocessing: runs in data-loader workers, so it holds settings, never weights."""

    def __init__(self, image_size: int) -> None:
        self.image_size = image_size

    def __call__(self, item: Any, modality: str) -> Viewed:
        import numpy as np
        from PIL import Image

        image = (Image.open(item) if isinstance(item, str) else item).convert("RGB")
        image = image.resize((self.image_size, self.image_size))
        return torch.from_numpy(np.asarray(image, dtype="float32") / 255.0).permute(2, 0, 1), {{}}


class {cls}(Encoder):
    Config: ClassVar[type[ComponentConfig]] = {cls}Config
    modalities: ClassVar[tuple[str, ...]] = ("image",)

    def __init__(self, config: {cls}Config, ctx: BuildContext) -> None:
        super().__init__(config, ctx)
        self.patches = nn.Conv2d(3, config.width, config.patch_size, config.patch_size, device=ctx.device)

    @classmethod
    def tiny_config(cls) -> dict[str, Any]:
        return {{"image_size": 32, "patch_size": 8, "width": 16}}

    @property
    def output_spec(self) -> FeatureSpec:
        side = self.config.image_size // self.config.patch_size
        return FeatureSpec(dim=self.config.width, num_tokens=side * side, grid=(side, side))

    def input_shape(self, modality: str) -> tuple[int, ...]:
        return (3, self.config.image_size, self.config.image_size)

    def media_view(self, **preprocessing: Any) -> {cls}View:
        return {cls}View(self.preprocessing_config(**preprocessing).image_size)

    def forward(self, media: torch.Tensor, modality: str) -> Features:
        grid = self.patches(media)  # (B, C, h, w)
        return Features(tokens=grid.flatten(2).transpose(1, 2), grid=self.output_spec.grid)
''',
    "head": '''"""`{name}`: regresses a box from the hidden state its trigger token selects (edit me).

The data path feeds it the samples whose reply holds its trigger, with one `Sample.targets["boxes"]` item per
trigger, as `Batch.targets["boxes"]`: a `TargetBatch` (values (K, 4) pixels, sample_index (K,)).
"""

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mmcore.kinds import BuildContext, ComponentConfig, Head, HeadConfig, HeadOutput
from mmcore.sequence import TargetBatch


class {cls}Config(HeadConfig):
    trigger_token: str = "[{upper}]"


class {cls}(Head):
    Config: ClassVar[type[ComponentConfig]] = {cls}Config
    target_key: ClassVar[str] = "boxes"  # the Sample.targets key it learns from, one per trigger

    def __init__(self, config: {cls}Config, ctx: BuildContext) -> None:
        super().__init__(config, ctx)
        self.box = nn.Linear(self.llm_hidden_size, 4, device=ctx.device)

    def example_inputs(self, batch_size: int) -> tuple[Any, ...]:
        hidden = torch.randn(batch_size, self.llm_hidden_size)
        rows = torch.arange(batch_size)
        return hidden, rows, {{}}, {{"boxes": TargetBatch(torch.rand(batch_size, 4), rows)}}

    def forward(self, hidden: torch.Tensor, sample_index: torch.Tensor, media: dict[str, Any],
                targets: Any) -> HeadOutput:
        boxes = self.box(hidden).sigmoid()  # (K, 4) normalised xyxy
        losses = {{}}
        found = (targets or {{}}).get(self.target_key)
        if found is not None and len(sample_index):  # the j-th trigger of a row ↔ its j-th target
            rows, taken = found.rows(), {{}}
            wanted = []
            for row in sample_index.tolist():
                wanted.append(rows[row][taken.get(row, 0)])
                taken[row] = taken.get(row, 0) + 1
            losses["l1"] = self.config.loss_weight * F.l1_loss(boxes, torch.stack(wanted).to(boxes))
        return HeadOutput(predictions={{"boxes": boxes, "sample_index": sample_index}}, losses=losses)
''',
}

TEST = '''"""The mmcore conformance suite over every component of {dist}."""

from mmcore.testing import ConformanceSuite


class TestConformance(ConformanceSuite):
    distribution = "{dist}"


def test_plugin_is_installed():
    """The component shows up in mmcore's registry under its manifest type."""
    from mmcore.registry import Registry

    assert "{name}" in Registry().names("{kind}")
'''

README = '''# {dist}

The `{name}` {kind} for [mmcore](https://pypi.org/project/mmcore/).

```toml
[model.{table}]
type = "{name}"
```

Develop: `pip install -e . && pytest`. `mmcore plugins` lists it once installed.
'''


def scaffold(name: str, kind: str, target: Path | None = None) -> Path:
    """Write `mmcore-plugin-NAME/` (or `target`): pyproject, package, component, tests, README."""
    if not re.fullmatch(r"[a-z][a-z0-9]*(-[a-z0-9]+)*", name):
        raise MmcoreError(f"plugin name '{name}': use lower-case words joined by '-', e.g. my-projector")
    if kind not in COMPONENTS:
        raise MmcoreError(f"--kind {kind}: scaffolds exist for {', '.join(sorted(COMPONENTS))}")
    package = "mmcore_plugin_" + name.replace("-", "_")
    cls = "".join(part.capitalize() for part in name.split("-")) + kind.capitalize()
    if keyword.iskeyword(package):
        raise MmcoreError(f"plugin name '{name}' makes an invalid package name; choose another")
    dist = f"mmcore-plugin-{name}"
    target = target or Path(dist)
    if target.exists() and any(target.iterdir()):
        raise MmcoreError(f"{target}: exists and is not empty; choose another directory with -o")
    table = {"encoder": "encoders.vision", "projector": "projectors.vision", "head": f"heads.{name}"}[kind]
    values = dict(name=name, kind=kind, dist=dist, package=package, cls=cls, api=API_VERSION,
                  table=table, upper=name.upper().replace("-", "_"))
    files = {
        "pyproject.toml": PYPROJECT, f"{package}/__init__.py": INIT,
        f"{package}/component.py": COMPONENTS[kind], "tests/test_conformance.py": TEST, "README.md": README,
    }
    for relative, text in files.items():
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text.format(**values), encoding="utf-8")
    return target
