"""Config variants real checkpoints use, or that stress the decoder and the vision side: each
family against HF eager in fp32 (logits on a left-padded batch with images of two sizes), and
for a subset the fast ablation engine against the reference hooks and greedy generation
against HF's."""

from __future__ import annotations

import pytest
import torch

from lvlm_lens import HookedLVLM
from tests.helpers import PROMPTS, check_engine_equals_reference, hf_logits, noise_image

SIZES = [(20, 28), (30, 14)]
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "rope_theta": 500000.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 16}  # fmt: skip
GEMMA_4 = ["sliding_attention", "full_attention", "sliding_attention", "sliding_attention"]

#: name -> (kind, build keywords); ``sizes`` (popped) overrides the two image sizes.
VARIANTS: dict[str, tuple[str, dict]] = {
    # LLaVA-1.5 (Llama)
    "llava/mqa-1-layer": ("llava-llama", dict(
        num_key_value_heads=1, num_hidden_layers=1, lvlm=dict(multimodal_projector_bias=False))),
    "llava/gqa4-biases": ("llava-llama", dict(
        num_attention_heads=8, head_dim=8, num_key_value_heads=2, attention_bias=True,
        mlp_bias=True)),
    "llava/head-dim-32-tied": ("llava-llama", dict(head_dim=32, tie_word_embeddings=True)),
    "llava/32px-tower": ("llava-llama", dict(
        vision=dict(image_size=32), processor=dict(size={"shortest_edge": 32},
                                                   crop_size={"height": 32, "width": 32}))),
    "llava/rope-yarn": ("llava-llama", dict(rope_parameters={
        "rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0,
        "original_max_position_embeddings": 16})),
    "llava/rope-llama3-short": ("llava-llama", dict(rope_parameters=LLAMA3)),
    "llava/full-multilayer": ("llava-llama", dict(
        lvlm=dict(vision_feature_select_strategy="full", vision_feature_layer=[-2, -1]))),
    # LLaVA-NeXT / OneVision
    "next/multilayer-big-image": ("llava-next-vicuna", dict(
        lvlm=dict(vision_feature_layer=[0, -2]), sizes=[(90, 130), (30, 14)])),
    "next-mistral/mqa-window-head-dim-32": ("llava-next-mistral", dict(
        num_key_value_heads=1, sliding_window=8, head_dim=32)),
    "onevision/max1-big-image": ("llava-onevision-qwen2", dict(
        lvlm=dict(vision_aspect_ratio="anyres_max_1"), sizes=[(70, 50), (14, 30)])),
    "onevision/mqa-window-head-dim-8": ("llava-onevision-qwen2", dict(
        num_key_value_heads=1, head_dim=8, use_sliding_window=True, sliding_window=10,
        max_window_layers=1)),
    # Qwen2-VL / Qwen2.5-VL / Qwen3-VL
    "qwen2-vl/mqa-untied-mrope422": ("qwen2-vl", dict(
        num_key_value_heads=1, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                         "mrope_section": [4, 2, 2]})),
    "qwen2.5-vl/no-gqa-mrope224-tied": ("qwen2.5-vl", dict(
        num_key_value_heads=4, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                         "mrope_section": [2, 2, 4]})),
    "qwen3-vl/head-dim-32-mqa": ("qwen3-vl", dict(head_dim=32, num_key_value_heads=1)),
    "qwen3-vl/patch-4": ("qwen3-vl", dict(
        vision=dict(patch_size=4, num_position_embeddings=9), processor=dict(patch_size=4))),
    "qwen2-vl/merge-1": ("qwen2-vl", dict(
        vision=dict(spatial_merge_size=1), processor=dict(merge_size=1))),
    "qwen3-vl/bias-deepstack1-untied": ("qwen3-vl", dict(
        attention_bias=True, tie_word_embeddings=False,
        vision=dict(deepstack_visual_indexes=[1]))),
    # Gemma 3
    "gemma3/window-4-pattern": ("gemma3", dict(
        num_hidden_layers=4, sliding_window=4, layer_types=GEMMA_4)),
    "gemma3/head-dim-32-mqa": ("gemma3", dict(
        head_dim=32, query_pre_attn_scalar=24, num_key_value_heads=1, attention_bias=True)),
    "gemma3/all-sliding-eps": ("gemma3", dict(
        layer_types=["sliding_attention"] * 3, sliding_window=5, rms_norm_eps=1e-2)),
    "gemma3/4-image-tokens": ("gemma3", dict(vision=dict(mm_tokens_per_image=4))),
    "gemma3/32px-pool-4": ("gemma3", dict(
        vision=dict(image_size=32), processor=dict(size={"height": 32, "width": 32}))),
    # InternVL on other text models
    "internvl/llama": ("internvl", dict(model_type="llama", num_key_value_heads=1)),
    "internvl/qwen3": ("internvl", dict(model_type="qwen3", head_dim=32, attention_bias=True)),
    "internvl/32px-tiles": ("internvl", dict(
        vision=dict(image_size=32), processor=dict(size={"height": 32, "width": 32}))),
    "internvl/feature-layer-2": ("internvl", dict(lvlm=dict(vision_feature_layer=-2))),
    # Idefics3 / SmolVLM
    "idefics3/no-split": ("idefics3", dict(processor=dict(do_image_splitting=False))),
    "idefics3/scale-2-biases": ("idefics3", dict(
        vision=dict(scale_factor=2), attention_bias=True, mlp_bias=True)),
    "idefics3/mqa-untied": ("idefics3", dict(num_key_value_heads=1, tie_word_embeddings=False)),
}  # fmt: skip
#: A subset also checked through the fast engine and greedy generation.
DEEP = ["llava/gqa4-biases", "llava/rope-yarn", "next-mistral/mqa-window-head-dim-32",
        "qwen2-vl/mqa-untied-mrope422", "qwen3-vl/head-dim-32-mqa", "gemma3/window-4-pattern",
        "internvl/qwen3", "idefics3/no-split", "onevision/mqa-window-head-dim-8"]  # fmt: skip


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint):
    cache = {}

    def load(name):
        if name not in cache:
            kind, kw = VARIANTS[name]
            kw = dict(kw)
            sizes = kw.pop("sizes", SIZES)
            folder = tiny_checkpoint(kind, chat_template=True, **kw)
            model = HookedLVLM.from_pretrained(folder)
            reference = type(model.hf_model).from_pretrained(folder, attn_implementation="eager")
            images = [noise_image(h, w, i + 1) for i, (h, w) in enumerate(sizes)]
            cache[name] = model, reference.eval(), model.prepare(images, PROMPTS)
        return cache[name]

    return load


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_logits_match_hf(loaded, name):
    model, reference, inp = loaded(name)
    assert (inp.attention_mask == 0).any(), "the batch must be left-padded"
    counts = inp.groups["image"].sum(-1)
    assert (counts > 0).all()
    ref = hf_logits(reference, model, inp)
    real = inp.attention_mask.bool()
    assert (model(inp) - ref)[real].abs().max() <= 1e-4
    assert ref[real].std() > 0.1
    # materialised attention with every hook cached, per-head results (b_O added once)
    model.set_use_attn_result(True)
    try:
        logits, cache = model.run_with_cache(inp)
    finally:
        model.set_use_attn_result(False)
    assert (logits - ref)[real].abs().max() <= 1e-4
    resid = cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"]
    assert (cache.decompose_resid().sum(0) - resid)[real].abs().max() <= 1e-4


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_several_images_and_a_text_only_row_match_hf(loaded, name):
    model, reference, _ = loaded(name)
    prompts = [
        "USER: <image> and <image>\nwhat is this ? ASSISTANT:",
        "USER: what is <image> this ? ASSISTANT:",
        "USER: what is this ? ASSISTANT:",
    ]
    images = [[noise_image(20, 28, 1), noise_image(40, 24, 3)], noise_image(30, 18, 2), None]
    inp = model.prepare(images, prompts)
    real = inp.attention_mask.bool()
    assert (model(inp) - hf_logits(reference, model, inp))[real].abs().max() <= 1e-4


@pytest.mark.parametrize("name", DEEP)
def test_variant_engine_equals_reference(loaded, name):
    model, _, inp = loaded(name)
    check_engine_equals_reference(model, inp, "mean", "text", n_masks=8, batch_size=4, rate=0.3)


@pytest.mark.parametrize("name", DEEP)
def test_variant_generate_matches_hf(loaded, name):
    model, reference, inp = loaded(name)
    with torch.no_grad():
        theirs = reference.generate(
            **inp.to_hf(generate=True),
            max_new_tokens=5,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=model.tokenizer.pad_token_id,
        )
    assert torch.equal(model.generate(inp, max_new_tokens=5, eos_token_id=[]), theirs)


def image_end(inp) -> int:
    return int((inp.groups["image"] * torch.arange(inp.shape[1])).max()) + 1


@pytest.mark.parametrize("name", DEEP)
def test_variant_prefix_cache_equals_full_run(loaded, name):
    """A prefix cached up to the end of the images, continued by the rest: the full run."""
    model, _, inp = loaded(name)
    full = model(inp)
    cut = image_end(inp)
    cache = model.run_prefix(inp, cut)
    assert (model(inp.input_ids[:, cut:], past_kv_cache=cache) - full[:, cut:]).abs().max() <= 1e-4


LONGROPE = {"rope_type": "longrope", "rope_theta": 10000.0, "original_max_position_embeddings": 16,
            "short_factor": [1.0] * 8, "long_factor": [4.0] * 8}  # fmt: skip


@pytest.mark.parametrize("kind, rope", [
    ("llava-llama", {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}),
    ("idefics3", LONGROPE),
    ("gemma3", {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e6}}),
])  # fmt: skip
def test_length_dependent_rope_is_refused_at_load(tiny_checkpoint, kind, rope):
    """HF's dynamic / longrope frequencies follow the longest position of the batch (dynamic's
    also the longest call before): an example's logits would depend on its batch, and neither
    per-example engine runs nor prefix caches could match a batched run."""
    folder = tiny_checkpoint(kind, rope_parameters=rope, max_position_embeddings=64)
    with pytest.raises(
        ValueError,
        match=r"rope_parameters rope_type='(dynamic|longrope)'.*"
        r"supported: default, linear",
    ):
        HookedLVLM.from_pretrained(folder)
