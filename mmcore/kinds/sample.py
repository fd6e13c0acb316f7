"""The canonical data record every dataset yields (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["Role", "Sample", "Turn"]

Role = Literal["system", "user", "assistant"]


@dataclass
class Turn:
    """One message of a conversation; its text may hold media placeholders such as `<image>`."""

    role: Role
    text: str


@dataclass
class Sample:
    """One training or evaluation record.

    `media` maps a modality ("image", "audio", ...) to its items in placeholder order: file paths,
    PIL images or arrays, whatever the modality's encoder preprocesses. `targets` holds dense or
    structured supervision (boxes in xyxy pixels, masks, points) that task heads consume.
    """

    id: str
    conversation: list[Turn]
    media: dict[str, list[Any]] = field(default_factory=dict)
    targets: dict[str, Any] = field(default_factory=dict)
    task: str | None = None
