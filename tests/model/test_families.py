"""Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Gemma 3, InternVL and Idefics3 beyond logits: inputs, hooks,
M-RoPE, image blocks, DeepStack and tiles."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoProcessor, Gemma3Processor

from lvlm_lens import HookedLVLM
from lvlm_lens.model.families import language_model
from lvlm_lens.model.layout import TokenLayout
from tests.helpers import PROMPTS, noise_image

KINDS = ["qwen2-vl", "qwen2.5-vl", "qwen3-vl", "gemma3", "internvl", "idefics3"]
KINDS += ["qwen3-vl-moe"]
KINDS += ["llava-onevision-1.5"]
KINDS += ["qwen3.5", "qwen3.5-moe", "paligemma2", "smolvlm2"]
KINDS += ["glm4v", "glm4v-moe"]
KINDS += ["llama4"]
KINDS += ["mistral3"]
KINDS += ["mllama"]
KINDS += ["gemma4"]
IMAGES = [noise_image(20, 28, 1), noise_image(30, 18, 2)]


@pytest.fixture(scope="module", params=KINDS)
def fam(request, tiny_checkpoint):
    model = HookedLVLM.from_pretrained(tiny_checkpoint(request.param, chat_template=True))
    inp = model.prepare(IMAGES, PROMPTS, answers=["star", "circle"])
    return request.param, model, inp


def test_hook_embed_is_hf_inputs_embeds(fam):
    _, model, inp = fam
    seen = {}

    def grab(module, args, kwargs):
        x = kwargs.get("inputs_embeds")  # Llama 3.2 Vision's decoder embeds the ids itself
        seen["x"] = module.embed_tokens(kwargs["input_ids"]) if x is None else x

    lm = language_model(model.hf_model)
    handle = lm.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            model.hf_model(**inp.to_hf())
    finally:
        handle.remove()
    _, cache = model.run_with_cache(inp, names_filter="hook_embed")
    image, real = inp.groups["image"], inp.attention_mask.bool()
    assert image.sum() > 0 and torch.equal(cache["hook_embed"][image], seen["x"][image])
    assert (cache["hook_embed"] - seen["x"])[real].abs().max() <= 1e-6


def test_decompose_resid_sums_to_the_final_residual(fam):
    _, model, inp = fam
    _, cache = model.run_with_cache(inp)
    parts = cache.decompose_resid()
    resid = cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"]
    real = inp.attention_mask.bool()
    assert (parts.sum(0) - resid)[real].abs().max() < 1e-5
    assert resid[inp.groups["image"]].abs().max() > 0.1


def test_to_hf_has_the_family_inputs(fam):
    kind, model, inp = fam
    kw = inp.to_hf()
    qwen_like = "qwen" in kind or kind.startswith("glm4v")
    extra = {"image_grid_thw", "mm_token_type_ids"} if qwen_like else {"token_type_ids"}
    tiles = {"pixel_attention_mask"}
    extra = {"internvl": set(), "idefics3": tiles, "smolvlm2": tiles, "llama4": set(),
             "llava-onevision-1.5": {"image_grid_thw"},
             "mistral3": {"image_sizes"},
             "mllama": {"aspect_ratio_ids", "aspect_ratio_mask", "cross_attention_mask"},
             "gemma4": {"mm_token_type_ids", "image_position_ids"},
             }.get(kind, extra)  # fmt: skip
    assert set(kw) == {"input_ids", "attention_mask", "position_ids", "pixel_values"} | extra
    for key in extra & {"token_type_ids", "mm_token_type_ids"}:
        if kind == "paligemma2":  # the whole prompt is the prefix: token type 0, as its processor
            assert not kw[key].any()
            continue
        assert torch.equal(kw[key].bool(), inp.groups["image"])
    assert "position_ids" not in inp.to_hf(generate=True)


def test_groups_and_grid_coordinates(fam):
    kind, model, inp = fam
    strs = model.to_str_tokens(inp, 0)
    grid = (4, 4) if kind in ("gemma3", "paligemma2") else (5, 7)
    cells = [f"<img {r},{c}>" for r in range(grid[0]) for c in range(grid[1])]
    if kind == "internvl":  # 20x28: a 2x2 grid of tiles 1-4, then the thumbnail (tile 0)
        cells = [f"<img {t}:{r},{c}>" for t in (1, 2, 3, 4, 0) for r in range(4) for c in range(4)]
    if kind in ("idefics3", "smolvlm2"):  # 20x28 -> 68x96 px: 3x3 tiles 1-9, then global (0)
        tiles = [*range(1, 10), 0]
        cells = [f"<img {t}:{r},{c}>" for t in tiles for r in range(4) for c in range(4)]
    if kind == "llama4":  # 20x28 fits one 28-px tile: 2x2 tokens, no global tile
        cells = [f"<img 0:{r},{c}>" for r in range(2) for c in range(2)]
    if kind == "mllama":  # one <|image|> token: the image side is not in the sequence
        cells = []
    if kind == "gemma4":  # 20x28 px resized to 42x54: 7x9 tokens of 6x6 px
        cells = [f"<img {r},{c}>" for r in range(7) for c in range(9)]
    assert [s for s in strs if s.startswith("<img ")] == cells
    question = [t for t, q in zip(inp.input_ids[0], inp.groups["question"][0], strict=True) if q]
    words = model.tokenizer.convert_ids_to_tokens(question)
    assert words == ["what", "is", "the", "main", "object", "in", "this", "image", "?"]
    role = model.tokenizer.convert_ids_to_tokens(inp.input_ids[0][inp.groups["role"][0]])
    marker = {
        "gemma3": "<end_of_image>", "internvl": "</img>", "idefics3": "<row_3_col_3>",
        "paligemma2": "<s>", "smolvlm2": "<row_3_col_3>", "glm4v": "<|end_of_image|>",
        "glm4v-moe": "<|end_of_image|>", "llama4": "<|image_end|>", "mistral3": "[IMG_END]",
        "mllama": "\n",  # the prompt's newline after <|image|> (no closing image token)
        "gemma4": "<image|>",
    }.get(kind, "<|vision_end|>")  # fmt: skip
    assert marker in role and "ASSISTANT" in role


def test_chat_template_and_native_placeholder(fam):
    kind, model, inp = fam
    chat = model.prepare(IMAGES[:1], "what is this ?", template="chat", system="You are helpful")
    sys_tokens = model.tokenizer.convert_ids_to_tokens(chat.input_ids[0][chat.groups["system"][0]])
    assert sys_tokens == ["You", "are", "helpful"]
    q = model.tokenizer.convert_ids_to_tokens(chat.input_ids[0][chat.groups["question"][0]])
    assert q == ["what", "is", "this", "?"]
    native = model.image_text.alias  # the family's own placeholder form
    raw = model.prepare(IMAGES[:1], PROMPTS[1].replace("<image>", native))
    generic = model.prepare(IMAGES[:1], PROMPTS[1])
    assert torch.equal(raw.input_ids, generic.input_ids)
    with pytest.raises(ValueError, match="image placeholder"):
        model.prepare([IMAGES], PROMPTS[1])


def test_several_images_and_a_text_only_row_match_hf(fam):
    _, model, _ = fam
    prompts = ["USER: <image> and <image>\nwhat is this ? ASSISTANT:",
               "USER: what is <image> this ? ASSISTANT:", "USER: what is this ? ASSISTANT:"]
    images = [[IMAGES[0], noise_image(40, 24, 3)], IMAGES[1], None]
    inp = model.prepare(images, prompts)
    assert inp.groups["image"].sum(-1)[2] == 0
    with torch.no_grad():
        ref = model.hf_model(**inp.to_hf()).logits
        text_only = inp.select(2)
        ref_text = model.hf_model(**text_only.to_hf()).logits
    real = inp.attention_mask.bool()
    assert (model(inp) - ref)[real].abs().max() <= 1e-4
    assert (model(text_only) - ref_text).abs().max() <= 1e-4


def test_select_picks_each_examples_pixels(fam):
    _, model, inp = fam
    full = model(inp)
    for i in range(2):
        one = inp.select(i)
        n = one.shape[1]
        assert (model(one)[0] - full[i, -n:]).abs().max() <= 1e-4


def test_gemma3_prepare_equals_the_hf_processor(tiny_checkpoint):
    folder = tiny_checkpoint("gemma3", chat_template=True)
    model = HookedLVLM.from_pretrained(folder)
    inp = model.prepare(IMAGES, ["what is this ?", "what is the main object ?"], template="chat")
    model.tokenizer.padding_side = "left"
    proc = Gemma3Processor(model.image_processor, model.tokenizer, image_seq_length=16)
    enc = proc(text=inp.texts, images=[[im] for im in IMAGES], return_tensors="pt",
               padding=True, add_special_tokens=False)
    kw = inp.to_hf()
    for key in ("input_ids", "attention_mask", "pixel_values", "token_type_ids"):
        assert torch.equal(enc[key].to(kw[key].dtype), kw[key]), key


def test_qwen_input_ids_are_the_processor_expansion(tiny_checkpoint):
    """The Qwen2-VL processor needs torchvision; its rule is: each ``<|image_pad|>`` becomes
    ``grid.prod() // merge**2`` copies."""
    model = HookedLVLM.from_pretrained(tiny_checkpoint("qwen2-vl", chat_template=True))
    inp = model.prepare(IMAGES[:1], "what is this ?", template="chat")
    n = int(inp.image_grid.prod() // 4)
    expected = model.tokenizer(inp.texts[0].replace("<|image_pad|>", "<|image_pad|>" * n))
    assert inp.input_ids[0].tolist() == expected.input_ids


def test_mrope_positions(tiny_checkpoint):
    model = HookedLVLM.from_pretrained(tiny_checkpoint("qwen2-vl", chat_template=True))
    inp = model.prepare(IMAGES, PROMPTS)
    pos, image = inp.position_ids, inp.groups["image"]
    assert pos.shape == (3, *inp.shape)
    for i in range(2):
        coords = torch.cat(inp.image_coords[inp.image_slice(i)])
        start = int(pos[0, i][image[i]][0])
        assert (pos[0, i][image[i]] == start).all()  # one frame
        assert torch.equal(pos[1, i][image[i]] - start, coords[:, 1])
        assert torch.equal(pos[2, i][image[i]] - start, coords[:, 2])
        after = int(image[i].nonzero().max()) + 1
        assert (pos[:, i, after] == pos[:, i][:, image[i]].max() + 1).all()
    # the M-RoPE positions matter: 1-D positions give other logits
    one_d = model.run_blocks(model.embed_input(inp), inp.attention_mask, layout=TokenLayout())[0]
    real = inp.attention_mask.bool()
    assert (one_d - model(inp, stop_at_layer=model.cfg.n_layers))[real].abs().max() > 1e-3


def test_gemma3_image_tokens_attend_both_ways(tiny_checkpoint):
    model = HookedLVLM.from_pretrained(tiny_checkpoint("gemma3", chat_template=True))
    inp = model.prepare(IMAGES, PROMPTS)
    _, cache = model.run_with_cache(inp, names_filter=lambda n: n.endswith("hook_pattern"))
    img = inp.positions("image", 0)
    for layer in range(model.cfg.n_layers):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"][0][:, img][:, :, img]
        assert (pattern.triu(1) > 0).any()  # earlier image tokens see later ones
        text = inp.positions("text", 0)
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"][0][:, text][:, :, text]
        assert (pattern.triu(1) == 0).all()  # text stays causal
    # HF without the image blocks (no token_type_ids) differs: the equality with HF is not vacuous
    kw = inp.to_hf()
    with torch.no_grad():
        causal = model.hf_model(**{k: v for k, v in kw.items() if k != "token_type_ids"}).logits
    real = inp.attention_mask.bool()
    assert (causal - model(inp))[real].abs().max() > 1e-3
    # a prefix may not cut an image in two
    with pytest.raises(ValueError, match="cuts an image"):
        model.run_prefix(inp, int(img[3]))


def test_qwen3_deepstack_enters_early_layers_at_image_positions(tiny_checkpoint):
    model = HookedLVLM.from_pretrained(tiny_checkpoint("qwen3-vl", chat_template=True))
    inp = model.prepare(IMAGES, PROMPTS)
    _, cache = model.run_with_cache(inp, names_filter=lambda n: "deepstack" in n)
    image = inp.groups["image"]
    for layer in range(2):  # both vision layers feed DeepStack: decoder layers 0 and 1
        deep = cache[f"blocks.{layer}.hook_deepstack"]
        assert deep[image].abs().min() > 0 and (deep[~image] == 0).all()
    real = inp.attention_mask.bool()
    zero = [(f"blocks.{i}.hook_deepstack", lambda t, hook: t * 0) for i in range(2)]
    assert (model.run_with_hooks(inp, fwd_hooks=zero) - model(inp))[real].abs().max() > 1e-3
    with pytest.raises(ValueError, match="DeepStack"):
        model(inp.with_image_embeds(model.image_embeddings(inp)))
    # precomputed embeddings with their DeepStack features are the run on pixels
    pre = inp.with_image_embeds(*model.image_features(inp))
    assert pre.pixel_values is None
    assert (model(pre) - model(inp))[real].abs().max() <= 1e-6
    assert torch.allclose(model(pre.select(1)), model(inp.select(1)), atol=1e-6)


@pytest.mark.parametrize("split", [True, False])
def test_idefics3_prepare_equals_the_hf_processor(tiny_checkpoint, split):
    """Idefics3's processor needs no torchvision: our tile layout is its own, token for token,
    on a batch whose images give 3x3, 3x1 and 3x2 tiles (one each without splitting), with
    several images in one example."""
    folder = tiny_checkpoint("idefics3", chat_template=True)
    proc = AutoProcessor.from_pretrained(folder)
    proc.image_processor.do_image_splitting = split
    model = HookedLVLM.from_hf(HookedLVLM.from_pretrained(folder).hf_model, proc)
    images = [[IMAGES[0], noise_image(54, 16, 4)], IMAGES[1]]
    inp = model.prepare(images, ["what is this ?", "what is the main object ?"], template="chat")
    assert inp.image_tiles.tolist() == ([10, 4, 7] if split else [1, 1, 1])
    proc.tokenizer.padding_side = "left"
    enc = proc(text=inp.texts, images=[images[0], [images[1]]], return_tensors="pt", padding=True,
               add_special_tokens=False)
    kw = inp.to_hf()
    for key in ("input_ids", "attention_mask", "pixel_values", "pixel_attention_mask"):
        assert torch.equal(enc[key].to(kw[key].dtype), kw[key]), key
    assert inp.texts[1] == "<s>User:<image>what is the main object ?<end_of_utterance>\nAssistant:"
    # SmolVLM's raw format: the user's turn ends at <end_of_utterance>
    raw = model.prepare(IMAGES[:1], inp.texts[1])
    q = model.tokenizer.convert_ids_to_tokens(raw.input_ids[0][raw.groups["question"][0]])
    assert q == ["what", "is", "the", "main", "object", "?"]
    with torch.no_grad():
        sub = inp.select(1)  # its tiles and their pixel masks
        assert (model(sub)[0] - model.hf_model(**sub.to_hf()).logits[0]).abs().max() <= 1e-4


def test_qwen3_deepstack_features_are_hfs_at_image_positions_from_one_tower_run(tiny_checkpoint):
    """``hook_deepstack`` of decoder layer ``l`` holds HF's DeepStack feature ``l`` of each image
    token, in order, at the image positions (zero elsewhere), and one forward (or prefill) runs
    the vision tower once: the features come from the run that gave the image embeddings."""
    model = HookedLVLM.from_pretrained(tiny_checkpoint("qwen3-vl", chat_template=True))
    inp = model.prepare(IMAGES, PROMPTS)
    with torch.no_grad():
        hf = model.hf_model.model.get_image_features(
            inp.pixel_values, inp.image_grid, return_dict=True).deepstack_features
    image = inp.groups["image"]
    runs = []
    handle = model.hf_model.model.visual.register_forward_hook(lambda *a: runs.append(1))
    try:
        _, cache = model.run_with_cache(inp, names_filter=lambda n: "deepstack" in n)
        assert len(runs) == 1
        model.prefill(inp)
        assert len(runs) == 2
    finally:
        handle.remove()
    assert len(hf) == 2
    for layer, feats in enumerate(hf):
        deep = cache[f"blocks.{layer}.hook_deepstack"]
        assert torch.allclose(deep[image], torch.cat(list(feats)), atol=1e-6)
        assert (deep[~image] == 0).all()
