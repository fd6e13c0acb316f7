"""`llava-json`: LLaVA's conversation JSON (or JSON lines) plus an image folder.

Record: {"id", "image": "a.jpg" | ["a.jpg", "b.jpg"] (optional: text-only), "conversations":
[{"from": "human"|"gpt"|"system", "value": "..."}]}. As LLaVA's `preprocess_multimodal`, a single
`<image>` is moved to the front of its turn as "<image>\\n" + text.
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


def _read(path: Path) -> list[Any]:
    """Records of a .json array or .jsonl file; a malformed JSON line becomes a string marker."""
    if not path.is_file():
        raise MmcoreError(f"llava-json path {path}: no such file; fix [data.datasets.*] path")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        records: list[Any] = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except ValueError as err:
                records.append(f"{path}:{number}: malformed JSON line ({err})")
        return records
    try:
        data = json.loads(text)
    except ValueError as err:
        raise MmcoreError(f"llava-json {path}: not valid JSON ({err}); fix the file or use .jsonl") from None
    if not isinstance(data, list):
        raise MmcoreError(f"llava-json {path}: expected a JSON array of records")
    return data


class LlavaJson(Dataset):
    Config: ClassVar[type[ComponentConfig]] = LlavaJsonConfig

    def __init__(self, config: LlavaJsonConfig, ctx: BuildContext) -> None:
        super().__init__(config, ctx)
        self.path = ctx.path(config.path)
        self.folder = ctx.path(config.image_folder)
        records = _read(self.path)
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
        sid = str(record.get("id", f"{self.path.name}#{index}")) if isinstance(record, dict) else str(index)
        try:
            images = record.get("image")
            images = [] if images is None else [images] if isinstance(images, str) else list(images)
            turns = [Turn(cast(Any, ROLES[c["from"]]), str(c["value"])) for c in record["conversations"]]
        except (KeyError, TypeError, AttributeError) as err:
            raise SampleError(f"{self.path} record '{sid}': malformed ({type(err).__name__}: {err}); it needs "
                              f"'conversations' of {{'from': human|gpt, 'value': ...}}", "malformed-record") from None
        if len(images) == 1:
            for turn in turns:
                if "<image>" in turn.text:
                    turn.text = "<image>\n" + turn.text.replace("<image>", "").strip()
        media = {"image": [self.folder / name for name in images]} if images else {}
        return Sample(id=sid, conversation=turns, media=media, task=record.get("task"))
