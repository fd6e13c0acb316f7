"""`synthetic-shapes`: procedurally drawn scenes with captions, VQA, referring boxes and masks.

Deterministic: scene `i` of a split depends only on (seed, split, i), so any split size, any worker
and any world size see the same data. It is the embedded default's data and the regression corpus.
Tasks: `caption`, `vqa/colour`, `vqa/shape`, `vqa/count`, `vqa/spatial`, `refer`, `mask`, and two that
need an audio encoder: `audio/colour` (the scene's audio track alone) and `audiovisual/colour` (image and
audio). The audio track is a tone whose pitch names the colour of the scene's first shape (`TONES`), with
its own random length, loudness, slight detune and noise; it is drawn from its own generator, so every other
task's data is what it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from mmcore.kinds import ComponentConfig, Dataset, Sample, Turn

__all__ = ["COLOURS", "SHAPES", "TASKS", "ShapesConfig", "SyntheticShapes"]

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220),
    "yellow": (230, 210, 40), "purple": (150, 60, 190), "orange": (240, 140, 30),
}
SHAPES = ("circle", "square", "triangle")
TASKS = ("caption", "vqa/colour", "vqa/shape", "vqa/count", "vqa/spatial", "vqa/position", "refer", "mask",
         "audio/colour", "audiovisual/colour")
TONES: dict[str, float] = {"red": 220.0, "green": 330.0, "blue": 440.0, "yellow": 660.0, "purple": 880.0,
                           "orange": 1320.0}  # Hz: far apart on the mel scale
AUDIO_RATE = 16000
DEFAULT_TASKS = ("caption", "vqa/colour", "vqa/shape", "vqa/count", "vqa/spatial", "refer", "mask")
_SPLITS = {"train": 0, "val": 1, "test": 2}
_NUMBERS = ("zero", "one", "two", "three", "four")


class ShapesConfig(ComponentConfig):
    split: Literal["train", "val", "test"] = "train"
    size: int = Field(1000, ge=1)  # number of scenes; samples = size × len(tasks)
    seed: int = 0
    image_size: int = Field(64, ge=16)
    max_shapes: int = Field(3, ge=1, le=4)
    min_shapes: int = Field(1, ge=1, le=4)  # 2: every scene can ask a real spatial question
    tasks: list[str] = Field(default_factory=lambda: list(DEFAULT_TASKS))
    box_format: Literal["honeybee", "minigpt"] = "honeybee"  # text of referring boxes

    @model_validator(mode="after")
    def _range(self) -> ShapesConfig:
        if self.min_shapes > self.max_shapes:
            raise ValueError(f"min_shapes {self.min_shapes} is above max_shapes {self.max_shapes}")
        return self

    @field_validator("tasks")
    @classmethod
    def _known(cls, tasks: list[str]) -> list[str]:
        expanded = [t for wanted in tasks for t in TASKS if t == wanted or t.startswith(f"{wanted}/")]
        unknown = [w for w in tasks if not any(t == w or t.startswith(f"{w}/") for t in TASKS)]
        if unknown:
            raise ValueError(f"unknown tasks {unknown}; choose from {list(TASKS)} (or 'vqa' for all vqa/*)")
        return list(dict.fromkeys(expanded))


@dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 in pixels

    @property
    def name(self) -> str:
        return f"{self.colour} {self.kind}"

    @property
    def centre(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2


def _scene(rng: np.random.Generator, size: int, max_shapes: int, min_shapes: int = 1) -> list[Shape]:
    """`min_shapes` to `max_shapes` non-overlapping shapes with distinct (colour, kind) pairs."""
    count = int(rng.integers(min_shapes, max_shapes + 1))
    shapes: list[Shape] = []
    for _ in range(100):  # a layout that cannot reach `min_shapes` starts over
        shapes = []
        for _ in range(50):
            if len(shapes) == count:
                break
            side = int(rng.integers(size * 3 // 8, size // 2 + 1))  # large enough that a circle is not a square
            x, y = (int(v) for v in rng.integers(1, size - side - 1, size=2))
            box = (x, y, x + side, y + side)
            kind, colour = SHAPES[int(rng.integers(3))], list(COLOURS)[int(rng.integers(len(COLOURS)))]
            clash = any(not (box[2] + 2 < s.box[0] or s.box[2] + 2 < box[0] or box[3] + 2 < s.box[1]
                             or s.box[3] + 2 < box[1]) for s in shapes)
            if not clash and all((s.kind, s.colour) != (kind, colour) for s in shapes):
                shapes.append(Shape(kind, colour, box))
        if len(shapes) >= min_shapes:
            break
    return shapes


def _draw(shapes: list[Shape], size: int, mode: str = "RGB", only: Shape | None = None) -> Any:
    from PIL import Image, ImageDraw

    image = Image.new(mode, (size, size), (245, 245, 245) if mode == "RGB" else 0)
    draw = ImageDraw.Draw(image)
    for shape in shapes:
        if only is not None and shape != only:
            continue
        fill: Any = COLOURS[shape.colour] if mode == "RGB" else 255
        x1, y1, x2, y2 = shape.box
        if shape.kind == "circle":
            draw.ellipse(shape.box, fill=fill)
        elif shape.kind == "square":
            draw.rectangle(shape.box, fill=fill)
        else:
            draw.polygon([((x1 + x2) / 2, y1), (x2, y2), (x1, y2)], fill=fill)
    return image


def tone(colour: str, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """(waveform (samples,) float32, 16000): 1–3 s of the colour's tone, detuned up to 2 %, plus noise."""
    seconds = float(rng.uniform(1.0, 3.0))
    t = np.arange(int(seconds * AUDIO_RATE)) / AUDIO_RATE
    pitch = TONES[colour] * float(rng.uniform(0.98, 1.02))
    wave = float(rng.uniform(0.2, 0.6)) * np.sin(2 * np.pi * pitch * t + float(rng.uniform(0, 2 * np.pi)))
    return (wave + 0.01 * rng.standard_normal(len(t))).astype(np.float32), AUDIO_RATE


def _audio_sample(task: str, shapes: list[Shape], image: Any,
                  rng: np.random.Generator) -> tuple[str, str, dict[str, Any]]:
    """(question, answer, media) of the audio tasks: the tone names the first shape's colour."""
    first = shapes[0]
    media: dict[str, list[Any]] = {"audio": [tone(first.colour, rng)]}
    if task == "audio/colour":
        return "<audio>\nWhat colour does the tone name?", first.colour, media
    unique = sum(s.kind == first.kind for s in shapes) == 1
    subject = "the shape" if len(shapes) == 1 else (f"the {first.kind}" if unique else "the shape the tone names")
    return f"<image><audio>\nWhat colour is {subject}?", first.colour, {"image": [image], **media}


def box_text(box: tuple[int, int, int, int], size: int, style: str) -> str:
    """Honeybee `[x1,y1,x2,y2]` normalised, 3 decimals; MiniGPT-v2 `{<x1><y1><x2><y2>}` in 0–100."""
    if style == "minigpt":
        return "{" + "".join(f"<{int(v / size * 100)}>" for v in box) + "}"
    return "[" + ",".join(f"{v / size:.3f}" for v in box) + "]"


def _unique(shapes: list[Shape], rng: np.random.Generator, by: str) -> Shape | None:
    """A shape whose `by` attribute (kind or colour) no other shape shares, or None."""
    candidates = [s for s in shapes if sum(getattr(o, by) == getattr(s, by) for o in shapes) == 1]
    return candidates[int(rng.integers(len(candidates)))] if candidates else None


def _vqa(task: str, shapes: list[Shape], rng: np.random.Generator, size: int) -> tuple[str, str] | None:
    if task == "vqa/colour":
        target = _unique(shapes, rng, "kind")
        if target is None:
            return None
        subject = "the shape" if len(shapes) == 1 else f"the {target.kind}"
        return f"What colour is {subject}?", target.colour
    if task == "vqa/shape":
        target = _unique(shapes, rng, "colour")
        if target is None:
            return None
        subject = "the object" if len(shapes) == 1 else f"the {target.colour} object"
        return f"What shape is {subject}?", target.kind
    if task == "vqa/count":
        return "How many shapes are there?", _NUMBERS[len(shapes)]
    if task == "vqa/position":  # where one named shape lies in the image: locating, without relating two
        target = shapes[int(rng.integers(len(shapes)))]
        (x, y), half = target.centre, size / 2
        if abs(x - half) >= abs(y - half):
            return f"Is the {target.name} in the left or the right half of the image?", "left" if x < half else "right"
        return f"Is the {target.name} in the top or the bottom half of the image?", "top" if y < half else "bottom"
    if len(shapes) < 2:
        return None
    a, b = (shapes[int(i)] for i in rng.permutation(len(shapes))[:2])
    (ax, ay), (bx, by) = a.centre, b.centre
    if abs(ax - bx) >= abs(ay - by):
        return f"Is the {a.name} left or right of the {b.name}?", "left" if ax < bx else "right"
    return f"Is the {a.name} above or below the {b.name}?", "above" if ay < by else "below"


class SyntheticShapes(Dataset):
    """Scenes × tasks; a task that does not fit a scene (e.g. spatial with one shape) falls back to count."""

    Config: ClassVar[type[ComponentConfig]] = ShapesConfig

    @classmethod
    def tiny_config(cls) -> dict[str, Any]:
        return {"size": 4, "image_size": 32}

    def __len__(self) -> int:
        return self.config.size * len(self.config.tasks)

    def media_key(self, index: int) -> str | None:
        return f"{self.config.split}-{index // len(self.config.tasks)}"  # one scene, several tasks

    def scene(self, index: int) -> tuple[list[Shape], np.random.Generator]:
        rng = np.random.default_rng([self.config.seed, _SPLITS[self.config.split], index])
        return _scene(rng, self.config.image_size, self.config.max_shapes, self.config.min_shapes), rng

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < len(self):
            raise IndexError(index)
        cfg = self.config
        scene_index, task = divmod(index, len(cfg.tasks))[0], cfg.tasks[index % len(cfg.tasks)]
        shapes, rng = self.scene(scene_index)
        image = _draw(shapes, cfg.image_size)
        sid = f"shapes-{cfg.split}-{scene_index}-{task}"
        targets: dict[str, Any] = {}
        if task.startswith("audio"):
            audio_rng = np.random.default_rng([cfg.seed, _SPLITS[cfg.split], scene_index, 7])
            question, answer, media = _audio_sample(task, shapes, image, audio_rng)
            return Sample(id=sid, conversation=[Turn("user", question), Turn("assistant", answer)], media=media,
                          task=task)
        if task == "caption":
            names = [f"{'an' if s.colour[0] in 'aeiou' else 'a'} {s.name}" for s in shapes]
            text = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
            question, answer = "Describe the image briefly.", text[0].upper() + text[1:] + "."
        elif task in ("refer", "mask"):
            target = shapes[int(rng.integers(len(shapes)))]
            targets = {"boxes": [list(target.box)],
                       "masks": [np.asarray(_draw(shapes, cfg.image_size, "L", target)) > 0]}
            if task == "refer":
                question = f"Where is the {target.name}? Answer with its bounding box."
                answer = box_text(target.box, cfg.image_size, cfg.box_format)
            else:
                question, answer = f"Segment the {target.name}.", "Sure, [SEG]."
        else:
            qa = _vqa(task, shapes, rng, cfg.image_size)
            if qa is None:  # e.g. a spatial question about a one-shape scene
                task, qa = "vqa/count", _vqa("vqa/count", shapes, rng, cfg.image_size)
            assert qa is not None  # Contract: counting always applies
            question, answer = qa
        conversation = [Turn("user", f"<image>\n{question}"), Turn("assistant", answer)]
        return Sample(id=sid, conversation=conversation, media={"image": [image]}, targets=targets, task=task)
