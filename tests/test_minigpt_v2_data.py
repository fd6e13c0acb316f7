"""MiniGPT-v2's task-tagged data: upstream's instruction pools and text processor, synthetic-shapes' identify /
detection / grounding tasks, and the refcoco reader (refer API JSON and flattened files)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mmcore.builtins.codecs import MiniGPTBoxes
from mmcore.builtins.datasets.refcoco import Refcoco, RefcocoConfig
from mmcore.builtins.datasets.shapes import ShapesConfig, SyntheticShapes
from mmcore.builtins.instructions import MINIGPT_V2_POOLS, blip_caption
from mmcore.errors import MmcoreError, SampleError
from mmcore.kinds import BuildContext, ComponentConfig, Turn


def _shapes(**options: Any) -> SyntheticShapes:
    return SyntheticShapes(ShapesConfig.model_validate(options), BuildContext(name="shapes"))


def test_pools_are_upstream_verbatim() -> None:
    """The six pools equal the `instruction_pool` lists of MiniGPT-4 d94738a's dataset files, byte for byte."""
    # sha256 of json.dumps(pools, sort_keys=True) with the lists parsed (ast) from coco_vqa_datasets.py (vqa; equal in
    # aok_vqa, gqa, ocrvqa), caption_datasets.py (caption; equal in text_caps.py), coco_dataset.py (refer, identify;
    # refer equal in vg_dataset.py) and flickr.py (grounding, detection), run outside the repo
    digest = hashlib.sha256(json.dumps(MINIGPT_V2_POOLS, sort_keys=True).encode()).hexdigest()
    assert digest == "5447cbfb3579f9b8118a15c04a580d003df3466d03b64327dd3ec4aa39ee4ba5"


def test_blip_caption_is_upstream_pre_caption() -> None:
    """blip_caption gives BlipCaptionProcessor's output (upstream processors/blip_processors.py run as an oracle)."""
    assert blip_caption("A Red Circle.") == "a red circle"
    assert blip_caption("  What's (this)?!  ") == "what's this ?"
    assert blip_caption('man: left~side; "tall" #1*') == "man left side tall 1"
    assert blip_caption("Two  dogs...\n") == "two dogs"
    assert blip_caption(" ".join(f"w{i}" for i in range(60))) == " ".join(f"w{i}" for i in range(50))


@pytest.mark.parametrize("family", sorted(MINIGPT_V2_POOLS))
def test_every_pool_entry_renders_upstreams_prompt(family: str) -> None:
    """The llama2 template turns each pool entry (tag stripped, as a dataset writes it) into upstream's prompt:
    "[INST] " + "<Img><ImageHere></Img> {} ".format(entry) + " [/INST]", trailing spaces included."""
    from mmcore.builtins.instructions import strip_tag
    from mmcore.builtins.templates import Llama2Template
    from mmcore.testing.tokenizers import llama_tokenizer

    template = Llama2Template(ComponentConfig(), BuildContext(name="llama2", tokenizer=llama_tokenizer(legacy=False)))
    for entry in MINIGPT_V2_POOLS[family]:
        filled = entry.replace("{}", "the red circle")
        ours = strip_tag(entry).replace("{}", "the red circle")
        pieces = template.render([Turn("user", f"<image>\n{ours}"), Turn("assistant", "x")], family)
        tagged = filled if family != "caption" else f"[caption] {filled}"  # caption_datasets.py adds its tag
        # the dataset's "<Img><ImageHere></Img> {} " inside prompt_template "[INST] {} [/INST]"
        upstream = "[INST] " + f"<Img><ImageHere></Img> {tagged} " + " [/INST]"
        assert pieces[1].text == upstream.replace("<ImageHere>", "<image>"), entry


def _digest(data: SyntheticShapes) -> str:
    digest = hashlib.sha256()
    for index in range(len(data)):
        sample = data[index]
        digest.update(repr((sample.id, sample.task, [(t.role, t.text) for t in sample.conversation],
                            sample.targets.get("boxes"))).encode())
        for items in (sample.media[m] for m in sorted(sample.media)):
            for item in items:
                digest.update(np.asarray(item[0] if isinstance(item, tuple) else item).tobytes())
        if "masks" in sample.targets:
            digest.update(np.asarray(sample.targets["masks"]).tobytes())
    return digest.hexdigest()


def test_existing_shapes_tasks_are_byte_identical() -> None:
    """Adding identify / detection / grounding leaves every earlier task's samples (text, boxes, pixels, masks,
    audio) exactly as the committed dataset wrote them (digest computed with shapes.py at b3fd782)."""
    tasks = ["caption", "vqa", "refer", "mask", "audio/colour", "audiovisual/colour"]
    digest = hashlib.sha256()
    for box_format in ("honeybee", "minigpt"):
        digest.update(_digest(_shapes(size=12, tasks=tasks, box_format=box_format, max_shapes=3)).encode())
    assert digest.hexdigest() == "ed3b1ae55a7d3234ba57c5ddb729295797a7cb2c73e81f3c185cf6f6ec1c29c9"


def test_identify_detection_grounding_answer_the_picture() -> None:
    """identify names the shape in the given box; detection lists every box of the phrase ("<delim>"-joined);
    grounding puts each shape's box after its phrase — every box decodes to its target within a pixel."""
    data = _shapes(size=20, tasks=["identify", "detection", "grounding"], box_format="minigpt", max_shapes=3)
    codec = MiniGPTBoxes(ComponentConfig(), BuildContext(name="codec"))
    for index in range(len(data)):
        sample, (shapes, _) = data[index], data.scene(index // 3)
        question, answer = sample.conversation[0].text, sample.conversation[1].text
        boxes = [codec.decode(part, (64, 64)) for part in (question if sample.task == "identify" else answer)
                 .split("<delim>" if sample.task == "detection" else "</p>")[int(sample.task == "grounding"):]]
        assert len(boxes) == len(sample.targets["boxes"])
        for decoded, target in zip(boxes, sample.targets["boxes"], strict=True):
            assert decoded is not None and max(abs(a - b) for a, b in zip(decoded, target, strict=True)) <= 1.0
        if sample.task == "identify":
            assert answer == next(s.name for s in shapes if list(s.box) == sample.targets["boxes"][0])
        if sample.task == "detection":
            kind = answer.split("</p>")[0].removeprefix("<p>")
            assert sorted(sample.targets["boxes"]) == sorted(list(s.box) for s in shapes if s.kind == kind)


def test_minigpt_v2_instructions_draw_from_the_pools() -> None:
    """`instructions = "minigpt-v2"`: each question is a pool entry of its task (tag left to the template), the
    same on every read, and the scene and its targets are those of the dataset's own questions."""
    tasks = ["caption", "vqa/colour", "refer", "identify", "detection", "grounding"]
    ours = _shapes(size=8, tasks=tasks, box_format="minigpt", instructions="minigpt-v2")
    plain = _shapes(size=8, tasks=tasks, box_format="minigpt")
    from mmcore.builtins.instructions import strip_tag

    seen = set()
    for index in range(len(ours)):
        sample, again, base = ours[index], ours[index], plain[index]
        assert sample.conversation == again.conversation and sample.targets.get("boxes") == base.targets.get("boxes")
        question = sample.conversation[0].text.removeprefix("<image>\n")
        family = sample.task.split("/")[0]
        pool = [strip_tag(e).split("{}") for e in MINIGPT_V2_POOLS[family]]
        assert any(question.startswith(parts[0]) and question.endswith(parts[-1]) for parts in pool), question
        seen.add(question)
    assert len(seen) > len(tasks)  # not one entry per task


REFS = [
    {"ref_id": 7, "ann_id": 70, "image_id": 9, "category_id": 1, "split": "train",
     "sentences": [{"raw": "The Bowl, on the left!", "sent": "the bowl on the left", "sent_id": 1, "tokens": []},
                   {"raw": "left bowl", "sent": "left bowl", "sent_id": 2, "tokens": []}]},
    {"ref_id": 8, "ann_id": 80, "image_id": 9, "category_id": 1, "split": "testA",
     "sentences": [{"raw": "right cup", "sent": "right cup", "sent_id": 3, "tokens": []}]},
    {"ref_id": 9, "ann_id": 999, "image_id": 9, "category_id": 1, "split": "train", "sentences": []},
]
INSTANCES = {"images": [{"id": 9, "file_name": "COCO_train2014_000000000009.jpg", "width": 640, "height": 480}],
             "annotations": [{"id": 70, "image_id": 9, "bbox": [10.5, 20.0, 300.0, 200.0], "category_id": 1},
                             {"id": 80, "image_id": 9, "bbox": [400.0, 100.0, 100.0, 50.0], "category_id": 1}],
             "categories": [{"id": 1, "name": "bowl"}]}


@pytest.fixture
def refer_folder(tmp_path: Path) -> Path:
    """The refer API layout with refs as JSON: refcoco/refs(unc).json + refcoco/instances.json."""
    (tmp_path / "refcoco").mkdir()
    (tmp_path / "refcoco" / "refs(unc).json").write_text(json.dumps(REFS))
    (tmp_path / "refcoco" / "instances.json").write_text(json.dumps(INSTANCES))
    return tmp_path


def _refcoco(path: Path, **options: Any) -> Refcoco:
    return Refcoco(RefcocoConfig(path=str(path), **options), BuildContext(name="refcoco", base_dir=path.parent))


def test_refer_api_layout_gives_boxes_in_minigpt_format(refer_folder: Path) -> None:
    """A train ref becomes "[refer] {sentence}" → int(x / W × 100) box text (coco_dataset.py::ReferCOCODataset),
    its target the annotation's xyxy box; a ref whose annotation is missing is skipped and counted."""
    data = _refcoco(refer_folder)
    assert len(data) == 2  # the testA ref is another split
    sample = data[0]
    assert sample.conversation[1].text == "{<1><4><48><45>}" and sample.targets["boxes"] == [[10.5, 20.0, 310.5, 220.0]]
    assert sample.media["image"][0].name == "COCO_train2014_000000000009.jpg" and sample.task == "refer"
    question = sample.conversation[0].text
    assert "the bowl, on the left" in question or "left bowl" in question  # blip_caption'd expression
    with pytest.raises(SampleError) as caught:
        data[1]
    assert caught.value.reason == "malformed-record"
    assert len(_refcoco(refer_folder, split="testA")) == 1


def test_identify_gives_the_box_and_learns_the_expression(refer_folder: Path) -> None:
    """task = "identify" (InvReferCOCODataset): the box in the question, the expression as the answer."""
    sample = _refcoco(refer_folder, task="identify", sentences="each")[0]
    assert "{<1><4><48><45>}" in sample.conversation[0].text
    assert sample.conversation[1].text == "the bowl, on the left" and sample.task == "identify"


def test_pickled_refs_are_refused_with_the_conversion(refer_folder: Path) -> None:
    """refs(unc).p without its JSON is an error that never unpickles it and says how to convert it."""
    refs = refer_folder / "refcoco" / "refs(unc).json"
    refs.rename(refs.with_suffix(".p"))
    with pytest.raises(MmcoreError, match=r"a pickle, which mmcore never unpickles; convert it once"):
        _refcoco(refer_folder)


def test_minigpt_eval_file_asks_as_eval_ref(tmp_path: Path) -> None:
    """MiniGPT-v2's eval_data/refcoco_val.json records read as RefCOCOEvalData asks: "[refer] give me the location
    of {sents}", image img_id[:27].jpg, one sample per record."""
    record = {"img_id": "COCO_train2014_000000580957_4", "sents": "white dish in the top right corner",
              "bbox": [468.3, 0.91, 171.7, 116.12], "height": 428, "width": 640}
    path = tmp_path / "refcoco_val.json"
    path.write_text(json.dumps([record, {**record, "sents": "dish"}]))
    data = _refcoco(path, instructions="minigpt-v2-eval", sentences="each")
    assert len(data) == 2
    assert data[0].conversation[0].text == "<image>\ngive me the location of white dish in the top right corner"
    assert data[0].media["image"][0].name == "COCO_train2014_000000580957.jpg"
    assert data[0].conversation[1].text == "{<73><0><100><27>}"


def test_flattened_jsonl_filters_splits_and_counts_bad_lines(tmp_path: Path) -> None:
    """The common flattened JSONL: a record per ref with its sentences, split-filtered; a malformed line is a
    skipped record, never a crash."""
    lines = [json.dumps({"image": "a.jpg", "sentences": ["a", "b"], "bbox": [0, 0, 32, 16], "width": 64,
                         "height": 32, "split": "train"}),
             json.dumps({"image": "a.jpg", "sentences": ["c"], "bbox": [0, 0, 8, 8], "width": 64, "height": 32,
                         "split": "val"}),
             "{not json", json.dumps({"image": "a.jpg", "bbox": [0, 0, 1, 1]})]
    path = tmp_path / "refs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    data = _refcoco(path, sentences="each")
    assert len(data) == 4 and data[0].conversation[1].text == "{<0><0><50><50>}"
    for index in (2, 3):
        with pytest.raises(SampleError) as caught:
            data[index]
        assert caught.value.reason == "malformed-record"


# One record per upstream format, written as the upstream files hold it → (question or its end, answer, image, task)
UPSTREAM = {
    "multitask_conversation": ([{"id": "000000000009", "conversations": [
        {"from": "human", "value": "<image>\nWhat is\nthis?"}, {"from": "gpt", "value": "A bowl."},
        {"from": "human", "value": "Where is it?"}, {"from": "gpt", "value": "On the left."}]}],
        "What isthis?", "A bowl.", "COCO_train2014_000000000009.jpg", None),
    "llava_conversation": ([{"id": "000000000009", "conversations": [  # llava_dataset.py LlavaConversationDataset
        {"from": "human", "value": "What is\nthis?\n<image>"}, {"from": "gpt", "value": "A bowl."},
        {"from": "human", "value": "Where is it?"}, {"from": "gpt", "value": "On the left."}]}],
        "What isthis?", "A bowl.", "COCO_train2014_000000000009.jpg", None),
    "llava_reason": ([{"id": "000000000042", "conversations": [  # LlavaReasonDataset: as LlavaDetailDataset
        {"from": "human", "value": "<image>\nWhy Is It Wet?"}, {"from": "gpt", "value": "It Rained."},
        {"from": "human", "value": "Not read."}, {"from": "gpt", "value": "Not read."}]}],
        "why is it wet?", "It Rained.", "COCO_train2014_000000000042.jpg", None),
    "ok_vqa": ([{"question_id": 7, "question": "What Sport?", "answer": ["tennis"] * 10,  # ok_vqa_datasets.py
                 "image": "train2014/COCO_train2014_7.jpg"}], "what sport?", "tennis", "COCO_train2014_7.jpg", "vqa"),
    "llava_detail": ([{"id": "000000000009", "conversations": [
        {"from": "human", "value": "What do you see?\n<image>"}, {"from": "gpt", "value": "A Bowl."}]}],
        "what do you see?", "A Bowl.", "COCO_train2014_000000000009.jpg", None),
    "unnatural_instruction": ([{"instances": [{"instruction_with_input": "Add 2 and 3.", "constraints":
                                               "Answer with a number.", "output": "5."}]}],
                              "add 2 and 3 answer with a number", "5", None, None),
    "coco_caption": ([{"image": "val2014/COCO_val2014_1.jpg", "caption": "x", "image_id": "v"},
                      {"image": "train2014/COCO_train2014_2.jpg", "caption": "A Bowl.", "image_id": "t"}],
                     "", "a bowl", "COCO_train2014_2.jpg", "caption"),
    "textcaps_caption": ({"data": [{"image_id": "abc", "caption_str": "A Sign: STOP."}]}, "", "a sign stop",
                         "abc.jpg", "caption"),
    "coco_vqa": ([{"question_id": 1, "question": "What Colour?", "answer": ["red", "red", "red"],
                   "image": "val2014/COCO_val2014_1.jpg"}], "what colour?", "red", "COCO_val2014_1.jpg", "vqa"),
    "aok_vqa": ([{"question": "Why?", "direct_answers": ["rain"] * 10, "image": "train2017/1.jpg"}], "why?", "rain",
                "1.jpg", "vqa"),
    "gqa": ([{"image": "n1.jpg", "question": "Is it red?", "answer": "Yes"}], "is it red?", "yes", "n1.jpg", "vqa"),
    "ocrvqa": ({"123": {"imageURL": "http://x/123.jpg", "questions": ["Who wrote it?"], "answers": ["Bob"],
                        "split": 1, "title": "t", "genre": "g"},
                "456": {"imageURL": "http://x/456.jpg", "questions": ["?"], "answers": ["?"], "split": 2}},
               "who wrote it?", "bob", "123.jpg", "vqa"),
    "flickr_grounded_caption": ([{"image_id": "1000", "grounded_caption": "<p>A dog</p> {<1><2><3><4>} runs."}], "",
                                "<p>A dog</p> {<1><2><3><4>} runs.", "1000.jpg", "grounding"),
    "flickr_CaptionToPhrase": ([{"image_id": "1000", "caption": "a dog runs", "output": "<p>a dog</p> {<1><2><3><4>}"}],
                               "a dog runs", "<p>a dog</p> {<1><2><3><4>}", "1000.jpg", "detection"),
    "flickr_ObjectToPhrase": ([{"image_id": "1000", "phrase": "a dog", "bbox": "{<1><2><3><4>}"}], "a dog",
                              "<p>a dog</p> {<1><2><3><4>}", "1000.jpg", "detection"),
}


@pytest.mark.parametrize("fmt", sorted(UPSTREAM))
def test_upstream_formats_read_as_upstream_builds_them(fmt: str, tmp_path: Path) -> None:
    """Each stage-3 format gives the question, answer, image file and task its MiniGPT-v2 dataset class builds."""
    from mmcore.builtins.datasets.minigpt_v2 import MiniGPTv2Data, MiniGPTv2DataConfig

    records, question_end, answer, image, task = UPSTREAM[fmt]
    (tmp_path / "ann.json").write_text(json.dumps(records))
    config = MiniGPTv2DataConfig(format=fmt, path="ann.json", image_folder="images")
    data = MiniGPTv2Data(config, BuildContext(name=fmt, base_dir=tmp_path))
    sample = data[0]
    assert len(data) == 1 or fmt in ("multitask_conversation", "llava_conversation")
    assert sample.conversation[0].text.endswith(question_end) and sample.conversation[1].text == answer
    assert sample.task == task
    assert (sample.media["image"][0].name if image else None) == image
    if fmt in ("multitask_conversation", "llava_conversation"):
        assert [t.text for t in sample.conversation[2:]] == ["Where is it?", "On the left."]
    if fmt in ("llava_detail", "llava_reason"):
        assert len(sample.conversation) == 2  # the first exchange only


def test_visual_genome_regions_refer_in_minigpt_boxes(tmp_path: Path) -> None:
    """refvg: regions under 16384 px² from region_descriptions.json, their image from image_data.json's URL, the box
    as int(x / W × 100) (vg_dataset.py)."""
    from PIL import Image

    from mmcore.builtins.datasets.minigpt_v2 import MiniGPTv2Data, MiniGPTv2DataConfig

    (tmp_path / "VG_100K_2").mkdir()
    Image.new("RGB", (800, 600)).save(tmp_path / "VG_100K_2" / "1.jpg")
    (tmp_path / "image_data.json").write_text(json.dumps([{"image_id": 1, "width": 800, "height": 600,
                                                           "url": "https://x/rak248/VG_100K_2/1.jpg"}]))
    regions = [{"region_id": 1, "image_id": 1, "phrase": "A Red Car", "x": 40, "y": 30, "width": 100, "height": 50},
               {"region_id": 2, "image_id": 1, "phrase": "sky", "x": 0, "y": 0, "width": 200, "height": 200}]
    (tmp_path / "region_descriptions.json").write_text(json.dumps([{"id": 1, "regions": regions}]))
    data = MiniGPTv2Data(MiniGPTv2DataConfig(format="refvg", image_folder="."), BuildContext(name="vg",
                                                                                            base_dir=tmp_path))
    assert len(data) == 1
    sample = data[0]
    assert sample.conversation[1].text == "{<5><5><17><13>}" and "a red car" in sample.conversation[0].text
    assert sample.task == "refer"
