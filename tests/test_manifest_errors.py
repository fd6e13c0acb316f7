"""Bad manifests: each exits 2 with one line naming the culprit, and writes nothing."""
# ruff: noqa: E501  (TOML fixtures keep their inline tables on one line)

from __future__ import annotations

from pathlib import Path

import pytest

from mmcore.cli import main

LLM = """
[model.llm]
type = "hf-causal-lm"
tokenizer = "byte-level"
config = { vocab_size = 260, hidden_size = 32, intermediate_size = 64, num_hidden_layers = 1, num_attention_heads = 4, max_position_embeddings = 256 }
"""
ENCODER = """
[model.encoders.vision]
type = "clip"
config = { hidden_size = 32, intermediate_size = 64, num_hidden_layers = 2, num_attention_heads = 4, image_size = 28, patch_size = 14 }
"""
PROJECTOR = """
[model.projectors.vision]
type = "mlp"
"""
GOOD = LLM + ENCODER + PROJECTOR
DATA = '[data.datasets.shapes]\ntype = "synthetic-shapes"\nsize = 4\nimage_size = 28\n'
STAGE = '[[stages]]\nname = "a"\ntrainable = ["projectors"]\n'

# (id, manifest text, substrings the one-line error must contain)
CASES = [
    ("unknown-top-key", "modle = 1\n" + GOOD, ["modle", "unknown key", "did you mean 'model'"]),
    ("typo-type", GOOD.replace('type = "mlp"', 'type = "mpl"'), ["unknown projector type 'mpl'", "'mlp'"]),
    ("unavailable-type", GOOD.replace('type = "mlp"', 'type = "bind-network"'),  # blocked below: every first-party
     ["'mmcore-plugin-bind-network' provides it"]),                              # plugin is installed now
    ("unknown-component-key", GOOD.replace('type = "mlp"', 'type = "mlp"\ndepht = 2'),
     ["[model.projectors.vision] depht", "did you mean 'depth'"]),
    ("wrong-value-type", GOOD.replace('type = "mlp"', 'type = "mlp"\ndepth = "two"'),
     ["[model.projectors.vision] depth", "integer"]),
    ("missing-llm", ENCODER + PROJECTOR, ["[model] llm", "missing", "hf-causal-lm"]),
    ("projector-without-encoder", GOOD + '[model.projectors.audio]\ntype = "mlp"\n',
     ["[model.projectors.audio]", "encoder 'audio'", "does not exist"]),
    ("encoder-without-projector", LLM + ENCODER, ["[model.encoders.vision] has no projector"]),
    ("nonexistent-path", LLM + '[model.encoders.vision]\ntype = "clip"\nsource = "./no/such/dir"\n' + PROJECTOR,
     ["[model.encoders.vision]", "./no/such/dir", "no such directory"]),
    ("unknown-hub-id", '[model.llm]\ntype = "hf-causal-lm"\nsource = "lmsys/vicuna-7b-v9"\n' + ENCODER + PROJECTOR,
     ["[model.llm]", "vicuna-7b-v9", "did you mean 'lmsys/vicuna-7b-v1.5'", "no network"]),
    ("duplicate-table", GOOD + PROJECTOR, ["invalid TOML", "projectors"]),
    ("bad-toml-syntax", GOOD + "[[stages]\nname = 1\n", ["invalid TOML"]),
    ("negative-max-length", "[model]\nmax_length = -5\n" + GOOD, ["max_length", "greater than 0"]),
    ("max-length-over-llm", "[model]\nmax_length = 4096\n" + GOOD, ["max_length", "max_position_embeddings"]),
    ("media-longer-than-budget", "[model]\nmax_length = 3\n" + GOOD, ["max_length", "one image item"]),
    ("source-and-config", GOOD.replace('type = "clip"\n', 'type = "clip"\nsource = "x"\n'),
     ["exactly one of `source`"]),
    ("select-layer-zero", GOOD.replace('type = "clip"\n', 'type = "clip"\nselect_layer = 0\n'),
     ["select_layer", "patch embedding"]),
    ("bad-select-feature", GOOD.replace('type = "clip"\n', 'type = "clip"\nselect_feature = "cls"\n'),
     ["select_feature", "'patch' or 'cls_patch'"]),
    ("unknown-modality", GOOD.replace('type = "clip"\n', 'type = "clip"\nmodalities = ["audio"]\n'),
     ["does not take ['audio']"]),
    ("duplicate-stage-name", GOOD + DATA + STAGE * 2, ["duplicate stage name 'a'"]),
    ("stage-unknown-component", GOOD + DATA + STAGE.replace('"projectors"', '"projector"'),
     ["no component 'projector'", "did you mean 'projectors"]),
    ("stage-unknown-submodule", GOOD + DATA + STAGE.replace('"projectors"', '"projectors.vision.layerz"'),
     ["'projectors.vision' has no sub-module 'layerz'", "did you mean 'layers'"]),
    ("stage-unknown-template", GOOD + DATA + STAGE + 'template = "vicuna"\n',
     ["unknown template 'vicuna'", "did you mean 'vicuna_v1'"]),
    ("stage-trains-nothing", GOOD + DATA + '[[stages]]\nname = "a"\n', ["trains nothing"]),
    ("lora-and-full-llm", GOOD + DATA + '[[stages]]\nname = "a"\ntrainable = ["llm"]\n[stages.lora]\nr = 4\n',
     ["remove 'llm' from trainable"]),
    ("stage-without-data", GOOD + STAGE, ["[[stages]] #1 datasets", "draws from no dataset"]),
    ("stage-name-not-a-file-name", GOOD + DATA + STAGE.replace('"a"', '"../../x"'),
     ["[[stages]] #1 name", "'../../x' cannot name a file"]),
    ("stage-preset-mixture-lacks-datasets", GOOD + DATA + STAGE + 'mixture = "honeybee-finetune"\n',
     ["'honeybee-finetune' weighs datasets", "lacks"]),
    ("dataset-typo-type", GOOD + DATA.replace('"synthetic-shapes"', '"synthetic-shape"') + STAGE,
     ["[data.datasets.shapes] type", "unknown dataset type 'synthetic-shape'", "did you mean 'synthetic-shapes'"]),
    ("dataset-unknown-key", GOOD + DATA + "sise = 3\n" + STAGE,
     ["[data.datasets.shapes] sise", "did you mean 'size'"]),
    ("dataset-string-for-number", GOOD + DATA.replace("size = 4", 'size = "four"') + STAGE,
     ["[data.datasets.shapes] size", "integer"]),
    ("dataset-file-missing", GOOD + '[data.datasets.chat]\ntype = "llava-json"\npath = "no/chat.json"\n' + STAGE,
     ["[data.datasets.chat] path", "no/chat.json does not exist"]),
    ("hf-config-unknown-key", GOOD.replace("num_hidden_layers = 1,", "num_hiden_layers = 1,"),
     ["[model.llm] config.num_hiden_layers", "unknown key for LlamaConfig", "did you mean 'num_hidden_layers'"]),
    ("hf-config-wrong-type", GOOD.replace("num_hidden_layers = 1,", 'num_hidden_layers = "1",'),
     ["[model.llm] config.num_hidden_layers", "expected int, got str"]),
    ("hf-config-bad-model-type", GOOD.replace("config = { vocab_size", 'config = { model_type = "lama", vocab_size'),
     ["config.model_type 'lama'", "did you mean 'llama'"]),
    ("clip-config-unknown-key", GOOD.replace("image_size = 28", "img_size = 28"),
     ["[model.encoders.vision] config.img_size", "CLIPVisionConfig"]),
    ("eval-unknown-codec", GOOD + '[eval]\nbox_codec = "minigtp"\n', ["[eval] box_codec", "did you mean 'minigpt'"]),
    ("missing-plugin-file", '[plugins]\nfiles = ["nope.py"]\n' + GOOD, ["nope.py", "does not exist"]),
    ("plugin-file-not-python", '[plugins]\nfiles = ["notes.txt"]\n' + GOOD, ["'notes.txt' is not a Python file"]),
    ("required-plugin-missing", '[plugins]\nrequired = ["mmcore-plugin-sam>=1"]\n' + GOOD,
     ["missing required plugins", "mmcore-plugin-sam"]),
    ("two-encoders-one-modality", GOOD + ENCODER.replace("vision", "second") + PROJECTOR.replace("vision", "second"),
     ["'image' is already encoded by 'vision'"]),
]


@pytest.mark.parametrize(("text", "needles"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_manifest_is_one_line_exit_2(text: str, needles: list[str], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A malformed manifest exits 2 with one `error:` line naming file and culprit; nothing is written."""
    monkeypatch.setenv("MMCORE_BLOCK_PLUGINS", "mmcore-plugin-bind-network")
    manifest = tmp_path / "bad.toml"
    manifest.write_text(text)
    run = tmp_path / "run"
    code = main(["assemble", str(manifest), "-o", str(run)])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(manifest) in lines[0], err
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    assert not run.exists()


def test_error_names_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown component key is reported at its line in the file."""
    manifest = tmp_path / "bad.toml"
    manifest.write_text(GOOD.replace('type = "mlp"', 'type = "mlp"\ndepht = 2'))
    main(["assemble", str(manifest), "--dry-run"])
    line = next(i for i, t in enumerate(manifest.read_text().splitlines(), 1) if t.startswith("depht"))
    assert f"{manifest}:{line}:" in capsys.readouterr().err


def test_debug_shows_traceback(tmp_path: Path) -> None:
    """--debug re-raises the error with its traceback instead of the one-liner."""
    from mmcore.errors import MmcoreError

    manifest = tmp_path / "bad.toml"
    manifest.write_text("modle = 1\n" + GOOD)
    with pytest.raises(MmcoreError):
        main(["--debug", "assemble", str(manifest)])


def test_good_manifest_assembles(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The base of every bad case is itself valid (so each case fails for its own reason)."""
    manifest = tmp_path / "good.toml"
    manifest.write_text(GOOD)
    assert main(["assemble", str(manifest), "--dry-run"]) == 0, capsys.readouterr().err


def test_bad_cli_argument_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown option is a one-line error with exit 2, not argparse's usage dump."""
    assert main(["assemble", "--nope"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
