"""MiniGPT-v2's instruction pools and text processor, shared by the datasets that offer its prompts.

The pools are upstream's lists verbatim (Vision-CAIR/MiniGPT-4 d94738a, `minigpt4/datasets/datasets/*.py`), task
tag included. A dataset picks one per sample with its own seeded generator and writes the instruction **without**
the tag: the `llama2` template adds the tag from the sample's task (`refer` → "[refer] "), so the prompt text is
upstream's "<Img><ImageHere></Img> [refer] give me the location of {} " (tests/test_minigpt_v2_data.py).
"""

from __future__ import annotations

import re

import numpy as np

__all__ = ["MINIGPT_V2_POOLS", "blip_caption", "minigpt_v2_instruction", "strip_tag"]

# coco_caption (`caption_datasets.py::COCOCaptionDataset`) and textcaps (`text_caps.py`) share this pool, which has
# no tag: "<Img><ImageHere></Img> [caption] {} " adds it. Three entries end in a space, kept (upstream's prompts
# then hold three spaces before "[/INST]").
CAPTION_POOL = [
    "Briefly describe this image.",
    "Provide a concise depiction of this image.",
    "Present a short description of this image.",
    "Summarize this image in a few words.",
    "A short image caption:",
    "A short image description:",
    "A photo of ",
    "An image that shows ",
    "Write a short description for the image. ",
    "Write a description for the photo.",
    "Provide a description of what is presented in the photo.",
    "Briefly describe the content of the image.",
    "Can you briefly explain what you see in the image?",
    "Could you use a few words to describe what you perceive in the photo?",
    "Please provide a short depiction of the picture.",
    "Using language, provide a short account of the image.",
    "Use a few words to illustrate what is happening in the picture.",
]

MINIGPT_V2_POOLS: dict[str, list[str]] = {
    # coco_vqa_datasets.py, aok_vqa_datasets.py, gqa_datasets.py, ocrvqa_dataset.py
    "vqa": ["[vqa] {}", "[vqa] Based on the image, respond to this question with a short answer: {}"],
    "caption": CAPTION_POOL,
    # coco_dataset.py::ReferCOCODataset, vg_dataset.py::ReferVisualGenomeDataset
    "refer": [
        "[refer] {}",
        "[refer] give me the location of {}",
        "[refer] where is {} ?",
        "[refer] from this image, tell me the location of {}",
        "[refer] the location of {} is",
        "[refer] could you tell me the location for {} ?",
        "[refer] where can I locate the {} ?",
    ],
    # coco_dataset.py::InvReferCOCODataset
    "identify": [
        "[identify] {}",
        "[identify] what object is in this location {}",
        "[identify] identify the object present at this location {}",
        "[identify] what is it in {}",
        "[identify] describe this object in {}",
        "[identify] this {} is",
        "[identify] the object in {} is",
    ],
    # flickr.py::GroundedDetailDataset
    "grounding": [
        "[grounding] please describe this image in details",
        "[grounding] describe this image as detailed as possible",
        "[grounding] summarize this image in details",
        "[grounding] give a thorough description of what you see in this image",
    ],
    # flickr.py::CaptionToObjectDataset, PhraseToObjectDataset
    "detection": ["[detection] {}"],
}

_TAG = re.compile(r"^\[(vqa|caption|refer|identify|grounding|detection)\] ")


def strip_tag(instruction: str) -> str:
    """"[refer] where is {} ?" → "where is {} ?" (the template writes the tag from the sample's task)."""
    return _TAG.sub("", instruction, count=1)


def minigpt_v2_instruction(task: str, rng: np.random.Generator, *fields: str) -> str:
    """One instruction of `task`'s family ("vqa/colour" → the vqa pool), without its tag, filled with `fields`.
    Upstream draws `random.choice(pool)`; here the dataset's seeded generator draws, so data stays deterministic."""
    pool = MINIGPT_V2_POOLS[task.split("/")[0]]
    return strip_tag(pool[int(rng.integers(len(pool)))]).format(*fields)


def blip_caption(text: str, max_words: int = 50) -> str:
    """LAVIS `BlipCaptionProcessor.pre_caption` (MiniGPT-4 `processors/blip_processors.py`): lower case,
    `.!"()*#:;~` → spaces, runs of spaces squeezed, stripped, at most `max_words` words."""
    text = re.sub(r"([.!\"()*#:;~])", " ", text.lower())
    text = re.sub(r"\s{2,}", " ", text).rstrip("\n").strip(" ")
    words = text.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else text
