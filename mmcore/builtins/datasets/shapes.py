"""`synthetic-shapes`: procedurally drawn scenes with captions, VQA, referring boxes and masks.

Deterministic: scene `i` of a split depends only on (seed, split, i), so any split size, any worker
and any world size see the same data. It is the embedded default's data and the regression corpus.
Tasks: `caption`, `vqa/colour`, `vqa/shape`, `vqa/count`, `vqa/spatial`, `refer`, `mask`, MiniGPT-v2's
`identify` (box → name), `detection` (phrase → every box of it, "<p>circle</p> {..}<delim>{..}") and `grounding`
(a caption with a box after each phrase, "<p>A red circle</p> {..} and …"), and two that need an audio
encoder: `audio/colour` (the scene's audio track alone) and `audiovisual/colour` (image and audio). The audio
track is a tone whose pitch names the colour of the scene's first shape (`TONES`), with its own random length,
loudness, slight detune and noise; it is drawn from its own generator, so every other task's data is what it was.
u-LLaVA's referring segmentation `res` (one turn) and `res-turns` (up to 3 phrases for one shape) answer in its
format with mask and box targets. `instructions = "minigpt-v2"` asks with MiniGPT-v2's instruction pools (and its
`blip_caption` text processor), one drawn per sample from its own generator (`mmcore.builtins.instructions`).
`video/motion` needs a video encoder: 8–16 frames (PIL images, in memory) of the scene's first shape moving left,
right, up or down over a colour-ramp backdrop, "Which way does the {shape} move?" with the video appended to the
turn as u-LLaVA does (`preprocess_video_text`); drawn from its own generator too."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from mmcore.builtins.instructions import blip_caption, minigpt_v2_instruction
from mmcore.kinds import ComponentConfig, Dataset, Sample, Turn

__all__ = ["COLOURS", "SHAPES", "TASKS", "ShapesConfig", "SyntheticShapes"]

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220),
    "yellow": (230, 210, 40), "purple": (150, 60, 190), "orange": (240, 140, 30),
}
SHAPES = ("circle", "square", "triangle")
TASKS = ("caption", "vqa/colour", "vqa/shape", "vqa/count", "vqa/spatial", "vqa/position", "refer", "mask",
         "audio/colour", "audiovisual/colour", "identify", "detection", "grounding", "res", "res-turns",
         "video/motion")
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
    # "minigpt-v2": MiniGPT-v2's instruction pools + blip_caption text (the llama2 template adds the task tag)
    instructions: Literal["shapes", "minigpt-v2"] = "shapes"

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


DIRECTIONS = ("left", "right", "up", "down")


def _backdrop(size: int) -> Any:
    """The video frames' backdrop: red rising left → right, blue top → bottom, so that where the shape stands
    shows in a frame's summary (u-LLaVA's temporal tokens are means over the frame); a plain backdrop hides it."""
    from PIL import Image

    ramp = np.linspace(60, 250, size).astype(np.uint8)
    pixels = np.full((size, size, 3), 200, np.uint8)
    pixels[:, :, 0], pixels[:, :, 2] = ramp[None, :], ramp[:, None]
    return Image.fromarray(pixels)


def _motion(shapes: list[Shape], rng: np.random.Generator, size: int) -> tuple[str, str, list[Any]]:
    """(question, direction, frames): the first shape alone on the backdrop, a third of the image wide, crossing
    most of it. The same positions in reverse order answer the opposite way: only the frame order tells."""
    from PIL import Image

    first, direction = shapes[0], DIRECTIONS[int(rng.integers(len(DIRECTIONS)))]
    side = int(size * rng.uniform(0.25, 0.35))
    count = int(rng.integers(8, 17))
    margin, room = max(1, size // 10), size - side - 1
    start, stop = int(rng.integers(1, margin + 1)), int(rng.integers(room - margin, room + 1))
    if direction in ("left", "up"):
        start, stop = stop, start
    across = int(rng.integers(1, room + 1))
    frames = []
    for step in np.linspace(start, stop, count):
        along = round(float(step))
        x, y = (along, across) if direction in ("left", "right") else (across, along)
        moved = Shape(first.kind, first.colour, (x, y, x + side, y + side))
        paint = Image.new("RGB", (size, size), COLOURS[first.colour])
        frames.append(Image.composite(paint, _backdrop(size), _draw([moved], size, "L")))
    return f"Which way does the {first.name} move?", direction, frames


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


def _boxed(task: str, shapes: list[Shape], rng: np.random.Generator, size: int,
           style: str) -> tuple[str, str, list[list[int]], str]:
    """MiniGPT-v2's box tasks: (question, answer, target boxes in pixels, what its instruction pool formats)."""

    def box(shape: Shape) -> str:
        return box_text(shape.box, size, style)

    if task == "identify":  # InvReferCOCODataset: a box → what is there
        target = shapes[int(rng.integers(len(shapes)))]
        return f"What object is at {box(target)}?", target.name, [list(target.box)], box(target)
    if task == "detection":  # PhraseToObjectDataset: a phrase → every box of it, "<delim>"-joined
        kinds = sorted({s.kind for s in shapes})
        kind = kinds[int(rng.integers(len(kinds)))]
        found = sorted((s for s in shapes if s.kind == kind), key=lambda s: s.box)
        answer = f"<p>{kind}</p> " + "<delim>".join(box(s) for s in found)
        return f"Find every {kind}.", answer, [list(s.box) for s in found], kind
    # GroundedDetailDataset: a caption with the box of each phrase after it
    parts = [f"<p>{'an' if s.colour[0] in 'aeiou' else 'a'} {s.name}</p> {box(s)}" for s in shapes]
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    answer = text[:3] + text[3].upper() + text[4:] + "."
    return "Describe the image with the box of each shape.", answer, [list(s.box) for s in shapes], ""


def _minigpt_v2(task: str, question: str, answer: str, field: str, rng: np.random.Generator) -> tuple[str, str]:
    """(question, answer) as MiniGPT-v2's datasets write them: an instruction from the task's pool, text through
    `blip_caption` where they apply it (questions, captions, referring phrases, identify answers)."""
    family = task.split("/")[0]
    if family == "vqa":
        return minigpt_v2_instruction(task, rng, blip_caption(question)), blip_caption(answer)
    if family == "caption":
        return minigpt_v2_instruction(task, rng), blip_caption(answer)
    if family == "refer":
        return minigpt_v2_instruction(task, rng, blip_caption(field)), answer
    if family == "identify":
        return minigpt_v2_instruction(task, rng, field), blip_caption(answer)
    if family in ("detection", "grounding"):
        return minigpt_v2_instruction(task, rng, *([field] if field else [])), answer
    return question, answer  # mask: MiniGPT-v2 has no such task


def _res(task: str, shapes: list[Shape], rng: np.random.Generator, image: Any, size: int, sid: str) -> Sample:
    """u-LLaVA's referring segmentation (`ResDataset`): a SEG.json question about one shape, the answer `Sure.
    Mask: [SEG]; Location: [LOC]; [tag]{kind}[/tag].`, its mask and pixel box per turn. `res-turns`: up to 3
    phrases naming the same shape (its name, its kind or colour when unique), one turn each, as u-LLaVA's
    multi-sentence records."""
    from mmcore.builtins.datasets.ullava_json import SEG_QUESTIONS, answer, question

    target = shapes[int(rng.integers(len(shapes)))]
    phrases = [target.name]
    if task == "res-turns":
        phrases += [target.kind] if sum(s.kind == target.kind for s in shapes) == 1 else []
        phrases += [f"{target.colour} shape"] if sum(s.colour == target.colour for s in shapes) == 1 else []
        phrases = [phrases[int(i)] for i in rng.permutation(len(phrases))]
    turns = []
    for number, phrase in enumerate(phrases):
        template = SEG_QUESTIONS[int(rng.integers(len(SEG_QUESTIONS)))]
        turns += [Turn("user", question(template, phrase, first=number == 0)), Turn("assistant", answer(target.kind))]
    mask = np.asarray(_draw(shapes, size, "L", target)) > 0
    targets = {"masks": [mask] * len(phrases), "boxes": [list(target.box)] * len(phrases)}
    return Sample(id=sid, conversation=turns, media={"image": [image]}, targets=targets, task=task)


class SyntheticShapes(Dataset):
    """Scenes × tasks; a task that does not fit a scene (e.g. spatial with one shape) falls back to count."""

    Config: ClassVar[type[ComponentConfig]] = ShapesConfig

    @classmethod
    def special_tokens(cls, config: Any) -> list[str]:
        """u-LLaVA's answer tokens when a `res` task is asked (`[SEG]`, `[LOC]`, `[tag]`, `[/tag]`)."""
        from mmcore.builtins.datasets.ullava_json import ANSWER_TOKENS

        return list(ANSWER_TOKENS) if {"res", "res-turns"} & set(config.tasks) else []

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
        field = ""  # what a MiniGPT-v2 instruction pool formats
        if task.startswith("audio"):
            audio_rng = np.random.default_rng([cfg.seed, _SPLITS[cfg.split], scene_index, 7])
            question, answer, media = _audio_sample(task, shapes, image, audio_rng)
            return Sample(id=sid, conversation=[Turn("user", question), Turn("assistant", answer)], media=media,
                          task=task)
        if task in ("res", "res-turns"):
            return _res(task, shapes, rng, image, cfg.image_size, sid)
        if task == "video/motion":  # its own generator: every other task's data stays as it was
            motion_rng = np.random.default_rng([cfg.seed, _SPLITS[cfg.split], scene_index, 13])
            question, answer, frames = _motion(shapes, motion_rng, cfg.image_size)
            return Sample(id=sid, conversation=[Turn("user", question + "<video>"), Turn("assistant", answer)],
                          media={"video": [frames]}, task=task)
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
                answer, field = box_text(target.box, cfg.image_size, cfg.box_format), target.name
            else:
                question, answer = f"Segment the {target.name}.", "Sure, [SEG]."
        elif task in ("identify", "detection", "grounding"):
            question, answer, boxes, field = _boxed(task, shapes, rng, cfg.image_size, cfg.box_format)
            targets = {"boxes": boxes}
        else:
            qa = _vqa(task, shapes, rng, cfg.image_size)
            if qa is None:  # e.g. a spatial question about a one-shape scene
                task, qa = "vqa/count", _vqa("vqa/count", shapes, rng, cfg.image_size)
            assert qa is not None  # Contract: counting always applies
            question, answer = qa
        if cfg.instructions == "minigpt-v2":  # its own generator: the scene and its targets stay as they are
            pick = np.random.default_rng([cfg.seed, _SPLITS[cfg.split], scene_index, 11, zlib.crc32(task.encode())])
            question, answer = _minigpt_v2(task, question, answer, field, pick)
        conversation = [Turn("user", f"<image>\n{question}"), Turn("assistant", answer)]
        return Sample(id=sid, conversation=conversation, media={"image": [image]}, targets=targets, task=task)
