"""Test helpers: reference HF runs and small synthetic images."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

PROMPTS = [
    "USER: <image>\nwhat is the main object in this image ? ASSISTANT:",
    "USER: <image>\nwhat is this ? ASSISTANT:",
]


def noise_image(h: int, w: int, seed: int = 0) -> Image.Image:
    """A random RGB image."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Left-padding-aware position ids, as HF ``generate`` computes them."""
    return (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)


def hf_kwargs(model, inp) -> dict:
    """HF forward/generate keyword arguments for an :class:`LVLMInput`."""
    kw = dict(input_ids=inp.input_ids, attention_mask=inp.attention_mask)
    if inp.pixel_values is not None:
        kw["pixel_values"] = inp.pixel_values
        if model.cfg.lvlm_type != "llava":
            kw["image_sizes"] = inp.image_sizes
        if model.cfg.lvlm_type == "llava_onevision":
            kw["batch_num_images"] = torch.tensor(inp.images_per_example)
    return kw


@torch.no_grad()
def hf_logits(hf_model, model, inp) -> torch.Tensor:
    """Logits of the HF model itself on the same batch."""
    kw = hf_kwargs(model, inp)
    return hf_model(**kw, position_ids=position_ids(inp.attention_mask)).logits


def write_data_folder(folder, n: int, answer: str = "star", bbox: str | None = None):
    """A ``--data`` folder: ``n`` 20x20 noise images and a ``data.csv`` (optional bbox column)."""
    rows = ["image,prompt,answer" + (",bbox" if bbox else "")]
    for i in range(n):
        noise_image(20, 20, i).save(folder / f"im{i}.png")
        extra = f',"{bbox}"' if bbox else ""
        rows.append(f'im{i}.png,"USER: <image>\nwhat is this ? ASSISTANT:",{answer}{extra}')
    (folder / "data.csv").write_text("\n".join(rows) + "\n")
    return folder
