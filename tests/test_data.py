"""Datasets and mixtures: synthetic shapes, LLaVA JSON, deterministic orders at any world size."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from mmcore.builtins.datasets.llava_json import LlavaJson, LlavaJsonConfig
from mmcore.builtins.datasets.shapes import ShapesConfig, SyntheticShapes
from mmcore.data._mixture import epoch_order, group_by_modality_length, rank_batches, stage_order
from mmcore.errors import SampleError
from mmcore.kinds import BuildContext, ComponentConfig, Dataset


def _shapes(**options: object) -> SyntheticShapes:
    return SyntheticShapes(ShapesConfig.model_validate(options), BuildContext(name="shapes"))


def test_shapes_are_deterministic_by_seed() -> None:
    """The same (seed, split, index) draws the same image and text; another seed does not."""
    a, b, c = _shapes(size=5), _shapes(size=5), _shapes(size=5, seed=1)
    assert np.array_equal(np.asarray(a[7].media["image"][0]), np.asarray(b[7].media["image"][0]))
    assert a[7].conversation[1].text == b[7].conversation[1].text
    assert any(a[i].conversation[1].text != c[i].conversation[1].text for i in range(len(a)))


def test_shapes_splits_differ_and_tasks_cover() -> None:
    """Train and val scenes differ; every task appears, with box and mask targets where due."""
    train, val = _shapes(size=3), _shapes(size=3, split="val")
    assert train[0].conversation[1].text != val[0].conversation[1].text or \
        not np.array_equal(np.asarray(train[0].media["image"][0]), np.asarray(val[0].media["image"][0]))
    tasks = {train[i].task for i in range(len(train))}
    assert {"caption", "refer", "mask", "vqa/count"} <= tasks
    refer = next(train[i] for i in range(len(train)) if train[i].task == "refer")
    x1, y1, x2, y2 = refer.targets["boxes"][0]
    mask = refer.targets["masks"][0]
    assert mask.shape == (64, 64) and mask[y1:y2 + 1, x1:x2 + 1].sum() == mask.sum() > 0
    assert refer.conversation[1].text == "[" + ",".join(f"{v / 64:.3f}" for v in (x1, y1, x2, y2)) + "]"


def test_shapes_answers_match_the_picture() -> None:
    """A colour answer is the colour of the pixels inside the named shape's box."""
    from mmcore.builtins.datasets.shapes import COLOURS

    data = _shapes(size=20, tasks=["vqa/colour"], max_shapes=1)
    for i in range(len(data)):
        sample = data[i]
        shapes, _ = data.scene(i)
        x1, y1, x2, y2 = shapes[0].box
        pixel = np.asarray(sample.media["image"][0])[(y1 + y2) // 2, (x1 + x2) // 2]
        assert tuple(pixel) == COLOURS[sample.conversation[1].text]


def test_unknown_task_is_a_config_error() -> None:
    """An unknown task name is refused with the valid choices."""
    with pytest.raises(ValueError, match="unknown tasks"):
        ShapesConfig(tasks=["vqa/colours"])


@pytest.fixture
def llava_files(tmp_path: Path) -> Path:
    from PIL import Image

    Image.new("RGB", (30, 20), (200, 0, 0)).save(tmp_path / "a.png")
    Image.new("RGB", (20, 30), (0, 200, 0)).save(tmp_path / "b.png")
    lines = [
        {"id": "single", "image": "a.png", "conversations": [{"from": "human", "value": "What is it?\n<image>"},
                                                             {"from": "gpt", "value": "Red."}]},
        {"id": "multi", "image": ["a.png", "b.png"], "conversations": [
            {"from": "human", "value": "<image> vs <image>?"}, {"from": "gpt", "value": "Red, green."}]},
        {"id": "text", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]},
    ]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\n{not json\n")
    return path


def test_llava_json_single_multi_text_only(llava_files: Path) -> None:
    """LLaVA records load: `<image>` moved to the front (single image), multi-image kept, text-only."""
    data = LlavaJson(LlavaJsonConfig(path=str(llava_files)), BuildContext(name="d", base_dir=llava_files.parent))
    assert data[0].conversation[0].text == "<image>\nWhat is it?"
    assert data[1].conversation[0].text == "<image> vs <image>?" and len(data[1].media["image"]) == 2
    assert data[2].media == {} and data[2].conversation[1].role == "assistant"
    with pytest.raises(SampleError, match="malformed JSON line") as caught:
        data[3]
    assert caught.value.reason == "malformed-record"


def test_mixture_weights_and_determinism() -> None:
    """Explicit weights shape the draw; the same seed gives the same order."""
    sizes = {"a": 100, "b": 100}
    first = epoch_order(sizes, {"a": 3, "b": 1}, seed=1, epoch=0, samples_per_epoch=4000)
    assert first == epoch_order(sizes, {"a": 3, "b": 1}, seed=1, epoch=0, samples_per_epoch=4000)
    share = sum(1 for name, _ in first if name == "a") / len(first)
    assert 0.72 < share < 0.78


def test_size_proportional_caps_each_dataset() -> None:
    """size-proportional with a cap (Honeybee sample-100k) takes min(size, cap) from each dataset."""
    order = epoch_order({"big": 50, "small": 5}, "size-proportional", seed=0, epoch=0, cap=10)
    assert sum(1 for n, _ in order if n == "big") == 10 and sum(1 for n, _ in order if n == "small") == 5
    assert len(set(order)) == len(order)


def test_per_task_is_uniform_over_tasks() -> None:
    """per-task draws each task about equally, however unequal the datasets."""
    tasks = {("a", i): "x" for i in range(90)} | {("b", i): "y" for i in range(10)}
    order = epoch_order({"a": 90, "b": 10}, "per-task", seed=0, epoch=0, task_of=lambda n, i: tasks[(n, i)],
                        samples_per_epoch=2000)
    share = sum(1 for item in order if tasks[item] == "y") / len(order)
    assert 0.45 < share < 0.55


def test_rank_batches_partition_the_global_order() -> None:
    """Two ranks' micro-batches together cover exactly what one process with accumulation sees."""
    one = rank_batches(0, 3, rank=0, world=1, batch=2, accum=2)
    two = [rank_batches(0, 3, rank=r, world=2, batch=2, accum=1) for r in range(2)]
    for step in range(3):
        single = sorted(one[2 * step] + one[2 * step + 1])
        assert single == sorted(two[0][step] + two[1][step])


def test_stage_order_covers_epochs() -> None:
    """epochs = 2 visits every sample twice; max_steps overrides the epoch count."""
    order, steps = stage_order(lambda e: epoch_order({"a": 10}, "size-proportional", 0, e), 2.0, None, 5)
    assert steps == 4 and sorted(order) == sorted([("a", i) for i in range(10)] * 2)
    assert stage_order(lambda e: [("a", 0)] * 10, 1.0, 7, 3)[1] == 7


def test_modality_length_grouping() -> None:
    """LLaVA grouping: each global batch holds one modality, longest first, leftovers last."""
    order = [("d", i) for i in range(10)]
    lengths = [5, -3, 8, -9, 2, 7, -1, 4, -6, 3]  # > 0 image, < 0 text-only
    grouped = group_by_modality_length(order, lengths, megabatch=3, seed=0)
    assert sorted(grouped) == order
    chunks = [grouped[k : k + 3] for k in range(0, 9, 3)]
    for chunk in chunks[:2]:
        signs = {lengths[i] > 0 for _, i in chunk}
        assert len(signs) == 1
        assert [abs(lengths[i]) for _, i in chunk] == sorted((abs(lengths[i]) for _, i in chunk), reverse=True)


class _Records(Dataset):  # type: ignore[misc]
    """Question/answer records over image paths, some answers repeated within an image."""

    ROWS: ClassVar[list[tuple[str, str, str]]] = [
        ("a.png", "What colour is it?", "red"), ("a.png", "What colour is the big one?", "Red"),
        ("a.png", "What shape?", "square"), ("b.png", "How many?", "2"), ("a.png", "Where?", "left"),
        ("b.png", "How many circles?", "2"), ("c.png", "Colour?", "blue")]

    def __len__(self) -> int:
        return len(self.ROWS)

    def __getitem__(self, index: int) -> Any:
        from mmcore.kinds import Sample, Turn

        path, question, answer = self.ROWS[index]
        return Sample(f"r{index}", [Turn("user", f"<image>\n{question}"), Turn("assistant", answer)],
                      {"image": [path]}, task="vqa")


def test_honeybee_multi_turn_packing_with_dedup() -> None:
    """An image's records become one multi-turn sample (placeholder once); repeated answers within the image
    are dropped first; chunks hold at most `turns` pairs; packing is deterministic."""
    from mmcore.data._packing import PackedDataset

    data = _Records(ComponentConfig(), BuildContext(name="records"))
    packed = PackedDataset(data, turns=10, dedup="answer", seed=0)
    assert len(packed) == 3 and packed.dropped == 2  # "Red" repeats "red" on a.png, "2" repeats on b.png
    sample = next(packed[i] for i in range(3) if packed[i].media["image"] == ["a.png"])
    users = [t.text for t in sample.conversation if t.role == "user"]
    assert len(users) == 3 and users[0].startswith("<image>") and not any("<image>" in u for u in users[1:])
    assert sorted(t.text for t in sample.conversation if t.role == "assistant") == ["left", "red", "square"]
    assert [packed[i].id for i in range(3)] == [PackedDataset(data, 10, "answer", 0)[i].id for i in range(3)]
    chunks = PackedDataset(data, turns=2, dedup="none", seed=0)
    assert sorted(len(chunks[i].conversation) // 2 for i in range(len(chunks))) == [1, 2, 2, 2]


def test_packing_is_a_dataset_option() -> None:
    """`pack_turns` / `dedup` on a [data.datasets] table wrap the dataset for training; the template renders
    every turn (Honeybee's multi-turn format)."""
    from mmcore.builtins.datasets.shapes import ShapesConfig, SyntheticShapes
    from mmcore.builtins.templates import HoneybeeTemplate
    from mmcore.data._packing import PackedDataset
    from mmcore.kinds import BuildContext
    from mmcore.manifest._schema import DatasetRef

    ref = DatasetRef.model_validate({"type": "synthetic-shapes", "size": 2, "pack_turns": 4, "dedup": "answer"})
    assert "pack_turns" not in ref.options() and ref.dedup == "answer"
    data = SyntheticShapes(ShapesConfig(size=2, image_size=28, tasks=["vqa/colour", "vqa/shape"]),
                           BuildContext(name="s"))
    sample = PackedDataset(data, 4, "answer", 0)[0]
    from mmcore.builtins.byte_tokenizer import byte_level_tokenizer

    template = HoneybeeTemplate(HoneybeeTemplate.Config(), BuildContext(name="t", tokenizer=byte_level_tokenizer()))
    text = "".join(s.text for s in template.render(sample.conversation, sample.task))
    assert text.count("\nAI: ") == 2 and text.count("<image>") == 1


def test_min_shapes_makes_every_spatial_question_real() -> None:
    """`min_shapes = 2`: no scene falls back from a spatial to a counting question; the default data is
    unchanged by the option."""
    spatial = SyntheticShapes(ShapesConfig(size=40, image_size=32, min_shapes=2, tasks=["vqa/spatial"]),
                              BuildContext(name="s"))
    assert all(spatial[i].task == "vqa/spatial" for i in range(40))
    assert {spatial[i].conversation[1].text for i in range(40)} == {"left", "right", "above", "below"}
    default = SyntheticShapes(ShapesConfig(size=5, image_size=32, tasks=["vqa/colour"]), BuildContext(name="d"))
    assert [default[i].conversation[1].text for i in range(5)] == ["red", "yellow", "purple", "blue", "purple"]
    with pytest.raises(ValueError, match="min_shapes 3 is above max_shapes 2"):
        ShapesConfig(min_shapes=3, max_shapes=2)
    position = SyntheticShapes(ShapesConfig(size=40, image_size=32, min_shapes=2, tasks=["vqa/position"]),
                               BuildContext(name="p"))
    sample = position[0]
    assert "half of the image?" in sample.conversation[0].text
    assert {position[i].conversation[1].text for i in range(40)} == {"left", "right", "top", "bottom"}


def test_processor_is_picklable_and_prepares_the_same_batch(tiny_pipeline: Any, images: list[Path]) -> None:
    """The one data path pickles (data-loader workers under spawn) and prepares identical tensors after."""
    import pickle

    import torch

    from mmcore.kinds import Sample, Turn

    processor = tiny_pipeline.processor
    samples = [Sample(f"s{i}", [Turn("user", "<image>\nColour?"), Turn("assistant", "red")], {"image": [image]})
               for i, image in enumerate(images)]
    copy = pickle.loads(pickle.dumps(processor))
    first, second = processor.batch(samples, "vicuna_v1", train=True), copy.batch(samples, "vicuna_v1", train=True)
    assert torch.equal(first.input_ids, second.input_ids) and torch.equal(first.labels, second.labels)
    assert torch.equal(first.media["image"].views["encoders.vision"], second.media["image"].views["encoders.vision"])


def test_a_spawned_worker_prepares_training_batches(tiny_pipeline: Any) -> None:
    """A stage's data runs in a spawned data-loader worker (no fork-inherited model): same batch as in-process."""
    import torch
    from torch.utils.data import DataLoader

    from mmcore.builtins.datasets.shapes import ShapesConfig, SyntheticShapes
    from mmcore.data import StageData
    from mmcore.kinds import BuildContext

    dataset = SyntheticShapes(ShapesConfig(size=4, image_size=28, tasks=["caption"]), BuildContext(name="c"))
    data = StageData(tiny_pipeline.processor, {"c": dataset}, [("c", i) for i in range(4)], "plain")
    spawned = DataLoader(data, batch_size=4, collate_fn=data.collate, num_workers=1, multiprocessing_context="spawn")
    batch = next(iter(spawned)).batch
    local = data.collate([data[i] for i in range(4)]).batch
    assert batch is not None and local is not None and torch.equal(batch.input_ids, local.input_ids)


def test_a_head_with_its_own_view_gets_its_tensors_and_metadata(tiny_pipeline: Any, images: list[Path]) -> None:
    """A head that declares a view of the image (SAM's padded copy) gets its own tensors and each item's
    metadata (sizes) in the batch, next to the encoder's view of the same items."""
    import torch

    from mmcore.data import Processor
    from mmcore.kinds import BuildContext, Head, HeadConfig, HeadOutput, MediaView, Sample, Turn
    from mmcore.model import MultimodalModel

    class PaddedView(MediaView):
        def __call__(self, item: Any, modality: str) -> Any:
            from PIL import Image

            image = Image.open(item)
            return torch.zeros(3, 16, 16), {"original_size": image.size[::-1]}

    class ViewingHead(Head):
        view_modalities: ClassVar[tuple[str, ...]] = ("image",)

        def media_view(self, **preprocessing: Any) -> MediaView:
            return PaddedView()

        def forward(self, hidden: Any, sample_index: Any, media: Any, targets: Any) -> HeadOutput:
            return HeadOutput(predictions=None)

    base = tiny_pipeline.model
    head = ViewingHead(HeadConfig(trigger_token="[SEG]"), BuildContext(name="seg", llm_hidden_size=48))
    model = MultimodalModel(base.llm, dict(base.encoders), dict(base.projectors), {"image": "vision"}, {"seg": head})
    processor = Processor.for_model(model, 256, tiny_pipeline.processor.templates)
    samples = [Sample(f"s{i}", [Turn("user", "<image>\nq"), Turn("assistant", "a")], {"image": [image]})
               for i, image in enumerate(images[:2])]
    media = processor.batch(samples, "plain", train=True).media["image"]
    assert set(media.views) == {"encoders.vision", "heads.seg"} and media.views["heads.seg"].shape == (2, 3, 16, 16)
    assert media.meta["heads.seg"] == [{"original_size": (20, 40)}, {"original_size": (40, 20)}]
