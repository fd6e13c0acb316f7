"""`refcoco`: referring-expression data (RefCOCO, RefCOCO+, RefCOCOg) for REC (`refer`) and its inverse (`identify`).

Two layouts:

* the refer API's folder (`path = "refcoco_annotations"`, as MiniGPT-v2's `coco_bbox/*.yaml` `ann_path`):
  `{path}/{dataset}/refs({split_by}).json` + `{path}/{dataset}/instances.json` (COCO: images, annotations,
  categories). One sample per ref of `split`, its box the ref's annotation (`REFER.getRefBox`). Upstream reads
  `refs(unc).p`, a pickle: mmcore never unpickles a data file, so a `.p` without its `.json` is an error that says how
  to convert it once, where the file is trusted.
* a flattened `.json` array or `.jsonl` file, one record per expression (or per ref with a list of them): MiniGPT-v2's
  `eval_scripts/eval_data/*.json` ({"img_id", "sents", "bbox", "height", "width"}; image `img_id[:27].jpg`) or the
  common form {"image" | "file_name", "sentence" | "sentences" | "expression", "bbox", "width", "height", "split"}.

Boxes are COCO `[x, y, w, h]` pixels; targets hold them as xyxy pixels. `task = "refer"` asks for the box
(`ReferCOCODataset`), `"identify"` gives the box and asks what is there (`InvReferCOCODataset`). Instructions:
`"minigpt-v2"` draws from upstream's pools with a seeded generator per sample (text through `blip_caption`),
`"minigpt-v2-eval"` is `RefCOCOEvalData`'s fixed "give me the location of {sent}". Boxes are written
`{<x1><y1><x2><y2>}` in 0–100 of the original width and height, `int(x / W × 100)` as upstream.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from mmcore.builtins.instructions import blip_caption, minigpt_v2_instruction
from mmcore.errors import MmcoreError, SampleError
from mmcore.kinds import BuildContext, ComponentConfig, Dataset, Sample, Turn

__all__ = ["Refcoco", "RefcocoConfig"]


class RefcocoConfig(ComponentConfig):
    path: str  # the refer API folder, or a flattened .json / .jsonl file (relative to the manifest)
    image_folder: str = "."  # COCO train2014 images
    dataset: str = "refcoco"  # refer API: refcoco, refcoco+, refcocog (an "inv" prefix is dropped, as upstream)
    split_by: str = "unc"  # refer API: refs(unc).json (refcocog: umd or google)
    split: str = "train"  # train, val, test, testA, testB (flattened files: records without "split" all count)
    task: Literal["refer", "identify"] = "refer"
    instructions: Literal["minigpt-v2", "minigpt-v2-eval"] = "minigpt-v2"
    sentences: Literal["one", "each"] = "one"  # one sample per ref (a seeded choice), or one per expression
    seed: int = 0


@dataclass(frozen=True)
class _Ref:
    """One referred object: its image file, expressions, COCO box and (when known) the image size."""

    sid: str
    image: str
    sentences: tuple[str, ...]
    bbox: tuple[float, float, float, float]  # x, y, w, h
    size: tuple[int, int] | None  # (width, height)


def _load_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise MmcoreError(f"refcoco {what} {path}: not UTF-8 text (byte {err.start}); re-encode it") from None
    except ValueError as err:
        raise MmcoreError(f"refcoco {what} {path}: not valid JSON ({err}); fix or regenerate the file") from None


def _split_matches(wanted: str, split: str) -> bool:
    """REFER.getRefIds: testA/testB/testC match any split holding that letter ("testAB"), test any test split."""
    if wanted in ("testA", "testB", "testC"):
        return "test" in split and wanted[-1] in split
    if wanted == "test":
        return "test" in split
    return split == wanted


def _refer_api(folder: Path, config: RefcocoConfig) -> list[Any]:
    """Refs of `split` from {folder}/{dataset}/refs({split_by}).json and instances.json."""
    root = folder / config.dataset.split("inv")[-1]
    refs_path, instances_path = root / f"refs({config.split_by}).json", root / "instances.json"
    pickled = refs_path.with_suffix(".p")
    if not refs_path.is_file():
        if pickled.is_file():
            convert = f"json.dump(pickle.load(open('{pickled}', 'rb')), open('{refs_path}', 'w'))"
            raise MmcoreError(f"refcoco {pickled}: a pickle, which mmcore never unpickles; convert it once where you "
                              f"trust the file: python -c \"import json, pickle; {convert}\"")
        raise MmcoreError(f"refcoco {refs_path}: no such file; `path` is the folder holding {config.dataset}/ (refer "
                          f"API layout) or a flattened .json/.jsonl file")
    refs, instances = _load_json(refs_path, "refs"), _load_json(instances_path, "instances")
    if not isinstance(refs, list) or not isinstance(instances, dict):
        raise MmcoreError(f"refcoco {root}: refs must be a JSON array and instances.json a COCO object")
    anns = {a.get("id"): a for a in instances.get("annotations", []) if isinstance(a, dict)}
    images = {i.get("id"): i for i in instances.get("images", []) if isinstance(i, dict)}
    out: list[Any] = []
    for number, ref in enumerate(refs):
        if isinstance(ref, dict) and not _split_matches(config.split, str(ref.get("split", ""))):
            continue
        out.append(_from_refer(ref, anns, images, f"{refs_path} ref {number}"))
    return out


def _from_refer(ref: Any, anns: dict[Any, Any], images: dict[Any, Any], where: str) -> _Ref | str:
    """A refer-API ref → _Ref, or a message (the record is skipped and counted when read)."""
    try:
        ann, image = anns[ref["ann_id"]], images.get(ref["image_id"], {})
        sentences = tuple(str(s["raw"]) for s in ref["sentences"])
        name = image.get("file_name") or f"COCO_train2014_{int(ref['image_id']):012d}.jpg"  # coco_dataset.py
        size = (int(image["width"]), int(image["height"])) if "width" in image and "height" in image else None
        return _Ref(str(ref.get("ref_id", where)), name, sentences, _bbox(ann["bbox"]), size)
    except (KeyError, TypeError, ValueError) as err:
        return f"{where}: not a refer-API ref ({type(err).__name__}: {err}); a ref has ref_id, ann_id, image_id, " \
               f"split and sentences [{{'raw': ...}}], its ann_id an annotation of instances.json"


def _bbox(value: Any) -> tuple[float, float, float, float]:
    x, y, w, h = (float(v) for v in value)
    if w <= 0 or h <= 0:
        raise ValueError(f"box {list(value)} has no area")
    return x, y, w, h


def _flat_record(record: Any, where: str, fallback_id: str) -> _Ref | str:
    """A flattened record → _Ref: MiniGPT-v2's eval_data ({img_id, sents, bbox, height, width}) or the common form."""
    try:
        if "img_id" in record and "image" not in record and "file_name" not in record:
            image = f"{str(record['img_id'])[:27]}.jpg"  # eval_ref.py: COCO_train2014_000000123456.jpg
        else:
            image = str(record.get("image") or record["file_name"])
        raw = next(record[k] for k in ("sents", "sentence", "sentences", "expression") if k in record)
        texts = [raw] if isinstance(raw, str) else [s if isinstance(s, str) else s.get("raw") or s["sent"] for s in raw]
        if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            raise ValueError("no expression text")
        size = (int(record["width"]), int(record["height"])) if "width" in record and "height" in record else None
        sid = str(record.get("id", record.get("ref_id", record.get("img_id", fallback_id))))
        return _Ref(sid, image, tuple(texts), _bbox(record["bbox"]), size)
    except (KeyError, TypeError, ValueError, StopIteration, AttributeError) as err:
        return f"{where}: not a referring record ({type(err).__name__}: {err}); a record has an image (or img_id), " \
               f"an expression (sents / sentence / sentences) and a COCO bbox [x, y, w, h]"


def _flat(path: Path, config: RefcocoConfig) -> list[Any]:
    if not path.is_file():
        raise MmcoreError(f"refcoco path {path}: no such file or folder; fix [data.datasets.*] path")
    if path.suffix == ".jsonl":
        records: list[Any] = []
        for number, line in enumerate(path.read_bytes().splitlines(), start=1):
            try:
                if line.strip():
                    records.append(json.loads(line.decode("utf-8")))
            except ValueError as err:  # UnicodeDecodeError is a ValueError
                records.append(f"{path}:{number}: malformed JSON line ({err})")
    else:
        records = _load_json(path, "file")
        if not isinstance(records, list):
            raise MmcoreError(f"refcoco {path}: expected a JSON array of records")
    out: list[Any] = []
    for number, record in enumerate(records, start=1):
        if isinstance(record, dict) and "split" in record and not _split_matches(config.split, str(record["split"])):
            continue
        where = f"{path} record {number}"
        out.append(record if isinstance(record, str) else _flat_record(record, where, f"{path.stem}-{number}"))
    return out


class Refcoco(Dataset):
    """Referring expressions → `refer` (box answers) or `identify` (name answers) samples."""

    Config: ClassVar[type[ComponentConfig]] = RefcocoConfig

    def __init__(self, config: RefcocoConfig, ctx: BuildContext) -> None:
        super().__init__(config, ctx)
        path, self.folder = ctx.path(config.path), ctx.path(config.image_folder)
        refs = _refer_api(path, config) if path.is_dir() else _flat(path, config)
        self.items: list[tuple[Any, int | None]] = []  # (ref or message, sentence index or None: a seeded choice)
        for ref in refs:
            if config.sentences == "each" and isinstance(ref, _Ref):
                self.items += [(ref, k) for k in range(len(ref.sentences))]
            else:
                self.items.append((ref, None))

    @classmethod
    def data_paths(cls, config: Any) -> dict[str, str]:
        return {"path": config.path, "image_folder": config.image_folder}

    @classmethod
    def tiny_config(cls) -> dict[str, Any]:
        return {"path": str(Path(__file__).with_name("refcoco_example.jsonl"))}

    def __len__(self) -> int:
        return len(self.items)

    def media_key(self, index: int) -> str | None:
        ref = self.items[index][0]
        return ref.image if isinstance(ref, _Ref) else None

    def _size(self, ref: _Ref) -> tuple[int, int]:
        if ref.size is not None:
            return ref.size
        from PIL import Image

        try:
            with Image.open(self.folder / ref.image) as image:  # the header only
                return image.size
        except (OSError, ValueError) as err:
            raise SampleError(f"refcoco image {self.folder / ref.image}: {err}", "missing-media") from None

    def __getitem__(self, index: int) -> Sample:
        ref, choice = self.items[index]
        if isinstance(ref, str):
            raise SampleError(ref, "malformed-record")
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, index, zlib.crc32(cfg.task.encode())])
        sentence = ref.sentences[choice if choice is not None else int(rng.integers(len(ref.sentences)))]
        (width, height), (x, y, w, h) = self._size(ref), ref.bbox
        box = (x, y, x + w, y + h)
        text = "{" + "".join(f"<{int(v / s * 100)}>" for v, s in zip(box, (width, height) * 2, strict=True)) + "}"
        if cfg.task == "identify":  # InvReferCOCODataset: answer text_processor(text_processor(raw))
            question, answer = minigpt_v2_instruction("identify", rng, text), blip_caption(blip_caption(sentence))
        elif cfg.instructions == "minigpt-v2-eval":  # coco_caption.py::RefCOCOEvalData: the raw expression
            question, answer = f"give me the location of {sentence}", text
        else:
            question, answer = minigpt_v2_instruction("refer", rng, blip_caption(sentence)), text
        return Sample(id=f"{ref.sid}#{choice}" if choice is not None else ref.sid,
                      conversation=[Turn("user", f"<image>\n{question}"), Turn("assistant", answer)],
                      media={"image": [self.folder / ref.image]}, targets={"boxes": [list(box)]}, task=cfg.task)

