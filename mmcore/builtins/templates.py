"""The upstream systems' prompt formats, rendered and split into tokenizer calls exactly as their code does.

* `plain`, `vicuna_v1`: LLaVA `llava/conversation.py` + `llava/train/train.py` (`preprocess_multimodal`,
  `preprocess_plain`, `preprocess_v1`) + `llava/mm_utils.py::tokenizer_image_token` (upstream-systems.md
  §1.5, §1.6).
* `llama2`: MiniGPT-v2 `minigpt4/models/minigpt_base.py` (`prompt_wrap`, `tokenize_conversation`,
  `forward`, `get_context_emb`), its datasets' instruction strings and `CONV_VISION_minigptv2` (§3.1, §3.2).
* `alpaca`: ImageBind-LLM (LLaMA-Adapter `imagebind_LLM/data/dataset.py`, `llama/utils.py::format_prompt`)
  (upstream-systems.md §4.5).
* `honeybee`, `honeybee-coarse`: Honeybee `pipeline/data_utils/templates/templatizer.py::templatize`,
  `templates/dev.py` and `honeybee/tokenization_honeybee.py::encode_prompt` (§2.3, §2.4).

Upstream quirks that change tokens are reproduced on purpose and marked "Quirk".
"""

from __future__ import annotations

import re
from typing import ClassVar

from mmcore.kinds import Piece, Template, Turn, split_media

__all__ = ["AlpacaTemplate", "HoneybeeCoarseTemplate", "HoneybeeTemplate", "Llama2Template", "PlainTemplate",
           "UllavaTemplate", "VicunaV1Template"]

IMAGE = "<image>"


def _media_only(text: str) -> str:
    return split_media(text)[0]


class PlainTemplate(Template):
    """LLaVA `conv_llava_plain` (pretraining): "<image>" + caption + "\\n"; caption and newline are learned.

    `preprocess_plain` replaces the user turn by the bare placeholder (here: the turn's placeholders) and
    tokenises the whole string with `tokenizer_image_token`, so the caption is one call after the image.
    LLaVA has no inference prompt for `plain`; generation renders what pretraining saw, the image alone.
    """

    separator: ClassVar[str] = "\n"  # conv_llava_plain sep

    def render(self, conversation: list[Turn], task: str | None = None) -> list[Piece]:
        media = "".join(_media_only(t.text) for t in conversation if t.role == "user")
        reply = next((t.text for t in conversation if t.role == "assistant"), "")
        text = media + reply + self.separator
        return [Piece(text, learn=((len(media), len(text)),), special_tokens=True)]

    def generation_prompt(self, conversation: list[Turn], task: str | None = None) -> list[Piece]:
        return [Piece("".join(_media_only(t.text) for t in conversation if t.role == "user"), special_tokens=True)]

    def stop_strings(self) -> list[str]:
        return [self.separator]


def llava_multimodal(text: str) -> str:
    """LLaVA `preprocess_multimodal`: a turn's image placeholder moves to the front as "<image>\\n" + text,
    and the result is stripped (a turn that is only "<image>" stays "<image>"). Turns with several
    placeholders (which LLaVA would merge into one) are left as they are."""
    if text.count(IMAGE) != 1:
        return text
    return (IMAGE + "\n" + text.replace(IMAGE, "").strip()).strip()


class VicunaV1Template(Template):
    """LLaVA `conv_vicuna_v1` (SeparatorStyle.TWO, sep " ", sep2 "</s>"), one `tokenizer_image_token` call.

    "{system} USER: {q} ASSISTANT: {a}</s>USER: {q2} ASSISTANT: {a2}</s>"; learned: " {a}</s>" of every
    reply — `preprocess_v1` masks each round up to and including "ASSISTANT:".
    """

    system: ClassVar[str] = ("A chat between a curious user and an artificial intelligence assistant. "
                             "The assistant gives helpful, detailed, and polite answers to the user's "
                             "questions.")
    roles: ClassVar[tuple[str, str]] = ("USER", "ASSISTANT")
    sep: ClassVar[str] = " "
    sep2: ClassVar[str] = "</s>"

    def _head(self, conversation: list[Turn]) -> str:
        given = [t.text for t in conversation if t.role == "system"]
        return (given[0] if given else self.system) + self.sep

    def _user(self, text: str) -> str:
        return llava_multimodal(text)

    def render(self, conversation: list[Turn], task: str | None = None) -> list[Piece]:
        text, spans = self._head(conversation), []
        for turn in conversation:
            if turn.role == "user":
                text += f"{self.roles[0]}: {self._user(turn.text)}{self.sep}"
            elif turn.role == "assistant":
                text += f"{self.roles[1]}:"
                start = len(text)
                text += f" {turn.text}{self.sep2}"
                spans.append((start, len(text)))
        return [Piece(text, learn=tuple(spans), special_tokens=True)]

    def generation_prompt(self, conversation: list[Turn], task: str | None = None) -> list[Piece]:
        """LLaVA eval (`model_vqa_loader.py`): the conversation, then "ASSISTANT:" with no reply."""
        text = self._head(conversation)
        for turn in conversation:
            if turn.role == "user":
                text += f"{self.roles[0]}: {self._user(turn.text)}{self.sep}"
            elif turn.role == "assistant":
                text += f"{self.roles[1]}: {turn.text}{self.sep2}"
        return [Piece(text + f"{self.roles[1]}:", special_tokens=True)]

    def stop_strings(self) -> list[str]:
        return [self.sep2]


class UllavaTemplate(VicunaV1Template):
    """u-LLaVA's `conv_sep2` (OPPOMKLab/u-LLaVA `utils/conversation.py`, stage II and inference): LLaVA's vicuna v1
    layout, but its system prompt says "human" where LLaVA's says "user", and each image is written as its
    `preprocess_image_text` writes it — `<img_beg>` + the image's tokens + `</img_end>` (u-LLaVA replaces the
    `<image_patch>` embeddings in place; here the projector's tokens fill the span). Declare `<img_beg>` /
    `</img_end>` as the LLM's `special_tokens` (examples/ullava-7b.toml) so each is one token, as upstream's."""

    system: ClassVar[str] = ("A chat between a curious human and an artificial intelligence assistant. "
                             "The assistant gives helpful, detailed, and polite answers to the human's "
                             "questions.")

    def _user(self, text: str) -> str:
        return llava_multimodal(text).replace(IMAGE, f"<img_beg>{IMAGE}</img_end>")


# MiniGPT-v2 task identifiers (upstream-systems.md §3.2), keyed by our task names' first part.
MINIGPT_TASK_TAGS = {"vqa": "[vqa]", "caption": "[caption]", "refer": "[refer]", "identify": "[identify]",
                     "grounding": "[grounding]", "detection": "[detection]"}


class Llama2Template(Template):
    """MiniGPT-v2's LLaMA-2 chat format: finetune config (`chat_template: True`, `end_sym: "</s>"`).

    Training (`preparing_embedding` + `forward`): BOS by id; the first question
    "[INST] <Img><image></Img> [task] {q}  [/INST]" (the dataset's "<Img><ImageHere></Img> {} " inside
    `prompt_template` "[INST] {} [/INST]", so two spaces; `multitask_conversation.py` removes the first
    question's newlines); each answer "{a}</s>" tokenised on its own and learned; each later question
    "<s>[INST] {q}  [/INST]" tokenised on its own (`tokenize_conversation`) and masked. Text-only samples:
    "[INST] {q} [/INST]". The task tag comes from the sample's task ("vqa/colour" → "[vqa]").

    Inference (`CONV_VISION_minigptv2` + `eval_scripts/eval_ref.py::prepare_texts` +
    `get_context_emb`): "<s>[INST] <Img><image></Img> {q} [/INST]", the first call with special tokens.
    Quirk: that call adds BOS and also reads the literal "<s>" as BOS, so the prompt starts with two.
    """

    prompt_template: ClassVar[str] = "[INST] {} [/INST]"

    def _tag(self, task: str | None) -> str:
        tag = MINIGPT_TASK_TAGS.get((task or "").split("/")[0])
        return f"{tag} " if tag else ""

    def _first(self, text: str, task: str | None) -> str:
        media, question = split_media(text)
        question += text[len(text.rstrip(" ")):]  # Quirk: caption pool entries ending in " " keep it (3 spaces)
        question = self._tag(task) + question.replace("\n", "")
        if not media:
            return self.prompt_template.format(question)
        return self.prompt_template.format(f"<Img>{media}</Img> {question} ")

    def render(self, conversation: list[Turn], task: str | None = None) -> list[Piece]:
        pieces, first = [Piece.bos()], True
        for turn in conversation:
            if turn.role == "user":
                text = self._first(turn.text, task) if first else self.bos_text + self.prompt_template.format(
                    turn.text + " ")  # Quirk: multitask_conversation.py appends " " → two spaces
                pieces.append(Piece(text))
                first = False
            elif turn.role == "assistant":
                pieces.append(Piece(turn.text + self.eos_text, learn=True))
        return pieces

    def generation_prompt(self, conversation: list[Turn], task: str | None = None) -> list[Piece]:
        roles = (f"{self.bos_text}[INST] ", " [/INST]")  # CONV_VISION_minigptv2 roles, sep ""
        text, first = "", True
        for turn in conversation:
            if turn.role == "user":
                media, question = split_media(turn.text)
                question = self._tag(task) + question if first else question
                message = f"<Img>{media}</Img> {question}" if media else question
                text += roles[0] + message
                first = False
            elif turn.role == "assistant":
                text += roles[1] + turn.text.strip()
        return [Piece(text + roles[1], special_tokens=True)]

    def answer(self, generated: str) -> str:
        """`minigpt_base.generate`: cut at "</s>", drop "<s>", keep what follows the last "[/INST]"."""
        return generated.split(self.eos_text)[0].replace(self.bos_text, "").split("[/INST]")[-1].strip()


# Honeybee `pipeline/data_utils/constants.py` and `templates/dev.py` (pattern_dict "honeybee_default").
HONEYBEE_SYSTEM = "The following is a conversation between a curious human and AI assistant."
HONEYBEE_SYSTEM_DETAIL = "The assistant gives helpful, detailed, and polite answers to the user's questions."
HUMAN, AI = "\nHuman: ", "\nAI: "  # tokenization_honeybee._HUMAN / _AI: chunk boundaries, never learned
NO_PROMPT = "[NO_PROMPT]"
# Coarse-grained: one (instruction, input, target) triple per task family, Honeybee's own strings.
HONEYBEE_COARSE: dict[str, tuple[str, str, str]] = {
    "vqa": ("", "Answer the question using a single word or phrase. {question}", "{answer}"),
    "refer": ("", "Provide the bounding box coordinate of the region this sentence describes. {question}",
              "{answer}"),  # Honeybee "loc" / "refcoco": the phrase is our question
    "caption": (NO_PROMPT, "", "{answer}"),  # Honeybee "captioning": <bos> <image> caption <eos>
}
# Fine-grained: one triple per dataset (Honeybee's final recipe, its Table 5c: fine beats coarse when datasets
# share inputs but differ in answers). These are the synthetic-shapes tasks' own, in Honeybee's shape; a task
# without an entry falls back to its family's coarse triple.
HONEYBEE_FINE: dict[str, tuple[str, str, str]] = {
    "vqa/colour": ("", "Answer the question about an object's colour with a single colour word. {question}",
                   "{answer}"),
    "vqa/shape": ("", "Answer the question about an object's shape with a single shape word. {question}",
                  "{answer}"),
    "vqa/count": ("", "Answer the counting question with a single number. {question}", "{answer}"),
    "vqa/spatial": ("", "Answer the question about where objects lie with a single word. {question}", "{answer}"),
}


class HoneybeeTemplate(Template):
    """Honeybee's `Human:`/`AI:` format with fine-grained (per-dataset) instruction triples.

    Task data (`templatize`): "{system} {instruction}\\nHuman: <image>\\nHuman: {input}\\nAI: {target}
    [\\nHuman: {input2}\\nAI: {target2}]" — one pair per packed turn. Conversations without a task (LLaVA
    data, `llava_dataset.load_data`): the detailed system message, each turn after its role pattern, an
    image at a turn's start as "<image>\\nHuman: ". `encode_prompt` splits the text at "<image>", "\\nHuman: "
    and "\\nAI: ", tokenises each chunk on its own, learns the chunk after "\\nAI: " and appends EOS (learned)
    to it; BOS first, by id. Captioning ("[NO_PROMPT]"): <bos> <image> caption <eos>.
    """

    granularity: ClassVar[str] = "fine"

    def pattern(self, task: str | None) -> tuple[str, str, str] | None:
        """The (instruction, input, target) triple for `task`; None for conversations without a task."""
        if task is None:
            return None
        if self.granularity == "fine" and task in HONEYBEE_FINE:
            return HONEYBEE_FINE[task]
        return HONEYBEE_COARSE.get(task.split("/")[0], ("", "{question}", "{answer}"))

    def _text(self, conversation: list[Turn], task: str | None, prompt_only: bool) -> str:
        turns = [t for t in conversation if t.role != "system"]
        pattern = self.pattern(task)
        if pattern is None:
            given = [t.text for t in conversation if t.role == "system"]
            text = given[0] if given else f"{HONEYBEE_SYSTEM} {HONEYBEE_SYSTEM_DETAIL}"
            for turn in turns:
                text += HUMAN + _llava_honeybee(turn.text) if turn.role == "user" else AI + turn.text
            return text + (AI if prompt_only else "")
        instruction, input_pattern, target_pattern = pattern
        media = "".join(_media_only(t.text) for t in turns if t.role == "user")
        if instruction == NO_PROMPT:
            reply = "" if prompt_only else next((t.text for t in turns if t.role == "assistant"), "")
            return f"{NO_PROMPT} {media} {target_pattern.replace('{answer}', reply)}"
        text = " ".join(p for p in (HONEYBEE_SYSTEM, instruction) if p)
        if media:
            text += HUMAN + media
        for turn in turns:
            if turn.role == "user":
                text += HUMAN + input_pattern.replace("{question}", split_media(turn.text)[1])
            else:
                text += AI + target_pattern.replace("{answer}", turn.text)
        return text + (AI if prompt_only else "")

    def _pieces(self, text: str, prompt_only: bool) -> list[Piece]:
        pieces = [Piece.bos()]
        if text.startswith(f"{NO_PROMPT} "):  # encode_prompt's special case
            media, _, caption = text[len(NO_PROMPT) + 1 :].partition(" ")
            pieces.append(Piece(media))
            return pieces if prompt_only else [*pieces, Piece(caption, learn=True), Piece.eos(learn=True)]
        chunks = [c for c in re.split(f"({re.escape(HUMAN)}|{re.escape(AI)})", text) if c]
        for index, chunk in enumerate(chunks):
            answer = index > 0 and chunks[index - 1] == AI and chunk not in (HUMAN, AI)
            pieces.append(Piece(chunk, learn=answer))
            if answer:
                pieces.append(Piece.eos(learn=True))
        return pieces

    def render(self, conversation: list[Turn], task: str | None = None) -> list[Piece]:
        return self._pieces(self._text(conversation, task, prompt_only=False), prompt_only=False)

    def generation_prompt(self, conversation: list[Turn], task: str | None = None) -> list[Piece]:
        """HoneybeeProcessor: the prompt ends with "\\nAI: " and gets no EOS (`no_eos=True`)."""
        return self._pieces(self._text(conversation, task, prompt_only=True), prompt_only=True)


def _llava_honeybee(text: str) -> str:
    """`llava_dataset.load_data`: the turn is chunked at "<image>\\n" / "\\n<image>"; such a chunk becomes
    "<image>\\nHuman: " when it is the first chunk, else "\\nHuman: <image>"."""
    chunks = [c for c in re.split("(<image>\n|\n<image>)", text) if c]
    return "".join((IMAGE + HUMAN if i == 0 else HUMAN + IMAGE) if c in ("<image>\n", "\n<image>") else c
                   for i, c in enumerate(chunks))


class HoneybeeCoarseTemplate(HoneybeeTemplate):
    """`honeybee` with coarse-grained templates: one shared triple per task family."""

    granularity: ClassVar[str] = "coarse"


# LLaMA-Adapter imagebind_LLM/llama/utils.py::format_prompt (PROMPT_DICT) and the pretraining instruction of
# data/dataset.py::PretrainDataset.
ALPACA_NO_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately completes "
                   "the request.\n\n### Instruction:\n{instruction}\n\n### Response:")
ALPACA_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further context. "
                "Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}"
                "\n\n### Input:\n{input}\n\n### Response:")
CAPTION_INSTRUCTION = "Generate caption of this image"


class AlpacaTemplate(Template):
    """ImageBind-LLM's Alpaca format: one instruction, one response.

    Training (`PretrainDataset` / `FinetuneDataset.__getitem__`): `tokenizer.encode(prompt + answer, bos=True,
    eos=True)` — ONE sentencepiece call over prompt and answer, BOS and EOS by id; the prompt's tokens are masked,
    the answer and EOS learned. The prompt is `format_prompt(instruction, input)`: the first user turn's text
    (its media placeholders taken out and put in front, where an adapter projector adds no tokens) is the
    instruction, a second user turn before the reply is Alpaca's `input`; captioning samples (task "caption")
    get the pretraining instruction "Generate caption of this image", as `PretrainDataset` does for every
    image-text pair. Only the first exchange is used, as upstream's finetuning data code does.
    Inference (`LLaMA_adapter.generate`): `encode(format_prompt(q), bos=True, eos=False)`.

    Upstream's `FinetuneDataset` turns a text-only record's instruction into a tuple
    (`format_instruction = data_item['instruction'],`), so its prompt reads "('…',)"; that bug is not
    reproduced. Nor is the literal "<image>" that LLaVA-Instruct's questions keep in upstream's instruction.
    """

    def _prompt(self, conversation: list[Turn], task: str | None) -> tuple[str, str]:
        """(media placeholders, the Alpaca prompt up to "### Response:")."""
        users: list[Turn] = []
        for turn in conversation:
            if turn.role == "assistant":
                break
            if turn.role == "user":
                users.append(turn)
        media = "".join(split_media(t.text)[0] for t in users)
        instruction = CAPTION_INSTRUCTION if task == "caption" else split_media(users[0].text)[1] if users else ""
        given = split_media(users[1].text)[1] if len(users) > 1 else ""
        if given:
            return media, ALPACA_INPUT.format_map({"instruction": instruction, "input": given})
        return media, ALPACA_NO_INPUT.format_map({"instruction": instruction})

    def render(self, conversation: list[Turn], task: str | None = None) -> list[Piece]:
        media, prompt = self._prompt(conversation, task)
        answer = next((t.text for t in conversation if t.role == "assistant"), "")
        text = media + prompt + answer
        return [Piece.bos(), Piece(text, learn=((len(media) + len(prompt), len(text)),)), Piece.eos(learn=True)]

    def generation_prompt(self, conversation: list[Turn], task: str | None = None) -> list[Piece]:
        media, prompt = self._prompt(conversation, task)
        return [Piece.bos(), Piece(media + prompt)]
