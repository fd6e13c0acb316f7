"""`minigpt-v2-data`: MiniGPT-v2's stage-3 annotation files, read as its dataset classes read them.

`format` names the upstream builder (Vision-CAIR/MiniGPT-4 d94738a `minigpt4/datasets/builders/
image_text_pair_builder.py`), `path` its `build_info.ann_path` (a list for coco_vqa's two files), `image_folder`
its `image_path` / `vis_root` (refvg: its `data_dir`). Each record becomes the sample upstream's `__getitem__`
builds: the same question (an instruction from the pool, tag left to the `llama2` template), the same answer, the
same image file. Where upstream draws at random (an instruction, a VQA answer by frequency) a generator seeded by
(seed, index) draws, so the data stays deterministic. refcoco / refcoco+ / refcocog and their `inv` forms are the
`refcoco` dataset.

| format | file | sample |
|---|---|---|
| multitask_conversation, llava_conversation | [{id, conversations}] | multi-turn, no tag |
| llava_detail, llava_reason | [{id, conversations}] | first turn (blip_caption'd question), no tag |
| unnatural_instruction | [{instances: [{instruction_with_input, constraints, output}]}] | text only, no tag |
| coco_caption | Karpathy [{image, caption}] ("train" images) | [caption] |
| textcaps_caption | {data: [{image_id, caption_str}]} | [caption] |
| coco_vqa, ok_vqa | LAVIS [{question, answer: [...], image}] | [vqa], answer drawn by frequency |
| aok_vqa | [{question, direct_answers, image}] | [vqa], answer drawn by frequency |
| gqa | [{question, answer, image}] | [vqa] |
| ocrvqa | {id: {imageURL, questions, answers, split}} (split 1) | [vqa] |
| flickr_grounded_caption | [{image_id, grounded_caption}] | [grounding] |
| flickr_CaptionToPhrase | [{image_id, caption, output}] | [detection] |
| flickr_ObjectToPhrase | [{image_id, phrase, bbox}] | [detection], "<p>phrase</p> bbox" |
| refvg | region_descriptions.json + image_data.json in image_folder | [refer], regions under 16384 px² |
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from mmcore.builtins.instructions import blip_caption, minigpt_v2_instruction
from mmcore.errors import MmcoreError, SampleError
from mmcore.kinds import BuildContext, ComponentConfig, Dataset, Sample, Turn

__all__ = ["FORMATS", "MiniGPTv2Data", "MiniGPTv2DataConfig"]

Format = Literal["multitask_conversation", "llava_conversation", "llava_detail", "llava_reason",
                 "unnatural_instruction", "coco_caption", "textcaps_caption", "coco_vqa", "ok_vqa", "aok_vqa", "gqa",
                 "ocrvqa", "flickr_grounded_caption", "flickr_CaptionToPhrase", "flickr_ObjectToPhrase", "refvg"]
FORMATS: tuple[str, ...] = Format.__args__  # type: ignore[attr-defined]


class MiniGPTv2DataConfig(ComponentConfig):
    format: Format
    path: str | list[str] = ""  # upstream's ann_path, relative to the manifest; refvg: none (in image_folder)
    image_folder: str = "."
    seed: int = 0


def _load(path: Path) -> Any:
    if not path.is_file():
        raise MmcoreError(f"minigpt-v2-data {path}: no such file; fix [data.datasets.*] path")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:  # UnicodeDecodeError included
        raise MmcoreError(f"minigpt-v2-data {path}: not valid UTF-8 JSON ({err}); re-download the file") from None


def _records(config: MiniGPTv2DataConfig, ctx: BuildContext, folder: Path) -> list[Any]:
    """The annotation records as upstream's dataset class holds them (filters included)."""
    paths = [ctx.path(p) for p in ([config.path] if isinstance(config.path, str) else config.path)]
    fmt = config.format
    if fmt == "refvg":
        return _vg_regions(folder)
    if fmt == "ocrvqa":  # ocrvqa_dataset.py::create_data: split 1 is training, one record per question
        data = _load(paths[0])
        return [{"question": q, "answer": a, "image": k + os.path.splitext(v["imageURL"])[1]}
                for k, v in data.items() if v.get("split") == 1 for q, a in zip(v["questions"], v["answers"],
                                                                                 strict=False)]
    records: list[Any] = []
    for path in paths:  # BaseDataset: a dict file contributes its "annotations"
        data = _load(path)
        records += data["data"] if fmt == "textcaps_caption" else data.get("annotations", []) if isinstance(
            data, dict) else data
    if fmt == "coco_caption":  # COCOCaptionDataset keeps the train images of the Karpathy file
        records = [r for r in records if "train" in r.get("image", "")]
    return records


def _vg_regions(folder: Path) -> list[Any]:
    """visual_genome.local.get_all_region_descriptions: regions with their image's URL and size; vg_dataset.py
    keeps those under 16384 px²."""
    images = {i.get("image_id", i.get("id")): i for i in _load(folder / "image_data.json")}
    regions = []
    for entry in _load(folder / "region_descriptions.json"):
        for region in entry.get("regions", []):
            if region["width"] * region["height"] < 16384:
                image = images.get(region["image_id"], {})
                regions.append({**region, "file": "/".join(str(image.get("url", "")).split("/")[-2:])})
    return regions


VQA_ANSWER_LISTS = ("coco_vqa", "ok_vqa", "aok_vqa")  # records holding every annotator's answer


def _answer_by_frequency(answers: list[str], rng: np.random.Generator) -> str:
    """coco_vqa_datasets.py: each distinct answer weighted by its share of the annotators' answers."""
    weights: dict[str, float] = {}
    for answer in answers:
        weights[answer] = weights.get(answer, 0.0) + 1 / len(answers)
    names = list(weights)
    p = np.array([weights[n] for n in names])
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def _conversation(record: dict[str, Any], first_only: bool, process_first: bool) -> list[Turn]:
    """LLaVA-style turns as multitask_conversation.py / llava_dataset.py read them: the first question without
    "<image>" and newlines, stripped (blip_caption'd for detail / reason); later questions as written."""
    turns = record["conversations"]
    first = turns[0]["value"].replace("<image>", "").replace("\n", "").strip()
    out = [Turn("user", f"<image>\n{blip_caption(first) if process_first else first}")]
    for index, turn in enumerate(turns[1:2] if first_only else turns[1:]):
        out.append(Turn("assistant" if index % 2 == 0 else "user", str(turn["value"])))
    return out


def _sample(fmt: str, record: dict[str, Any], rng: np.random.Generator, folder: Path) -> tuple[Any, ...]:
    """(image path or None, conversation, task) of one record, as the upstream class builds it."""
    if fmt in ("multitask_conversation", "llava_conversation", "llava_detail", "llava_reason"):
        detail = fmt in ("llava_detail", "llava_reason")
        return f"COCO_train2014_{record['id']}.jpg", _conversation(record, detail, detail), None
    if fmt == "unnatural_instruction":
        info = record["instances"][0]
        question = info["instruction_with_input"] + (f" {info['constraints']}" if info["constraints"] is not None
                                                     else "")
        return None, [Turn("user", blip_caption(question)), Turn("assistant", blip_caption(info["output"]))], None
    if fmt in ("coco_caption", "textcaps_caption"):
        image = record["image"].split("/")[-1] if fmt == "coco_caption" else f"{record['image_id']}.jpg"
        caption = record["caption"] if fmt == "coco_caption" else record["caption_str"]
        return image, _turns(minigpt_v2_instruction("caption", rng), blip_caption(caption)), "caption"
    if fmt in ("coco_vqa", "ok_vqa", "aok_vqa", "gqa", "ocrvqa"):
        if fmt in ("coco_vqa", "ok_vqa", "aok_vqa"):
            answer = _answer_by_frequency(record["direct_answers" if fmt == "aok_vqa" else "answer"], rng)
            image = record["image"].split("/")[-1]
        else:
            answer, image = record["answer"], record["image"]
        question = minigpt_v2_instruction("vqa", rng, blip_caption(record["question"]))
        return image, _turns(question, blip_caption(answer)), "vqa"
    if fmt == "refvg":
        return record["file"], [], "refer"  # the box needs the image size: see MiniGPTv2Data.__getitem__
    image = f"{record['image_id']}.jpg"
    if fmt == "flickr_grounded_caption":
        return image, _turns(minigpt_v2_instruction("grounding", rng), record["grounded_caption"]), "grounding"
    if fmt == "flickr_CaptionToPhrase":
        return image, _turns(minigpt_v2_instruction("detection", rng, record["caption"]), record["output"]), "detection"
    answer = "<p>" + record["phrase"] + "</p> " + record["bbox"]  # flickr_ObjectToPhrase
    return image, _turns(minigpt_v2_instruction("detection", rng, record["phrase"]), answer), "detection"


def _turns(question: str, answer: str) -> list[Turn]:
    return [Turn("user", f"<image>\n{question}"), Turn("assistant", answer)]


class MiniGPTv2Data(Dataset):
    """One MiniGPT-v2 stage-3 dataset, by its builder name (`format`)."""

    Config: ClassVar[type[ComponentConfig]] = MiniGPTv2DataConfig

    def __init__(self, config: MiniGPTv2DataConfig, ctx: BuildContext) -> None:
        super().__init__(config, ctx)
        self.folder = ctx.path(config.image_folder)
        self.records = _records(config, ctx, self.folder)

    @classmethod
    def data_paths(cls, config: Any) -> dict[str, str]:
        paths = [config.path] if isinstance(config.path, str) else list(config.path)
        named = {"path" if i == 0 else f"path.{i}": p for i, p in enumerate(paths) if p}
        return {**named, "image_folder": config.image_folder}

    @classmethod
    def tiny_config(cls) -> dict[str, Any]:
        return {"format": "llava_detail", "path": str(Path(__file__).with_name("minigpt_v2_example.json"))}

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample:
        record, fmt = self.records[index], self.config.format
        rng = np.random.default_rng([self.config.seed, index])
        where = f"{self.config.format} record {index}"
        try:
            image, conversation, task = _sample(fmt, record, rng, self.folder)
            if fmt == "refvg":
                conversation = self._region(record, rng)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as err:
            raise SampleError(f"{where}: not a {fmt} record ({type(err).__name__}: {err})",
                              "malformed-record") from None
        media = {"image": [self.folder / image]} if image else {}
        answers = record.get("direct_answers" if fmt == "aok_vqa" else "answer") if fmt in VQA_ANSWER_LISTS else None
        targets = {"answers": [str(a) for a in answers]} if isinstance(answers, list) else {}  # VQA accuracy in eval
        return Sample(id=str(record.get("id", record.get("image_id", index))), conversation=conversation, media=media,
                      targets=targets, task=task)

    def _region(self, region: dict[str, Any], rng: np.random.Generator) -> list[Turn]:
        """vg_dataset.py: the phrase → "{<x1><y1><x2><y2>}" in 0–100 of the image's size."""
        from PIL import Image

        try:
            with Image.open(self.folder / region["file"]) as image:
                width, height = image.size
        except OSError as err:
            raise SampleError(f"refvg image {self.folder / region['file']}: {err}", "missing-media") from None
        x, y, w, h = region["x"], region["y"], region["width"], region["height"]
        box = [x / width * 100, y / height * 100, (x + w) / width * 100, (y + h) / height * 100]
        text = "{" + "".join(f"<{int(v)}>" for v in box) + "}"
        return _turns(minigpt_v2_instruction("refer", rng, blip_caption(region["phrase"])), text)
