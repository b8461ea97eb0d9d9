"""Test helpers: reference HF runs, small synthetic images, and the engine-vs-reference check
that several test modules share."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from lvlm_lens.attribution.regression import sample_masks
from lvlm_lens.interventions.ablation import HeadAblation, compute_baseline
from lvlm_lens.interventions.engine import AblationEngine, run_reference

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
    """HF ``generate`` keyword arguments for an :class:`LVLMInput` (no positions)."""
    return inp.to_hf(generate=True)


@torch.no_grad()
def hf_logits(hf_model, model, inp) -> torch.Tensor:
    """Logits of the HF model itself on the same batch."""
    return hf_model(**inp.to_hf()).logits


def write_data_folder(folder, n: int, answer: str = "star", bbox: str | None = None):
    """A ``--data`` folder: ``n`` 20x20 noise images and a ``data.csv`` (optional bbox column)."""
    rows = ["image,prompt,answer" + (",bbox" if bbox else "")]
    for i in range(n):
        noise_image(20, 20, i).save(folder / f"im{i}.png")
        extra = f',"{bbox}"' if bbox else ""
        rows.append(f'im{i}.png,"USER: <image>\nwhat is this ? ASSISTANT:",{answer}{extra}')
    (folder / "data.csv").write_text("\n".join(rows) + "\n")
    return folder


def baseline_for(model, inp, cfg):
    """The baseline of ``cfg`` with fixed stand-in and reference images."""
    return compute_baseline(
        model,
        inp,
        cfg,
        baseline_image=noise_image(20, 20, 5),
        reference_images=[noise_image(20, 20, s) for s in (6, 7, 8)],
    )


def check_engine_equals_reference(model, inp, baseline, scope, n_masks, batch_size, rate):
    """The fast engine equals the per-mask reference path on random masks (and they matter)."""
    cfg = HeadAblation(baseline=baseline, scope=scope)
    base = baseline_for(model, inp, cfg)
    masks = sample_masks(n_masks, model.cfg.n_layers, model.cfg.n_heads, rate=rate, seed=1)
    fast = AblationEngine(model, inp, base, cfg, metric="logit_diff", batch_size=batch_size)
    fast = fast.run(masks)
    ref = run_reference(model, inp, masks, base, cfg, metric="logit_diff")
    assert fast.shape == (2, n_masks)
    assert (fast - ref).abs().max() <= 1e-4
    assert ref.std() > 1e-3  # the masks do change the metric


def toy_or_gqa(kind: str, tiny_checkpoint):
    """The two models the TransformerLens-parity tests run on: the shipped toy (``"toy"``) or a
    tiny checkpoint with grouped-query attention (``"qwen2-gqa"``)."""
    from lvlm_lens import HookedLVLM
    from lvlm_lens.toy import load_toy

    if kind == "toy":
        return load_toy()
    m = HookedLVLM.from_pretrained(tiny_checkpoint("llava-onevision-qwen2"))
    assert m.cfg.n_key_value_heads < m.cfg.n_heads  # grouped-query attention
    return m


#: The text prompt of the TransformerLens-parity tests.
TL_TEXT = "what is the main object in this image ?"


def text_or_image_input(model, kind: str):
    """The TL-parity tests' input of ``kind``: :data:`TL_TEXT` as tokens (``"text"``), or two
    images of different sizes with :data:`PROMPTS` and their answers (``"image"``)."""
    if kind == "text":
        return model.to_tokens(TL_TEXT)
    return model.prepare([noise_image(48, 48, 3), noise_image(30, 60, 4)], PROMPTS,
                         answers=["star", "circle"])



def attention_layers(model) -> list[int]:
    """The layers with softmax self-attention (a Qwen3.5 linear-attention layer has no
    pattern, rotary or split inputs; a Llama 3.2 Vision cross-attention layer no rotary or
    split inputs, and its hooks are ``cross_attn.hook_*``)."""
    return [i for i in range(model.cfg.n_layers) if model.attn_kind(i) == "self"]
