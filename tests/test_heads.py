"""Heads through the whole product (issue 11 B1): special tokens, targets as tensors with rows, the rule that decides
which samples feed a head, losses through the dtype policy and in the run log, predictions for generated triggers
(batched = batch 1), `mmcore generate`'s PNG, and head metrics in `mmcore eval` (teacher-forced and free-running)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mmcore.kinds import Sample, Turn

SAM = {"preset": "vit_b", "image_size": 64, "encoder_width": 32, "encoder_depth": 1, "encoder_heads": 2,
       "global_attn_layers": [0], "prompt_dim": 32, "decoder_depth": 1, "decoder_mlp_dim": 64, "decoder_heads": 2}
SEG, LOC, EOS = 260, 261, 2  # the byte-level tokenizer's first added ids (heads register in manifest order)
ALTERNATE = {"sequence_bias": {(SEG, LOC): 50.0, (LOC, SEG): 50.0}}  # after one trigger, the other


def _table(name: str, values: dict[str, Any]) -> str:
    from mmcore.manifest._toml import toml_value

    return f"[{name}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in values.items())


def heads_manifest(llm: Path, clip: Path, steps: int = 2, tasks: tuple[str, ...] = ("res",)) -> str:
    """A tiny CLIP + MLP + Llama with u-LLaVA's two heads, trained on synthetic-shapes in u-LLaVA's format."""
    return f"""seed = 0

[model]
max_length = 512

[model.llm]
type = "hf-causal-lm"
source = "{llm}"

[model.encoders.vision]
type = "clip"
source = "{clip}"

[model.projectors.vision]
type = "mlp"
depth = 2

{_table("model.heads.seg", {"type": "sam-mask", **SAM})}
[model.heads.loc]
type = "box-decoder"
out_dim = 16

[data]
num_workers = 0

[data.datasets.res]
type = "synthetic-shapes"
size = 16
image_size = 32
tasks = {json.dumps(list(tasks))}

[data.datasets.val]
type = "synthetic-shapes"
split = "val"
size = 3
image_size = 32
tasks = ["res", "refer", "res-turns"]

[[stages]]
name = "seg"
trainable = ["llm", "projectors", "heads"]
template = "llama2"
datasets = ["res"]
lr = 1e-3
batch_size = 4
max_steps = {steps}
log_every = 1

[eval]
datasets = ["val"]
batch_size = 3
max_new_tokens = 4
"""


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny Llama whose saved generation config lets greedy decoding emit only [SEG] and [LOC] (so the untrained
    model answers with triggers), and a tiny CLIP — both in transformers' own format."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, GenerationConfig, LlamaConfig, LlamaForCausalLM

    from mmcore.builtins.byte_tokenizer import byte_level_tokenizer

    root = tmp_path_factory.mktemp("heads-models")
    torch.manual_seed(0)
    CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     image_size=28, patch_size=7)).save_pretrained(root / "clip")
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=260, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=4, max_position_embeddings=512, bos_token_id=1,
                                         eos_token_id=2, pad_token_id=0))
    llama.generation_config = GenerationConfig(suppress_tokens=[i for i in range(264) if i not in (SEG, LOC)],
                                               bos_token_id=1, eos_token_id=2, pad_token_id=0)
    llama.save_pretrained(root / "llama")
    byte_level_tokenizer().save_pretrained(root / "llama")
    return {"llama": root / "llama", "clip": root / "clip"}


@pytest.fixture(scope="module")
def run(saved: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny heads model, assembled and trained for two steps with `mmcore train`'s own code."""
    from mmcore.assembly import assemble
    from mmcore.run import Run
    from mmcore.train import train

    folder = tmp_path_factory.mktemp("heads-run")
    (folder / "m.toml").write_text(heads_manifest(saved["llama"], saved["clip"]))
    Run.create(folder / "run", assemble(folder / "m.toml"))
    train(folder / "run")
    return folder / "run"


@pytest.fixture(scope="module")
def pipeline(run: Path) -> Any:
    from mmcore.pipeline import load

    return load(run)


def _shapes(tasks: list[str], size: int = 3, split: str = "val") -> Any:
    from mmcore.builtins.datasets.shapes import SyntheticShapes
    from mmcore.kinds import BuildContext

    return SyntheticShapes(SyntheticShapes.Config(split=split, size=size, image_size=32, tasks=tasks),
                           BuildContext(name="shapes"))


def _images(count: int) -> list[Any]:
    return [_shapes(["res"], count)[i].media["image"][0] for i in range(count)]


# --- tokens and data ------------------------------------------------------------------------------------------
def test_answer_tokens_are_single_special_tokens(pipeline: Any) -> None:
    """[SEG] and [LOC] (the heads' triggers) and [tag] / [/tag] (u-LLaVA's answer format, declared by the dataset)
    are registered: one id each, after the byte vocabulary, heads first."""
    tokenizer = pipeline.tokenizer
    ids = [tokenizer.convert_tokens_to_ids(t) for t in ("[SEG]", "[LOC]", "[tag]", "[/tag]")]
    assert ids == [260, 261, 262, 263]
    assert tokenizer("[tag]circle[/tag]", add_special_tokens=False)["input_ids"][0] == 262
    assert pipeline.model.declared_tokens == ["[SEG]", "[LOC]", "[tag]", "[/tag]"]


def test_new_token_rows_are_the_mean_of_the_old(saved: dict[str, Path], tmp_path: Path) -> None:
    """The rows assembly adds for the special tokens start as the mean of the pretrained rows (the core's rule)."""
    from mmcore.assembly import assemble

    (tmp_path / "m.toml").write_text(heads_manifest(saved["llama"], saved["clip"]))
    llm = assemble(tmp_path / "m.toml", device="cpu").model.llm
    rows = llm.model.get_input_embeddings().weight
    assert rows.shape[0] == 264
    assert torch.allclose(rows[260:], rows[:260].mean(0, keepdim=True).expand(4, -1))


def test_targets_are_tensors_with_their_rows(pipeline: Any) -> None:
    """The data path turns each sample's masks and boxes into one TargetBatch per kind — masks padded with their
    own sizes, boxes float xyxy pixels — with the batch row of each; `Batch.to` moves them."""
    samples = [_shapes(["res-turns"])[0], _shapes(["res"])[1]]
    batch = pipeline.processor.batch(samples, "llama2", train=True)
    masks, boxes = batch.targets["masks"], batch.targets["boxes"]
    turns = len(samples[0].targets["masks"])
    assert masks.sample_index.tolist() == [0] * turns + [1] and boxes.sample_index.tolist() == [0] * turns + [1]
    assert masks.values.dtype == torch.uint8 and masks.sizes is not None and masks.sizes.tolist()[0] == [32, 32]
    assert boxes.values.dtype == torch.float32 and boxes.values[0].tolist() == samples[0].targets["boxes"][0]
    moved = batch.to("meta")
    assert moved.targets["masks"].values.is_meta and moved.targets["boxes"].sample_index.is_meta


def _seg_sample(reply: str, masks: int) -> Sample:
    image = _images(1)[0]
    return Sample("s", [Turn("user", "<image>\nSegment it."), Turn("assistant", reply)], {"image": [image]},
                  {"masks": [np.zeros((32, 32), dtype=bool)] * masks})


@pytest.mark.parametrize(("reply", "masks", "reason"), [
    ("Sure. Mask: [SEG]; and [SEG].", 1, "trigger-without-target"),
    ("Sure. Mask: [SEG].", 0, "trigger-without-target"),
    ("Sure. Mask: [SEG].", 2, "target-without-trigger"),
])
def test_a_trigger_and_its_targets_must_pair(pipeline: Any, reply: str, masks: int, reason: str) -> None:
    """A sample whose reply holds a head's trigger needs exactly one target per trigger; otherwise it is a
    SampleError with the reason (skipped and counted in training and eval), never a crash or a silent zero loss."""
    from mmcore.errors import SampleError

    with pytest.raises(SampleError) as caught:
        pipeline.processor.prepare(_seg_sample(reply, masks), "llama2", train=True)
    assert caught.value.reason == reason


def _seg_without_mask(folder: Path) -> Any:
    """A llava-json dataset: record r0's reply holds [SEG] but the record has no mask; r1's reply has no trigger."""
    from mmcore.builtins.datasets.llava_json import LlavaJson
    from mmcore.kinds import BuildContext

    _images(1)[0].save(folder / "a.png")
    records = [{"id": f"r{i}", "image": "a.png", "conversations": [
        {"from": "human", "value": "<image>\nSegment it."}, {"from": "gpt", "value": reply}]}
        for i, reply in enumerate(["Sure. Mask: [SEG].", "A shape."])]
    (folder / "d.json").write_text(json.dumps(records))
    return LlavaJson(LlavaJson.Config(path="d.json"), BuildContext(name="d", base_dir=folder))


def test_training_data_skips_and_counts_them(pipeline: Any, tmp_path: Path) -> None:
    """In the data workers a llava-json record whose reply holds [SEG] (it has no targets) is skipped and counted as
    trigger-without-target; the other records of the batch train."""
    from mmcore.data import StageData

    data = _seg_without_mask(tmp_path)
    stage = StageData(pipeline.processor, {"d": data}, [("d", 0), ("d", 1)], "llama2")
    loaded = stage.collate([stage[0], stage[1]])
    assert loaded.skipped == {"trigger-without-target": 1} and loaded.batch is not None
    assert loaded.batch.sample_ids == ["r1"]


def test_eval_skips_and_counts_them(pipeline: Any, tmp_path: Path) -> None:
    """`mmcore eval` with head metrics: the teacher-forced pass skips a record whose reply holds [SEG] without a mask
    (counted by reason under teacher_forced_skipped); its text answer is still scored."""
    from collections import Counter

    from mmcore.builtins.codecs import HoneybeeBoxes
    from mmcore.eval._evaluate import evaluate
    from mmcore.eval._heads import HeadScores
    from mmcore.kinds import BuildContext, ComponentConfig

    data = _seg_without_mask(tmp_path)
    skipped: Counter[str] = Counter()
    codec = HoneybeeBoxes(ComponentConfig(), BuildContext(name="codec"))
    scores = HeadScores.of(pipeline.model)
    assert scores is not None
    done = evaluate(pipeline, data, "llama2", codec, batch_size=2, max_new_tokens=2, skipped=skipped, heads=scores)
    assert not skipped and [r.sample_id for r in done] == ["r0", "r1"]
    assert scores.result()["teacher_forced_skipped"] == {"trigger-without-target": 1}


def test_a_trigger_cut_by_max_length_skips_the_sample(pipeline: Any) -> None:
    """When truncation cuts a reply's trigger off, its target has no trigger: skipped as target-without-trigger."""
    from mmcore.errors import SampleError

    long = "Sure. " + "x" * 600 + " Mask: [SEG]."
    with pytest.raises(SampleError) as caught:
        pipeline.processor.prepare(_seg_sample(long, 1), "llama2", train=True)
    assert caught.value.reason == "target-without-trigger" and "cut off by max_length" in str(caught.value)


def test_a_bad_target_is_skipped(pipeline: Any) -> None:
    """A mask that is not the image's size, or a box with x2 < x1, is a SampleError `bad-target`."""
    from mmcore.errors import SampleError

    sample = _seg_sample("Sure. Mask: [SEG].", 0)
    sample.targets = {"masks": [np.zeros((10, 32), dtype=bool)]}
    with pytest.raises(SampleError, match="mask target 0 has shape"):
        pipeline.processor.prepare(sample, "llama2", train=True)


def test_refer_boxes_without_a_trigger_train_the_lm_only(pipeline: Any) -> None:
    """synthetic-shapes `refer` carries `boxes` for the text-box metric; its reply has no [LOC], so it feeds no head:
    no targets in the batch, no head loss, the LM loss alone."""
    batch = pipeline.processor.batch([_shapes(["refer"])[0]], "llama2", train=True)
    assert batch.targets == {}
    out = pipeline.model(batch)
    assert out.head_losses == {} and torch.equal(out.loss, out.lm_loss)


# --- training ---------------------------------------------------------------------------------------------------
def test_each_loss_term_is_logged(run: Path) -> None:
    """RUN/log.jsonl carries the LM term and every weighted head term on its own; they add up to the loss."""
    steps = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if '"step"' in line]
    first = steps[0]
    terms = {k: v for k, v in first.items() if k == "lm" or k.startswith("heads.")}
    assert set(terms) == {"lm", "heads.seg.bce", "heads.seg.dice", "heads.loc.l1", "heads.loc.giou"}
    assert sum(terms.values()) == pytest.approx(first["loss"], rel=1e-5)


def test_heads_run_in_their_dtype_policy(pipeline: Any) -> None:
    """Under bf16 autocast the SAM head still computes in fp32 (pip SAM's get_dense_pe fails in bf16)."""
    batch = pipeline.processor.batch([_shapes(["res"])[0]], "llama2", train=True)
    model = pipeline.model
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch)
    head = model.heads["seg"]  # the LLM ran its matmuls in bf16; the head gave exactly its fp32 result on its states
    positions = head.positions(batch.input_ids)
    with torch.no_grad():
        full = head(out.hidden_states[positions].float(), positions.nonzero()[:, 0], batch.media, batch.targets)
    assert torch.equal(out.head_outputs["seg"]["masks"], full.predictions["masks"])
    assert all(torch.equal(out.head_losses[f"seg.{k}"], v) for k, v in full.losses.items())


# --- generation -------------------------------------------------------------------------------------------------
def test_answers_stay_strings_unless_heads_are_asked_for(pipeline: Any) -> None:
    """`answer(...)` returns strings as before; `return_heads=True` returns Answers with the same text."""
    image = _images(1)[0]
    text = pipeline.answer("Segment the red circle.", image, max_new_tokens=4)
    answer = pipeline.answer("Segment the red circle.", image, max_new_tokens=4, return_heads=True)
    assert isinstance(text, str) and answer.text == text and str(answer) == text


def test_generated_triggers_give_masks_and_boxes(pipeline: Any) -> None:
    """Every generated [SEG] gives a mask at the image's size and every [LOC] a pixel box, in answer order."""
    image = _images(1)[0]
    answer = pipeline.answer("Segment the red circle.", image, max_new_tokens=5, return_heads=True, **ALTERNATE)
    assert len(answer.masks) == answer.text.count("[SEG]") and len(answer.boxes) == answer.text.count("[LOC]")
    assert answer.masks and answer.boxes
    assert all(mask.shape == (32, 32) and mask.dtype == bool for mask in answer.masks)


def test_batched_head_predictions_equal_batch_one(pipeline: Any) -> None:
    """A left-padded batch of prompts of different lengths gives each answer the masks and boxes it gets alone."""
    images = _images(3)
    prompts = ["Segment it.", "Can you segment and locate the green square in this image?", "Where?"]
    batched = pipeline.answer(prompts, images, max_new_tokens=6, return_heads=True, **ALTERNATE)
    assert any(a.masks for a in batched) and any(a.boxes for a in batched)
    for prompt, image, together in zip(prompts, images, batched, strict=True):
        alone = pipeline.answer(prompt, image, max_new_tokens=6, return_heads=True, **ALTERNATE)
        assert alone.text == together.text
        assert all(np.array_equal(a, b) for a, b in zip(alone.masks, together.masks, strict=True))
        assert np.allclose(alone.boxes, together.boxes, atol=1e-4)


def test_triggers_after_the_end_are_not_read(pipeline: Any) -> None:
    """Only the generated tokens up to a row's first EOS count: a [SEG] after it (padding) gives no mask."""
    batch = pipeline.processor.batch([Sample("a", [Turn("user", "<image>\nSegment it.")], {"image": _images(1)})],
                                     "llama2", train=False)
    model = pipeline.model
    with torch.no_grad():
        embeds = model.embed(batch)
        heads = model._generated_heads(batch, embeds, torch.tensor([[SEG, LOC, EOS, SEG, LOC]]), EOS)
    assert heads["seg"]["sample_index"].tolist() == [0] and heads["loc"]["sample_index"].tolist() == [0]


def test_a_trigger_in_the_prompt_is_not_an_answers(pipeline: Any) -> None:
    """Only generated positions count: a [SEG] written in the prompt adds no mask to the answer."""
    image = _images(1)[0]
    plain = pipeline.answer("Segment it.", image, max_new_tokens=4, return_heads=True, **ALTERNATE)
    quoted = pipeline.answer("Segment it. [SEG] [SEG]", image, max_new_tokens=4, return_heads=True, **ALTERNATE)
    assert len(quoted.masks) == quoted.text.count("[SEG]") and len(plain.masks) == plain.text.count("[SEG]")


def test_generate_writes_the_masks_and_boxes(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`mmcore generate RUN --image IMG --prompt …` prints the answer and the path of a PNG with them drawn."""
    from PIL import Image

    from mmcore.cli import main

    image = tmp_path / "scene.png"
    _images(1)[0].save(image)
    assert main(["generate", str(run), "--image", str(image), "--prompt", "segment the red circle",
                 "--max-new-tokens", "4"]) == 0
    written = run / "generate" / "scene.png"
    assert f"wrote {written}" in capsys.readouterr().out
    from mmcore.eval._draw import draw_overlays
    from mmcore.pipeline import load

    answer = load(run).answer("segment the red circle", image, max_new_tokens=4, return_heads=True)
    with Image.open(written) as drawn:
        assert drawn.size == (32, 32)
        assert np.array_equal(np.asarray(drawn.convert("RGB")), np.asarray(draw_overlays(image, answer.overlays)))


def test_overlays_are_drawn_in_ullavas_colours() -> None:
    """A predicted mask is blended half-and-half with u-LLaVA's (133, 131, 230), a predicted box outlined in orange,
    references in green; pixels outside stay as they were; a mask of another size is not drawn."""
    from PIL import Image

    from mmcore.eval._draw import PREDICTED_BOX, PREDICTED_MASK, REFERENCE, draw_overlays
    from mmcore.kinds import Overlay

    image = Image.new("RGB", (20, 10), (100, 100, 100))
    mask = np.zeros((10, 20), dtype=bool)
    mask[2:4, 2:5] = True
    predicted = [Overlay("mask", mask, "seg"), Overlay("box", (10.0, 1.0, 15.0, 6.0), "loc"),
                 Overlay("mask", np.ones((5, 5), dtype=bool), "seg")]
    reference = [Overlay("box", (0.0, 6.0, 4.0, 9.0), "reference")]
    pixels = np.asarray(draw_overlays(image, predicted, reference))
    assert tuple(pixels[3, 3]) == tuple(int(0.5 * 100 + 0.5 * c) for c in PREDICTED_MASK)
    assert tuple(pixels[1, 12]) == PREDICTED_BOX and tuple(pixels[6, 10]) == PREDICTED_BOX
    assert tuple(pixels[3, 12]) == (100, 100, 100)  # inside the box, not on its outline
    assert tuple(pixels[9, 2]) == REFERENCE and tuple(pixels[0, 19]) == (100, 100, 100)
    assert np.asarray(draw_overlays(image, predicted, reference, scale=3)).shape == (30, 60, 3)


# --- evaluation -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def evaluated(run: Path) -> dict[str, Any]:
    """`mmcore eval RUN` with the run's settings (batches of 3)."""
    from mmcore.eval import evaluate_run

    return dict(evaluate_run(run)["val"]["heads"])


def test_eval_reports_head_metrics_both_ways(run: Path, evaluated: dict[str, Any]) -> None:
    """`mmcore eval` reports each head's metric teacher-forced (u-LLaVA's protocol) and free-running; the refer
    sample feeds no head; the sheet is drawn."""
    result = evaluated
    for mode in ("teacher_forced", "free_running"):
        assert set(result["seg"][mode]) == {"ciou", "giou", "masks"}
        assert set(result["loc"][mode]) == {"prec@0.5", "miou", "boxes"}
    references = sum(len(s.targets["masks"]) for s in (_shapes(["res", "refer", "res-turns"])[i] for i in range(9))
                     if s.task != "refer")
    assert result["seg"]["teacher_forced"]["masks"] == references
    assert (run / "eval" / "val" / "samples.png").is_file()  # drawn by draw_overlays (tested below)


def test_batched_eval_equals_batch_one(run: Path, evaluated: dict[str, Any]) -> None:
    """Every head metric, in both modes, is the same evaluated in batches of 3 or one sample at a time."""
    from mmcore.eval import evaluate_run

    assert evaluate_run(run, batch_size=1)["val"]["heads"] == evaluated


def test_a_reference_without_a_generated_trigger_is_a_miss(pipeline: Any) -> None:
    """Free-running: a reference mask the answer generated no [SEG] for counts as an empty mask (IoU 0), a box as a
    miss; generated triggers beyond the reference are counted, not scored."""
    from mmcore.eval._heads import HeadScores, free_running

    samples = [_shapes(["res"])[0], _shapes(["res"])[1]]
    batch = pipeline.processor.batch(samples, "llama2", train=False)
    none = {"seg": pipeline.model.heads["seg"](torch.zeros(0, 32), torch.zeros(0, dtype=torch.long), batch.media,
                                               None).predictions}
    scores = HeadScores.of(pipeline.model)
    assert scores is not None
    free_running(pipeline, samples, none, scores)
    assert scores.free["seg"].result()["giou"] == 0.0 and scores.free["seg"].result()["masks"] == 2
    two = torch.zeros(3, 32)
    rows = torch.tensor([0, 0, 1])
    extra = {"loc": pipeline.model.heads["loc"](two, rows, batch.media, None).predictions}
    free_running(pipeline, samples, extra, scores)
    assert scores.extra["loc"] == 1 and scores.free["loc"].result()["boxes"] == 2
