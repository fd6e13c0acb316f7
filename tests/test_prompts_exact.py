"""Token-exact prompts: for the same conversation and tokenizer, our ids and label masks equal what the
upstream systems' own preprocessing code produces.

`tests/data/upstream_prompts.json` was produced by RUNNING the upstream code (not a re-implementation) on
the tokenizers of `mmcore.testing.tokenizers` — a Llama `LlamaTokenizer` with legacy true and false, and
a byte-level BPE — each image as one -200 id. Each record names the upstream function and lines:

* LLaVA c121f04: `llava/train/train.py` preprocess_multimodal (308-329), preprocess_v1 (414-497),
  preprocess_plain (588-607); `llava/mm_utils.py` tokenizer_image_token (185-204);
  `llava/eval/model_vqa_loader.py` (39-58) for the inference prompt.
* MiniGPT-4 d94738a: `minigpt4/models/minigpt_base.py` forward (273-308), preparing_embedding (211-271),
  prompt_wrap (83-135), tokenize_conversation (166-209), get_context_emb (68-81);
  `datasets/datasets/coco_vqa_datasets.py` (81-91), `multitask_conversation.py` (43-75);
  `conversation/conversation.py` CONV_VISION_minigptv2 + `eval_scripts/eval_ref.py` prepare_texts.
* Honeybee 68a8d84: `pipeline/data_utils/templates/templatizer.py` templatize (45-94);
  `honeybee/tokenization_honeybee.py` encode_prompt (72-167); `datasets/llava_dataset.py` load_data (39-105).

Where upstream LLaVA's length-based label code meets a "tokenization mismatch" (multi-turn samples with
the non-legacy Llama tokenizer, whose `preprocess_v1` correction over-counts here, and with a tokenizer
that adds no BOS) it masks the whole sample; the ids are still pinned, and our labels must learn exactly
the replies.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mmcore.builtins.templates import HoneybeeTemplate, Llama2Template, PlainTemplate, VicunaV1Template
from mmcore.kinds import BuildContext, ComponentConfig, Turn
from mmcore.sequence import IGNORE_INDEX, SequenceBuilder
from mmcore.testing.tokenizers import byte_level_bpe, llama_tokenizer

ORACLE = json.loads((Path(__file__).parent / "data" / "upstream_prompts.json").read_text())
TOKENIZERS = {"llama-legacy": lambda: llama_tokenizer(legacy=True),
              "llama-nonlegacy": lambda: llama_tokenizer(legacy=False), "byte-level-bpe": byte_level_bpe}
TEMPLATES = {"vicuna_v1": VicunaV1Template, "plain": PlainTemplate, "llama2": Llama2Template,
             "honeybee": HoneybeeTemplate}
U, A = "user", "assistant"
THREE_ROUNDS = [(U, "How many shapes are there?"), (A, "two"), (U, "Is it left or right?"), (A, "left")]
# case → (template, task, training?, conversation) — the same conversations the oracle gave upstream
CASES: dict[str, tuple[str, str | None, bool, list[tuple[str, str]]]] = {
    "L1": ("vicuna_v1", None, True, [(U, "<image>\nWhat is the colour of the object?"), (A, "red")]),
    "L2": ("vicuna_v1", None, True, [(U, "What is in this image?\n<image>"), (A, "A red circle."), *THREE_ROUNDS]),
    "L3": ("vicuna_v1", None, True, [(U, "<image>"), (A, "A blue square."), (U, "What colour is it?"), (A, "blue")]),
    "L4": ("vicuna_v1", None, True, [(U, "What is a circle?"), (A, "A round shape."), (U, "And a square?"),
                                     (A, "Four equal sides.")]),
    "L5": ("plain", None, True, [(U, "<image>\nDescribe this image."), (A, "A red circle and a blue square.")]),
    "L-infer": ("vicuna_v1", None, False, [(U, "<image>\nWhat is the colour of the object?")]),
    "M1": ("llama2", "vqa/colour", True, [(U, "<image>\nWhat is the colour of the object?"), (A, "red")]),
    "M2": ("llama2", None, True, [(U, "<image>\nWhat is in\nthis image?"), (A, "A red circle."), *THREE_ROUNDS]),
    "M3": ("llama2", "refer", False, [(U, "<image>\ngive me the location of the red circle")]),
    "H1": ("honeybee", "vqa", True, [(U, "<image>\nWhat is the colour of the object?"), (A, "red")]),
    "H2": ("honeybee", "vqa", True, [(U, "<image>\nWhat is the colour of the object?"), (A, "red"),
                                     (U, "How many shapes are there?"), (A, "two")]),
    "H3": ("honeybee", "caption", True, [(U, "<image>\nDescribe this image."), (A, "A red circle.")]),
    "H4": ("honeybee", None, True, [(U, "<image>\nWhat is in this image?"), (A, "A red circle."),
                                    (U, "How many shapes are there?"), (A, "two")]),
    "H5": ("honeybee", "vqa", False, [(U, "<image>\nWhat is the colour of the object?")]),
}


def _ours(record: dict[str, Any]) -> tuple[list[int], list[int], Any]:
    name, task, train, turns = CASES[record["case"]]
    tokenizer = TOKENIZERS[record["tokenizer"]]()
    template = TEMPLATES[name](ComponentConfig(), BuildContext(name=name, tokenizer=tokenizer))
    conversation = [Turn(role, text) for role, text in turns]  # type: ignore[arg-type]
    pieces = template.render(conversation, task) if train else template.generation_prompt(conversation, task)
    images = sum(text.count("<image>") for role, text in turns if role == U)
    encoded = SequenceBuilder(tokenizer, {"image": 1}, 4096).encode(pieces, {"image": images}, "s", train=train)
    ids = list(encoded.input_ids)
    for _, start, _ in encoded.media_spans:
        ids[start] = -200  # LLaVA's IMAGE_TOKEN_INDEX: one image, as the oracle writes it
    return ids, encoded.labels, tokenizer


@pytest.mark.parametrize("record", ORACLE, ids=[f"{r['case']}-{r['tokenizer']}" for r in ORACLE])
def test_ids_and_labels_equal_upstream(record: dict[str, Any]) -> None:
    """Ids equal the upstream code's; labels too, or, where upstream masks a sample on a tokenization
    mismatch, ours learn exactly the replies."""
    ids, labels, tokenizer = _ours(record)
    assert ids == record["ids"], f"{record['tokens']}"
    if record["labels"] is None:  # an inference prompt: nothing learned
        assert all(label == IGNORE_INDEX for label in labels)
    elif any(label != IGNORE_INDEX for label in record["labels"]):
        assert labels == record["labels"]
    else:
        replies = [text for role, text in CASES[record["case"]][3] if role == A]
        learned = tokenizer.decode([t for t in labels if t != IGNORE_INDEX])
        assert learned.replace(" ", "") == "".join(f"{reply}</s>" for reply in replies).replace(" ", "")


def test_oracle_covers_every_case_and_tokenizer() -> None:
    """The pinned data holds every case for all three tokenizers (a regenerated file cannot drop one)."""
    assert {(r["case"], r["tokenizer"]) for r in ORACLE} == {(c, t) for c in CASES for t in TOKENIZERS}


def test_legacy_and_nonlegacy_differ_after_a_special_token() -> None:
    """The Llama tokenizers behave as Llama's: legacy puts `▁` before the text after `</s>`, non-legacy not."""
    legacy, modern = llama_tokenizer(legacy=True), llama_tokenizer(legacy=False)
    assert legacy.tokenize("two</s>USER")[-1] == "▁USER" and modern.tokenize("two</s>USER")[-1] == "USER"


def test_tokenizers_round_trip_through_save_pretrained(tmp_path: Path) -> None:
    """The test tokenizers save and reload (AutoTokenizer) with identical ids."""
    from transformers import AutoTokenizer

    text = "A chat USER: <image>\nWhat is the colour? ASSISTANT: red</s>USER: two"
    for name, build in TOKENIZERS.items():
        tokenizer = build()
        tokenizer.save_pretrained(tmp_path / name)
        assert AutoTokenizer.from_pretrained(tmp_path / name)(text).input_ids == tokenizer(text).input_ids
