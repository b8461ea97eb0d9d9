"""Data: a seeded synthetic shape set, its prompts, patch-grid object masks, and real datasets.

Beside the layers: imports no other lvlm_lens subpackage (only :mod:`lvlm_lens.files`), so every
layer may use it. All loaders return the same :class:`Record` type.
"""

from lvlm_lens.data.folder import load_folder
from lvlm_lens.data.hf_datasets import load_hf_dataset
from lvlm_lens.data.patch_grid import patch_grid_mask
from lvlm_lens.data.prompts import (
    IMAGE_QUESTIONS,
    QUESTIONS,
    TEXT_QUESTIONS,
    VOCABULARY,
    image_prompt,
    text_prompt,
)
from lvlm_lens.data.questions import (
    ATTRIBUTE_ANSWERS,
    ATTRIBUTE_QUESTIONS,
    ATTRIBUTES,
    attribute_answer,
    attribute_image_prompt,
    attribute_records,
    attribute_text_prompt,
    scene_description,
)
from lvlm_lens.data.records import OPTIONAL_COLUMNS, REQUIRED_COLUMNS, Record, synthetic_records
from lvlm_lens.data.synthetic import (
    BACKGROUNDS,
    CLASSES,
    COLOURS,
    FILLS,
    POSITIONS,
    SIZES,
    TEXTURES,
    SyntheticExample,
    describe,
    generate_dataset,
    generate_from_rng,
    render_example,
)

__all__ = [
    "ATTRIBUTES",
    "ATTRIBUTE_ANSWERS",
    "ATTRIBUTE_QUESTIONS",
    "BACKGROUNDS",
    "CLASSES",
    "COLOURS",
    "FILLS",
    "IMAGE_QUESTIONS",
    "OPTIONAL_COLUMNS",
    "POSITIONS",
    "QUESTIONS",
    "REQUIRED_COLUMNS",
    "SIZES",
    "TEXTURES",
    "TEXT_QUESTIONS",
    "VOCABULARY",
    "Record",
    "SyntheticExample",
    "attribute_answer",
    "attribute_image_prompt",
    "attribute_records",
    "attribute_text_prompt",
    "describe",
    "generate_dataset",
    "generate_from_rng",
    "image_prompt",
    "load_folder",
    "load_hf_dataset",
    "patch_grid_mask",
    "render_example",
    "scene_description",
    "synthetic_records",
    "text_prompt",
]
