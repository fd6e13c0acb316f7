"""`ullava-json`: u-LLaVA's segmentation annotations (OPPOMKLab/u-LLaVA 986c4fa), as multi-turn samples with
mask and box targets in u-LLaVA's answer format.

* RES (`dataset/datasets/res_dataset.py::ResDataset`; RefCOCO/+/g, RefCLEF, the "ullava" JSONs): a record
  `{"image_path", "segmentation", "bbox": [x, y, w, h], "category", "sentences": [...], "height", "width"}`.
  `segmentation` is COCO polygons (a list of coordinate lists) or RLE (a dict or a list of dicts, `counts`
  compressed or not), decoded with pycocotools; several parts are summed into one mask (> 0). Up to
  `sentences_per_item` sentences (3; u-LLaVA draws them without replacement) become that many turns, each a
  question from `SEG.json` with `<class>` = the sentence (`<image>` only in the first) and the answer
  `Sure. Mask: [SEG]; Location: [LOC]; [tag]{category}[/tag].`; every turn repeats the mask and the box.
* Salient (`salient_seg_dataset.py::SalientSegDataset`; MSRA-10K, MSRA-B): `{"image_path", "label_path",
  "gpt": {"reason", "tag"}}`; the mask is `label == 255`, the box pycocotools' `toBbox` of it as u-LLaVA's
  `DetToolBox.mask2bbox` ([x, y, x + w - 1, y + h - 1]); one turn from `SS.json`, answer `… [tag]{tag}[/tag].
  Explanation: {reason}`.

`questions = "val"` asks u-LLaVA's evaluation questions instead (`ValResDataset`: "Output the segmentation mask of
the {sentence} in the image.", 10 sentences; `ValSalientSegDataset`: "Find the salient object in the image.").
Boxes are xyxy pixels of the image (`bbox` xywh + w, h as `DetToolBox.xywh2xyxy`); the box head normalises them
to u-LLaVA's padded square. The question is drawn per record from its own generator (seed, index), so a record
reads the same in any worker. A record that is not this shape is a `SampleError` (skipped and counted).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from mmcore.builtins.datasets.llava_json import read_records
from mmcore.errors import SampleError
from mmcore.kinds import BuildContext, ComponentConfig, Dataset, Sample, Turn

__all__ = ["ANSWER_TOKENS", "SEG_QUESTIONS", "SS_QUESTIONS", "UllavaJson", "UllavaJsonConfig", "answer",
           "decode_segmentation", "question"]

# u-LLaVA dataset/templates/SEG.json (the referring questions) and SS.json (salient), 986c4fa
SEG_QUESTIONS = (
    "<image> Can you segment and locate the <class> in this image?",
    "<image> Please segment and locate the <class> in this image.",
    "<image> What is <class> in this image? Please respond with segmentation mask and the bounding box.",
    "<image> What is <class> in this image? Please output mask and bbox.",
    "<image> Find the <class> in the picture.",
    "<image> Can you help me to find the <class> in the image?",
    "<image> Output the mask and bounding box (bbox) of the <class> in the image?",
    "<image> Look at the image, segment and locate the <class> in the picture.",
    "<image> Where is <class>?",
)
SS_QUESTIONS = (
    "<image> Can you segment the salient object in this image and explain why?",
    "<image> Segment the main part in this image. Then give the reason",
    "<image> What is salient one in this image? Please respond with segmentation mask and tell me why.",
    "<image> What is salient part in this image? Please output segmentation mask and give me the reason.",
    "<image> Find the salient object in the picture.",
    "<image> What makes the image stand out? Please explain.",
    "<image> Output the mask of the salient part in the image and the reason.",
    "<image> Look at the image, segment the main object in the picture and explain.",
)
VAL_RES_QUESTION = "<image>\nOutput the segmentation mask of the <class> in the image."  # ValResDataset
VAL_SALIENT_QUESTION = "<image>\nFind the salient object in the image."  # ValSalientSegDataset
ANSWER_TOKENS = ["[SEG]", "[LOC]", "[tag]", "[/tag]"]  # u-LLaVA models/__init__.py, added in stage II


def question(template: str, sentence: str = "", first: bool = True) -> str:
    """A SEG.json / SS.json template as u-LLaVA's data code turns it into a user turn: `<class>` replaced,
    `<image>` dropped after the first turn (`build_sample`), then moved to the front as "<image>\\n"
    (`base_dataset.py::preprocess_image_text`)."""
    text = template.replace("<class>", sentence)
    if not first:
        return text.replace("<image>", "")
    return "<image>\n" + text.replace("<image>", "").strip() if "<image>" in text else text


def answer(tag: str | None, reason: str | None = None) -> str:
    """`Sure. Mask: [SEG]; Location: [LOC]; [tag]{tag}[/tag].` (+ ` Explanation: {reason}` for salient);
    u-LLaVA's validation salient answer has no tag (`tag=None`)."""
    if tag is None:
        return "Sure. Mask: [SEG]; Location: [LOC];"
    text = f"Sure. Mask: [SEG]; Location: [LOC]; [tag]{tag.lower()}[/tag]."
    return f"{text} Explanation: {reason.lower()}" if reason is not None else text


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """COCO polygons or RLE (dict or list of dicts; compressed `counts` as str/bytes, or uncompressed lists)
    → (H, W) bool, the union of its parts (u-LLaVA sums them). An empty list → an empty mask."""
    from pycocotools import mask as coco_mask

    if isinstance(segmentation, list) and not segmentation:
        return np.zeros((height, width), dtype=bool)
    if isinstance(segmentation, dict):
        segmentation = [segmentation]
    if all(isinstance(part, list) for part in segmentation):  # polygons
        rles = coco_mask.frPyObjects(segmentation, height, width)
    elif all(isinstance(part, dict) and "counts" in part for part in segmentation):
        rles = []
        for part in segmentation:
            if isinstance(part["counts"], list):  # uncompressed RLE
                rles.append(coco_mask.frPyObjects(part, height, width))
            else:
                counts = part["counts"]
                rles.append({"size": part["size"], "counts": counts.encode() if isinstance(counts, str) else counts})
    else:
        raise ValueError("segmentation is neither COCO polygons nor RLE")
    with warnings.catch_warnings():  # pycocotools 2.0.11 under numpy 2: a DeprecationWarning about `copy`
        warnings.simplefilter("ignore", DeprecationWarning)
        decoded = coco_mask.decode(rles)  # (H, W, n) uint8
    return np.asarray(decoded.reshape(height, width, -1).sum(axis=2) > 0)


def mask_box(mask: np.ndarray) -> list[float]:
    """u-LLaVA `DetToolBox.mask2bbox`: pycocotools' toBbox [x, y, w, h] → [x, y, x + w - 1, y + h - 1]."""
    from pycocotools import mask as coco_mask

    x, y, w, h = (float(v) for v in coco_mask.toBbox(coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))))
    return [x, y, x + w - 1, y + h - 1]


class UllavaJsonConfig(ComponentConfig):
    path: str  # u-LLaVA's .json array or .jsonl of RES or salient records, relative to the manifest
    image_folder: str = "."  # u-LLaVA's vis_root: image_path and label_path are relative to it
    format: Literal["auto", "res", "salient"] = "auto"  # auto: by the record's keys (segmentation / label_path)
    questions: Literal["train", "val"] = "train"  # val: u-LLaVA's evaluation question, no template drawn
    sentences_per_item: int | None = Field(None, ge=1)  # default: 3 (train, ResDataset) or 10 (val, ValResDataset)
    portion: float = Field(1.0, gt=0, le=1)  # u-LLaVA `portion`: keep the first fraction of records
    seed: int = 42  # u-LLaVA BaseDataset seed (questions and sentences drawn per record from (seed, index))


class UllavaJson(Dataset):
    """u-LLaVA's RES and salient annotations → `Sample`s with `masks` and `boxes` targets (one per turn)."""

    Config: ClassVar[type[ComponentConfig]] = UllavaJsonConfig
    config: UllavaJsonConfig

    def __init__(self, config: UllavaJsonConfig, ctx: BuildContext) -> None:
        super().__init__(config, ctx)
        self.path = ctx.path(config.path)
        self.folder = ctx.path(config.image_folder)
        records = read_records(self.path, "ullava-json")
        self.records = records[: max(1, int(len(records) * config.portion))]

    @classmethod
    def data_paths(cls, config: Any) -> dict[str, str]:
        return {"path": config.path, "image_folder": config.image_folder}

    @classmethod
    def special_tokens(cls, config: Any) -> list[str]:
        return list(ANSWER_TOKENS)

    @classmethod
    def tiny_config(cls) -> dict[str, Any]:
        return {"path": str(Path(__file__).with_name("ullava_example.jsonl"))}

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample:
        record = self.records[index]
        where = f"{self.path} record {index}"
        if isinstance(record, str):  # a malformed .jsonl line (read_records)
            raise SampleError(record, "malformed-record")
        if not isinstance(record, dict):
            raise SampleError(f"{where}: a {type(record).__name__}, not an object", "malformed-record")
        kind = self.config.format
        if kind == "auto":
            kind = "salient" if "label_path" in record else "res"
        rng = np.random.default_rng([self.config.seed, index])
        try:
            return self._salient(record, index, rng) if kind == "salient" else self._res(record, index, rng)
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise SampleError(f"{where}: not a u-LLaVA {kind} record ({type(err).__name__}: {err}); see the "
                              f"ullava-json record formats in the README", "malformed-record") from None

    def _res(self, record: dict[str, Any], index: int, rng: np.random.Generator) -> Sample:
        height, width = int(record["height"]), int(record["width"])
        mask = decode_segmentation(record["segmentation"], height, width)
        x, y, w, h = (float(v) for v in record["bbox"])
        box = [x, y, x + w, y + h]  # DetToolBox.xywh2xyxy
        sentences = [str(s) for s in record["sentences"]]
        if not sentences:
            raise ValueError("no sentences")
        limit = self.config.sentences_per_item or (10 if self.config.questions == "val" else 3)
        if len(sentences) > limit:  # ResDataset: np.random.choice(sentences, n, replace=False)
            sentences = [sentences[int(i)] for i in rng.choice(len(sentences), limit, replace=False)]
        turns = []
        for number, sentence in enumerate(sentences):
            template = VAL_RES_QUESTION if self.config.questions == "val" else \
                SEG_QUESTIONS[int(rng.integers(len(SEG_QUESTIONS)))]
            turns += [Turn("user", question(template, sentence, first=number == 0)),
                      Turn("assistant", answer(str(record["category"])))]
        return Sample(str(record.get("id", f"{self.path.name}#{index}")), turns,
                      {"image": [self.folder / str(record["image_path"])]},
                      {"masks": [mask] * len(sentences), "boxes": [box] * len(sentences)}, task="res")

    def _salient(self, record: dict[str, Any], index: int, rng: np.random.Generator) -> Sample:
        from PIL import Image

        label_path = self.folder / str(record["label_path"])
        try:
            with Image.open(label_path) as label:
                array = np.asarray(label.convert("L") if label.mode in ("RGB", "RGBA") else label)
        except FileNotFoundError:
            raise SampleError(f"{self.path} record {index}: label file missing ({label_path})",
                              "missing-media") from None
        except OSError as err:
            raise SampleError(f"{self.path} record {index}: label could not be read ({err})", "corrupt-media") from None
        mask = array == 255  # MSRA-10K, MSRA-B: background 0, object 255
        if self.config.questions == "val":
            turns = [Turn("user", VAL_SALIENT_QUESTION), Turn("assistant", answer(None))]
        else:
            gpt = record["gpt"]
            template = SS_QUESTIONS[int(rng.integers(len(SS_QUESTIONS)))]
            turns = [Turn("user", question(template)), Turn("assistant", answer(str(gpt["tag"]), str(gpt["reason"])))]
        return Sample(str(record.get("id", f"{self.path.name}#{index}")), turns,
                      {"image": [self.folder / str(record["image_path"])]},
                      {"masks": [mask], "boxes": [mask_box(mask)]}, task="salient")
