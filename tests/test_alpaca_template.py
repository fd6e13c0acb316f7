"""`alpaca`: ImageBind-LLM's prompt, token-exact against LLaMA-Adapter's own data code.

`tests/data/upstream_alpaca_prompts.json` was produced by RUNNING OpenGVLab/LLaMA-Adapter 521a09d
`imagebind_LLM/data/dataset.py` (`PretrainDataset.__getitem__` 118-144, `FinetuneDataset.__getitem__` 62-96)
and `llama/utils.py::format_prompt` on the Llama tokenizers of `mmcore.testing.tokenizers` (legacy and not),
through a stub of Meta's `Tokenizer.encode` (BOS id + one call over the whole string + EOS id). Labels: the
upstream's 0 (ignored) written as -100. Text-only records are pinned from `format_prompt` with the instruction
string, since upstream's `FinetuneDataset` wraps it in a tuple (a bug not reproduced). max_words is 512 for
every case (PretrainDataset's 96 would cut the pretraining prompt of these character-level test tokens).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmcore.builtins.templates import AlpacaTemplate
from mmcore.kinds import BuildContext, ComponentConfig, Turn
from mmcore.sequence import SequenceBuilder
from mmcore.testing.tokenizers import llama_tokenizer

ORACLE = json.loads((Path(__file__).parent / "data" / "upstream_alpaca_prompts.json").read_text())
U, A = "user", "assistant"
CASES: dict[str, tuple[str | None, bool, list[tuple[str, str]]]] = {
    "pretrain-caption": ("caption", True, [(U, "<image>\nDescribe the image briefly."), (A, "A red circle.")]),
    "finetune-image": ("vqa/colour", True, [(U, "<image>\nWhat is the colour of the object?"), (A, "red")]),
    "finetune-text": (None, True, [(U, "How many shapes are there?"), (A, "two")]),
    "finetune-text-input": (None, True, [(U, "How many shapes are there?"), (U, "a red circle and a blue square"),
                                         (A, "two")]),
    "inference": (None, False, [(U, "<image>\nWhat is in this image?")]),
}


@pytest.mark.parametrize("record", ORACLE, ids=[f"{r['case']}-legacy{r['legacy']}" for r in ORACLE])
def test_ids_and_labels_equal_llama_adapter(record: dict) -> None:
    """Ids and learned positions equal ImageBind-LLM's data code (the image adds no token in adapter mode)."""
    task, train, turns = CASES[record["case"]]
    tokenizer = llama_tokenizer(record["legacy"])
    template = AlpacaTemplate(ComponentConfig(), BuildContext(name="alpaca", tokenizer=tokenizer))
    conversation = [Turn(role, text) for role, text in turns]  # type: ignore[arg-type]
    pieces = template.render(conversation, task) if train else template.generation_prompt(conversation, task)
    images = sum(text.count("<image>") for _, text in turns)
    encoded = SequenceBuilder(tokenizer, {"image": 0}, 512).encode(pieces, {"image": images}, "s", train=train)
    assert encoded.input_ids == record["ids"]
    assert encoded.labels == record["labels"]
