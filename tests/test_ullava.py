"""u-LLaVA end to end (issue 11 B1): the 7B recipe's counts, its conversation, its data (synthetic-shapes `res`
tasks, the `ullava-json` RES and salient annotations), `mmcore import ullava`, and the tiny examples training.

Counts are those of u-LLaVA's own modules built on the meta device (next-systems.md §3.2: `build_sam_vit_h`,
`UllavaForCausalLM` with Vicuna-7B-v1.1 and its 32011 tokens, OPPOMKLab/u-LLaVA 986c4fa).
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mmcore.kinds import BuildContext, Turn

EXAMPLES = Path(__file__).parents[1] / "examples"


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --- the 7B recipe ----------------------------------------------------------------------------------------------
def test_7b_recipe_counts() -> None:
    """examples/ullava-7b.toml on the meta device: every module as u-LLaVA builds it, its 32011-token vocabulary
    with [SEG] 32007 and [LOC] 32008, and each stage's trainable parameters (stage II: full finetune)."""
    from mmcore.assembly import assemble

    assembly = assemble(EXAMPLES / "ullava-7b.toml")
    model, counts = assembly.model, assembly.parameters
    seg, loc = model.heads["seg"], model.heads["loc"]
    assert (_count(seg.image_encoder), _count(seg.prompt_encoder), _count(seg.mask_decoder)) == \
        (637_026_048, 6_220, 4_058_340)
    assert _count(seg.seg_projector) == _count(loc.det_projector) == 17_830_144 and _count(loc.det_decoder) == 99_204
    assert (counts["llm"], counts["encoders.vision"], counts["projectors.vision"]) == \
        (6_738_505_728, 303_179_776, 4_198_400)
    assert sum(counts.values()) == 7_722_734_004
    assert model.llm.vocab_size == 32011 and (seg.trigger_id, loc.trigger_id) == (32007, 32008)
    assert sum(assembly.trainable["align"].values()) == 4_198_400 + 32011 * 4096  # projector + input embeddings
    assert sum(assembly.trainable["ullava"].values()) == 6_782_389_348


# --- the conversation -------------------------------------------------------------------------------------------
def test_ullava_template_is_conv_sep2() -> None:
    """`ullava` renders u-LLaVA's conv_sep2: "human" in the system prompt, USER/ASSISTANT, replies ending in </s>
    learned, the image as <img_beg><image></img_end> at the front of its turn."""
    from mmcore.builtins.byte_tokenizer import byte_level_tokenizer
    from mmcore.builtins.templates import UllavaTemplate

    template = UllavaTemplate(UllavaTemplate.Config(), BuildContext(name="ullava", tokenizer=byte_level_tokenizer()))
    (piece,) = template.render([Turn("user", "Where is the circle? <image>"),
                                Turn("assistant", "Sure. Mask: [SEG]; Location: [LOC]; [tag]circle[/tag].")])
    assert piece.text == (
        "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the human's questions. USER: <img_beg><image></img_end>\nWhere is the "
        "circle? ASSISTANT: Sure. Mask: [SEG]; Location: [LOC]; [tag]circle[/tag].</s>")
    (start, end), = piece.spans()
    assert piece.text[start:end] == " Sure. Mask: [SEG]; Location: [LOC]; [tag]circle[/tag].</s>"


@pytest.mark.parametrize("case", ["U1-nonlegacy", "U2-nonlegacy", "U3-nonlegacy", "U1-legacy", "U2-legacy",
                                  "U3-legacy"])
def test_ullava_template_is_token_exact(case: str) -> None:
    """For u-LLaVA's RES (one and two rounds) and salient conversations, ids and labels equal what u-LLaVA's own
    `preprocess_image_text` + `preprocess_sep2` give (tests/data/upstream_ullava_prompts.json: its code run on the
    offline Llama tokenizers, legacy and not, with its 11 added tokens; image patches compared as media positions)."""
    from mmcore.builtins.templates import UllavaTemplate
    from mmcore.sequence import SequenceBuilder
    from mmcore.testing.tokenizers import llama_tokenizer

    oracle = json.loads((Path(__file__).parent / "data" / "upstream_ullava_prompts.json").read_text())
    expected = oracle["cases"][case]
    tokenizer = llama_tokenizer(legacy=case.endswith("-legacy"))
    tokenizer.add_special_tokens({"additional_special_tokens": oracle["tokens"]}, replace_extra_special_tokens=False)
    template = UllavaTemplate(UllavaTemplate.Config(), BuildContext(name="ullava", tokenizer=tokenizer))
    turns = [Turn("user" if who == "human" else "assistant", text) for who, text in expected["turns"]]
    builder = SequenceBuilder(tokenizer, {"image": oracle["image_tokens"]}, 512)
    encoded = builder.encode(template.render(turns), {"image": 1}, case)
    upstream = [builder.pad_id if i == expected["image_patch_id"] else i for i in expected["input_ids"]]
    assert encoded.input_ids == upstream and encoded.labels == expected["labels"]


# --- data -------------------------------------------------------------------------------------------------------
def _shapes(tasks: list[str], size: int = 4) -> Any:
    from mmcore.builtins.datasets.shapes import SyntheticShapes

    return SyntheticShapes(SyntheticShapes.Config(size=size, tasks=tasks), BuildContext(name="shapes"))


def test_shapes_res_answers_in_ullava_format() -> None:
    """synthetic-shapes `res`: a SEG.json question about one shape, u-LLaVA's answer, its mask and pixel box;
    `res-turns`: up to 3 phrases for the same shape, one turn each, the targets repeated per turn."""
    sample = _shapes(["res"])[0]
    question, reply = (t.text for t in sample.conversation)
    assert question.startswith("<image>\n") and reply.startswith("Sure. Mask: [SEG]; Location: [LOC]; [tag]")
    box, mask = sample.targets["boxes"][0], sample.targets["masks"][0]
    ys, xs = np.nonzero(mask)
    assert (xs.min(), ys.min()) == (box[0], box[1]) and (xs.max(), ys.max()) == (box[2], box[3])
    turns = _shapes(["res-turns"])[0]
    assert len(turns.conversation) == 2 * len(turns.targets["masks"]) == 2 * len(turns.targets["boxes"])
    assert sum("<image>" in t.text for t in turns.conversation) == 1


def test_shapes_res_leaves_other_tasks_as_they_were() -> None:
    """Adding the res tasks changes no other task's data: scene 0's refer and mask samples are identical."""
    alone, mixed = _shapes(["refer", "mask"]), _shapes(["refer", "mask", "res", "res-turns"])
    for index in (0, 1):
        a, b = alone[index], mixed[index]
        assert a.conversation == b.conversation and a.targets["boxes"] == b.targets["boxes"]
        assert np.array_equal(a.targets["masks"][0], b.targets["masks"][0])


def _coco_rle(mask: np.ndarray) -> dict[str, Any]:
    from pycocotools import mask as coco_mask

    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


@pytest.fixture
def ullava_files(tmp_path: Path) -> Path:
    """u-LLaVA's annotation formats, tiny: a RES JSON (a polygon record with 4 sentences, an RLE record), a salient
    JSON (image + label PNG, object = 255), and their images."""
    from PIL import Image

    (tmp_path / "coco").mkdir()
    (tmp_path / "msra").mkdir()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / "coco" / "a.jpg")
    label = np.zeros((30, 40), dtype=np.uint8)
    label[5:15, 10:30] = 255
    Image.new("RGB", (40, 30)).save(tmp_path / "msra" / "b.jpg")
    Image.fromarray(label).save(tmp_path / "msra" / "b.png")
    rectangle = np.zeros((30, 40), dtype=bool)
    rectangle[10:20, 4:16] = True
    res = [{"image_path": "coco/a.jpg", "segmentation": [[8.0, 2.0, 20.0, 2.0, 20.0, 8.0, 8.0, 8.0]],
            "bbox": [8.0, 2.0, 12.0, 6.0], "category": "Dog", "sentences": ["s1", "s2", "s3", "s4"],
            "height": 30, "width": 40},
           {"image_path": "coco/a.jpg", "segmentation": [_coco_rle(rectangle)], "bbox": [4.0, 10.0, 12.0, 10.0],
            "category": "cat", "sentences": ["the cat"], "height": 30, "width": 40},
           {"image_path": "coco/a.jpg", "segmentation": "not a mask", "bbox": [0, 0, 1, 1], "category": "x",
            "sentences": ["x"], "height": 30, "width": 40}]
    (tmp_path / "res.json").write_text(json.dumps(res))
    (tmp_path / "salient.json").write_text(json.dumps([{"image_path": "msra/b.jpg", "label_path": "msra/b.png",
                                                        "gpt": {"reason": "It Is Red.", "tag": "Apple"}}]))
    return tmp_path


def _ullava(folder: Path, name: str, **options: Any) -> Any:
    from mmcore.builtins.datasets.ullava_json import UllavaJson

    return UllavaJson(UllavaJson.Config(path=name, image_folder=".", **options),
                      BuildContext(name="u", base_dir=folder))


def test_ullava_json_res_records(ullava_files: Path) -> None:
    """RES: polygons and RLE decode to the object's mask, bbox xywh → xyxy pixels, at most 3 sentences become
    turns (`<image>` in the first only), each answered "Sure. Mask: [SEG]; Location: [LOC]; [tag]dog[/tag].",
    with the mask and box repeated per turn."""
    from mmcore.errors import SampleError

    data = _ullava(ullava_files, "res.json")
    polygon, rle = data[0], data[1]
    assert len(polygon.conversation) == 6 and polygon.conversation[0].text.startswith("<image>\n")
    assert all("<image>" not in t.text for t in polygon.conversation[1:])
    assert polygon.conversation[1].text == "Sure. Mask: [SEG]; Location: [LOC]; [tag]dog[/tag]."
    assert polygon.targets["boxes"] == [[8.0, 2.0, 20.0, 8.0]] * 3 and len(polygon.targets["masks"]) == 3
    ys, xs = np.nonzero(polygon.targets["masks"][0])
    assert (xs.min(), ys.min(), xs.max(), ys.max()) == (8, 2, 19, 7)  # pycocotools: the polygon's pixels
    assert rle.targets["masks"][0][10:20, 4:16].all() and rle.targets["masks"][0].sum() == 120
    with pytest.raises(SampleError) as caught:
        data[2]
    assert caught.value.reason == "malformed-record"


def test_ullava_json_lines_skip_a_malformed_line(ullava_files: Path) -> None:
    """A .jsonl file with a line that is not JSON: that record is `malformed-record` (skipped and counted by the
    data path), the others read as they do from the .json array."""
    from mmcore.errors import SampleError

    records = json.loads((ullava_files / "res.json").read_text())
    lines = [json.dumps(records[0]), "{not json", json.dumps(records[1])]
    (ullava_files / "res.jsonl").write_text("\n".join(lines) + "\n")
    data, whole = _ullava(ullava_files, "res.jsonl"), _ullava(ullava_files, "res.json")
    assert len(data) == 3
    with pytest.raises(SampleError) as caught:
        data[1]
    assert caught.value.reason == "malformed-record" and "res.jsonl:2" in str(caught.value)
    assert data[2].targets["boxes"] == whole[1].targets["boxes"]


def test_ullava_json_salient_records(ullava_files: Path) -> None:
    """Salient: the mask is label == 255, the box u-LLaVA's mask2bbox ([x, y, x + w - 1, y + h - 1]); the answer
    carries the tag and the explanation; `questions = "val"` asks u-LLaVA's evaluation question."""
    sample = _ullava(ullava_files, "salient.json")[0]
    assert sample.targets["boxes"] == [[10.0, 5.0, 29.0, 14.0]] and sample.targets["masks"][0].sum() == 200
    reply = sample.conversation[1].text
    assert reply == "Sure. Mask: [SEG]; Location: [LOC]; [tag]apple[/tag]. Explanation: it is red."
    val = _ullava(ullava_files, "salient.json", questions="val")[0]
    assert [t.text for t in val.conversation] == ["<image>\nFind the salient object in the image.",
                                                  "Sure. Mask: [SEG]; Location: [LOC];"]


# --- import -----------------------------------------------------------------------------------------------------
SAM = {"preset": "vit_b", "image_size": 64, "encoder_width": 32, "encoder_depth": 1, "encoder_heads": 2,
       "global_attn_layers": [0], "prompt_dim": 32, "decoder_depth": 1, "decoder_mlp_dim": 64, "decoder_heads": 2}
TOKENS = ["[PAD]", "<image_patch>", "<video_patch>", "<img_beg>", "</img_end>", "<vid_beg>", "</vid_end>", "[SEG]",
          "[LOC]", "[tag]", "[/tag]"]


def _library_sam() -> Any:
    from functools import partial

    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    return Sam(image_encoder=ImageEncoderViT(depth=1, embed_dim=32, img_size=64, mlp_ratio=4, num_heads=2,
                                             norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), patch_size=16,
                                             qkv_bias=True, use_rel_pos=True, global_attn_indexes=(0,), window_size=14,
                                             out_chans=32),
               prompt_encoder=PromptEncoder(embed_dim=32, image_embedding_size=(4, 4), input_image_size=(64, 64),
                                            mask_in_chans=16),
               mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(
                   depth=1, embedding_dim=32, mlp_dim=64, num_heads=2), transformer_dim=32, iou_head_depth=3,
                   iou_head_hidden_dim=256)).eval()


def _mlp(*widths: int) -> torch.nn.Sequential:
    layers: list[torch.nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        layers += [torch.nn.Linear(a, b)] + ([torch.nn.ReLU()] if i < len(widths) - 2 else [])
    return torch.nn.Sequential(*layers)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A u-LLaVA stage-II output_dir as train_ullava.py writes it (tiny): config.json with llm_config + vision_config,
    u-LLaVA's tokenizer (11 added tokens), pytorch_model.bin with llm.* / visual_model.* / seg_projector.* /
    det_projector.* / det_decoder.* (and an old rotary buffer), peft's LoRA adapter; and the modules behind it."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    from mmcore.testing.tokenizers import llama_tokenizer

    root = tmp_path_factory.mktemp("ullava-ckpt")
    tokenizer = llama_tokenizer(legacy=False)
    tokenizer.add_tokens(TOKENS, special_tokens=True)
    torch.manual_seed(3)
    llm_config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                             num_attention_heads=4, max_position_embeddings=1024, bos_token_id=1, eos_token_id=2,
                             pad_token_id=0)
    vision_config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     image_size=28, patch_size=7)
    parts = {"llm": LlamaForCausalLM(llm_config).eval(), "clip": CLIPVisionModel(vision_config).eval(),
             "projector": torch.nn.Linear(32, 32), "sam": _library_sam(),
             "seg_projector": torch.nn.Sequential(*_mlp(32, 32, 32), torch.nn.Dropout(0.0)),
             "det_projector": torch.nn.Sequential(*_mlp(32, 32, 32), torch.nn.Dropout(0.0)),
             "det_decoder": _mlp(32, 32, 16, 4)}
    state = {f"llm.{k}": v for k, v in parts["llm"].state_dict().items()}
    state |= {f"llm.vision_encoder.{k}": v for k, v in parts["clip"].state_dict().items()}
    state |= {f"llm.vision_projector.{k}": v for k, v in parts["projector"].state_dict().items()}
    state |= {f"visual_model.{k}": v for k, v in parts["sam"].state_dict().items()}
    for name in ("seg_projector", "det_projector", "det_decoder"):
        state |= {f"{name}.{k}": v for k, v in parts[name].state_dict().items()}
    state["llm.model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)  # transformers 4.29 saved it
    torch.save(state, root / "pytorch_model.bin")
    lora = {f"base_model.model.model.layers.0.self_attn.{m}.lora_{ab}.weight": torch.randn(shape) * 0.3
            for m in ("q_proj", "v_proj") for ab, shape in (("A", (2, 32)), ("B", (32, 2)))}
    torch.save(lora, root / "adapter_model.bin")
    (root / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": 4, "lora_dropout": 0.05,
                                                          "target_modules": ["q_proj", "v_proj"]}))
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("[SEG]", "[LOC]")}
    llm_table = {**llm_config.to_dict(), "model_type": "ullava_core", "vision_config": vision_config.to_dict(),
                 "vision_hidden_layer": -2, "projector_type": "mlp"}
    (root / "config.json").write_text(json.dumps({"model_type": "ullava", "llm_config": llm_table, "out_dim": 32,
                                                  "seg_token_idx": ids["[SEG]"], "loc_token_idx": ids["[LOC]"]}))
    tokenizer.save_pretrained(root)
    with torch.no_grad():  # the adapter merged by hand: W + α / r · B A
        for module in ("q_proj", "v_proj"):
            layer = getattr(parts["llm"].model.layers[0].self_attn, module)
            prefix = f"base_model.model.model.layers.0.self_attn.{module}"
            layer.weight += 2.0 * lora[f"{prefix}.lora_B.weight"] @ lora[f"{prefix}.lora_A.weight"]
    return {"dir": root, **parts}


def test_import_ullava_equals_the_weights_by_hand(upstream: dict[str, Any], tmp_path: Path) -> None:
    """`mmcore import ullava DIR -o RUN` (SAM given by --sam-config): logits, the masks of the [SEG] states and the
    boxes of the [LOC] states equal CLIP (layer -2) → Linear → the LoRA-merged Llama → u-LLaVA's seg projector →
    segment_anything's modules, and det projector → det decoder, on the same weights loaded by hand."""
    from mmcore.cli import main
    from mmcore.pipeline import load

    assert main(["import", "ullava", str(upstream["dir"]), "-o", str(tmp_path / "run"), "--sam-config",
                 json.dumps(SAM | {"patch_size": 16})]) == 0
    pipeline = load(tmp_path / "run")
    sample = _shapes(["res"])[0]
    batch = pipeline.processor.batch([sample], "ullava", train=True)
    with torch.no_grad():
        out = pipeline.model(batch)
        pixels = batch.media["image"].views["encoders.vision"]
        features = upstream["clip"](pixel_values=pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
        embeds = upstream["llm"].get_input_embeddings()(batch.input_ids)
        index = batch.media_token_index
        embeds[index >= 0] = upstream["projector"](features).reshape(-1, 32)[index[index >= 0]]
        hidden = upstream["llm"].model(inputs_embeds=embeds, attention_mask=batch.attention_mask).last_hidden_state
        assert torch.allclose(out.logits, upstream["llm"].lm_head(hidden), atol=1e-5)
        before = torch.zeros_like(batch.input_ids, dtype=torch.bool)
        before[:, :-1] = batch.input_ids[:, 1:] == pipeline.tokenizer.convert_tokens_to_ids("[SEG]")
        sam, prompt = upstream["sam"], upstream["seg_projector"](hidden[before])  # (1, 32)
        sparse, dense = sam.prompt_encoder(points=None, boxes=None, masks=None)
        low, _ = sam.mask_decoder(image_embeddings=sam.image_encoder(batch.media["image"].views["heads.seg"]),
                                  image_pe=sam.prompt_encoder.get_dense_pe(),
                                  sparse_prompt_embeddings=torch.cat([sparse, prompt[:, None]], 1),
                                  dense_prompt_embeddings=dense, multimask_output=False)
        meta = batch.media["image"].meta["heads.seg"][0]
        mask = sam.postprocess_masks(low, meta["input_size"], meta["original_size"])[:, 0]
        assert torch.allclose(out.head_outputs["seg"]["masks"], mask, atol=1e-4)
        before[:, :-1] = batch.input_ids[:, 1:] == pipeline.tokenizer.convert_tokens_to_ids("[LOC]")
        box = upstream["det_decoder"](upstream["det_projector"](hidden[before]))
        assert torch.allclose(out.head_outputs["loc"]["boxes"], box, atol=1e-5)


def test_import_ullava_refuses_what_it_cannot_vouch_for(upstream: dict[str, Any], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """A SAM that is none of vit_b/l/h without --sam-config, or a folder without u-LLaVA's config, is one line (exit
    2) and writes nothing."""
    from mmcore.cli import main

    assert main(["import", "ullava", str(upstream["dir"]), "-o", str(tmp_path / "run")]) == 2
    assert "none of vit_b / vit_l / vit_h; pass --sam-config" in capsys.readouterr().err
    assert main(["import", "ullava", str(tmp_path), "-o", str(tmp_path / "run")]) == 2
    assert "no config.json" in capsys.readouterr().err and not (tmp_path / "run").exists()


# --- the tiny examples ------------------------------------------------------------------------------------------
def _short(example: str, folder: Path, steps: int) -> Path:
    """An example cut to a few steps on small data, written beside a copy of nothing else."""
    text = (EXAMPLES / example).read_text()
    text = re.sub(r"max_steps = \d+", f"max_steps = {steps}", text).replace("size = 20000", "size = 8")
    text = text.replace("batch_size = 16", "batch_size = 4").replace("size = 100", "size = 2")
    (folder / example).write_text(text)
    return folder / example


def test_tiny_ullava_trains(tmp_path: Path) -> None:
    """examples/ullava-tiny.toml, cut to 2 steps, trains the LLM, projector, seg/det projectors, mask decoder and
    box decoder on synthetic-shapes `res` (every term finite), while SAM's image encoder stays as it was."""
    from mmcore.assembly import assemble
    from mmcore.run import Run
    from mmcore.train import train

    run = Run.create(tmp_path / "run", assemble(_short("ullava-tiny.toml", tmp_path, 2)))
    before = {k: v.clone() for k, v in assemble(run.manifest_path, device="cpu").model.state_dict().items()}
    train(run.root)
    steps = [json.loads(line) for line in (run.root / "log.jsonl").read_text().splitlines() if '"step"' in line]
    assert all(np.isfinite(s[k]) for s in steps for k in s if k.startswith("heads."))
    from mmcore.pipeline import load

    after = load(run.root).model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    frozen = ("heads.seg.image_encoder.", "heads.seg.prompt_encoder.", "heads.seg.mask_decoder.iou_prediction_head.",
              "encoders.")
    assert not {k for k in changed if k.startswith(frozen)}, "a frozen part changed"
    trained = ("llm.", "projectors.vision.", "heads.seg.seg_projector.", "heads.seg.mask_decoder.transformer.",
               "heads.loc.det_projector.", "heads.loc.det_decoder.")
    for prefix in trained:
        assert any(k.startswith(prefix) for k in changed), f"nothing under {prefix} trained"


def test_mix_cabs_sam_trains_and_evaluates(tmp_path: Path) -> None:
    """examples/mix-cabs-sam.toml — a C-Abstractor feeding an LLM whose [SEG] drives the SAM head and [LOC] the box
    head — trains (both heads' losses logged) and evaluates (mask and box metrics, both modes)."""
    from mmcore.assembly import assemble
    from mmcore.eval import evaluate_run
    from mmcore.run import Run
    from mmcore.train import train

    run = Run.create(tmp_path / "run", assemble(_short("mix-cabs-sam.toml", tmp_path, 2)))
    train(run.root)
    logged = json.loads((run.root / "log.jsonl").read_text().splitlines()[0])
    assert {"heads.seg.bce", "heads.seg.dice", "heads.loc.l1", "heads.loc.giou"} <= set(logged)
    heads = evaluate_run(run.root, max_new_tokens=8)["val"]["heads"]
    assert heads["seg"]["teacher_forced"]["masks"] == 2 and heads["loc"]["free_running"]["boxes"] == 2
