"""`llava-json`: LLaVA's conversation JSON (or JSON lines) plus an image folder.

Record: {"id", "image": "a.jpg" | ["a.jpg", "b.jpg"] (optional: text-only), "conversations":
[{"from": "human"|"gpt"|"system", "value": "..."}]}. As LLaVA's `preprocess_multimodal`, a single
`<image>` is moved to the front of its turn as "<image>\\n" + text. A record that is not this shape (a null
or an object where text belongs, a null image name, a non-UTF-8 or malformed JSON line, a placeholder count
that differs from the image count) raises a `SampleError`: skipped and counted by reason, never trained on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, cast

from pydantic import Field

from mmcore.errors import MmcoreError, SampleError
from mmcore.kinds import BuildContext, ComponentConfig, Dataset, Sample, Turn

__all__ = ["LlavaJson", "LlavaJsonConfig"]

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


class LlavaJsonConfig(ComponentConfig):
    path: str  # a .json array or a .jsonl file, relative to the manifest
    image_folder: str = "."
    portion: float = Field(1.0, gt=0, le=1)  # u-LLaVA `portion`: keep the first fraction of records


def _read_lines(path: Path, data: bytes) -> list[Any]:
    """Records of a .jsonl file; a malformed or non-UTF-8 line becomes a string marker (skipped, counted)."""
    records: list[Any] = []
    for number, raw in enumerate(data.splitlines(), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            records.append(f"{path}:{number}: not UTF-8 text (byte {err.start}); re-encode the line")
            continue
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError as err:
            records.append(f"{path}:{number}: malformed JSON line ({err})")
    return records


def read_records(path: Path, kind: str = "llava-json") -> list[Any]:
    """Records of a .json array or .jsonl file (`kind`: the dataset type, for messages). In a .jsonl file a
    malformed line becomes a string marker the dataset raises as `malformed-record` (skipped, counted)."""
    if not path.is_file():
        raise MmcoreError(f"{kind} path {path}: no such file; fix [data.datasets.*] path")
    data = path.read_bytes()
    if path.suffix == ".jsonl":
        return _read_lines(path, data)
    try:
        records = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise MmcoreError(f"{kind} {path}: not UTF-8 text (byte {err.start}); re-encode it as UTF-8") from None
    except ValueError as err:
        raise MmcoreError(f"{kind} {path}: not valid JSON ({err}); fix the file or use .jsonl") from None
    if not isinstance(records, list):
        raise MmcoreError(f"{kind} {path}: expected a JSON array of records")
    return records


def _malformed(where: str, what: str) -> SampleError:
    return SampleError(f"{where}: {what}; a record is {{'id', 'image': 'a.jpg' | [...], 'conversations': "
                       f"[{{'from': 'human'|'gpt', 'value': 'text'}}]}}", "malformed-record")


def _images(where: str, record: dict[str, Any]) -> list[str]:
    images = record.get("image")
    images = [] if images is None else [images] if isinstance(images, str) else images
    if not isinstance(images, list) or not all(isinstance(i, str) and i.strip() for i in images):
        raise _malformed(where, f"'image' is {json.dumps(record.get('image'))[:60]}, not a file name or a list of them")
    return images


def _turns(where: str, record: dict[str, Any]) -> list[Turn]:
    conversation = record.get("conversations")
    if not isinstance(conversation, list) or not conversation:
        raise _malformed(where, "'conversations' is missing or empty")
    turns = []
    for number, turn in enumerate(conversation, start=1):
        if not isinstance(turn, dict) or turn.get("from") not in ROLES:
            raise _malformed(where, f"turn {number} has no 'from' of human, gpt or system")
        if not isinstance(turn.get("value"), str):  # never train on the text "None" or a dict's repr
            raise _malformed(where, f"turn {number}'s 'value' is {json.dumps(turn.get('value'))[:40]}, not text")
        turns.append(Turn(cast(Any, ROLES[turn["from"]]), turn["value"]))
    return turns


class LlavaJson(Dataset):
    Config: ClassVar[type[ComponentConfig]] = LlavaJsonConfig

    def __init__(self, config: LlavaJsonConfig, ctx: BuildContext) -> None:
        super().__init__(config, ctx)
        self.path = ctx.path(config.path)
        self.folder = ctx.path(config.image_folder)
        records = read_records(self.path)
        self.records = records[: max(1, int(len(records) * config.portion))]

    @classmethod
    def data_paths(cls, config: Any) -> dict[str, str]:
        return {"path": config.path, "image_folder": config.image_folder}

    @classmethod
    def tiny_config(cls) -> dict[str, Any]:
        return {"path": str(Path(__file__).with_name("llava_example.jsonl"))}

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample:
        record = self.records[index]
        if isinstance(record, str):
            raise SampleError(record, "malformed-record")
        if not isinstance(record, dict):
            raise _malformed(f"{self.path} record {index}", f"a {type(record).__name__}, not an object")
        sid = str(record.get("id", f"{self.path.name}#{index}"))
        where = f"{self.path} record '{sid}'"
        images, turns = _images(where, record), _turns(where, record)
        placeholders = sum(turn.text.count("<image>") for turn in turns)
        if placeholders and placeholders != len(images):  # LLaVA merges two placeholders of one image in silence
            raise SampleError(f"{where}: {placeholders} <image> placeholder(s) for {len(images)} image(s); give one "
                              f"placeholder per image", "placeholder-mismatch")
        if len(images) == 1:
            for turn in turns:
                if "<image>" in turn.text:
                    turn.text = "<image>\n" + turn.text.replace("<image>", "").strip()
        media = {"image": [self.folder / name for name in images]} if images else {}
        task = record.get("task")
        return Sample(id=sid, conversation=turns, media=media, task=task if isinstance(task, str) else None)
