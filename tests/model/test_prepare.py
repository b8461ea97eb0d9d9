"""Input preparation: token groups, templates, image conversion and bad input."""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from lvlm_lens import HookedLVLM
from lvlm_lens.model.loading import check_supported
from lvlm_lens.model.prepare import MIN_IMAGE_SIDE, prepare_inputs
from tests.helpers import PROMPTS, noise_image


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return HookedLVLM.from_pretrained(tiny_checkpoint("llava-llama"))


def group_tokens(model, inp, group, index=0):
    ids = inp.input_ids[index][inp.groups[group][index]]
    return model.tokenizer.convert_ids_to_tokens(ids.tolist())


def test_token_groups_of_a_raw_prompt(model):
    inp = model.prepare(noise_image(20, 20), "a helpful assistant . " + PROMPTS[0])
    assert group_tokens(model, inp, "bos") == ["<s>"]
    assert group_tokens(model, inp, "system") == ["a", "helpful", "assistant", "."]
    assert group_tokens(model, inp, "role") == ["USER", ":", "\n", "ASSISTANT"]
    assert group_tokens(model, inp, "question") == "what is the main object in this image ?".split()
    assert group_tokens(model, inp, "final") == [":"]
    assert int(inp.groups["image"].sum()) == 16
    text = inp.groups["text"][0]
    assert torch.equal(text, inp.attention_mask[0].bool() & ~inp.groups["image"][0])
    tokens = model.to_str_tokens(inp)
    assert tokens[7:9] == ["<img 0,0>", "<img 0,1>"] and tokens[-1] == ":"


def test_chat_template_with_system_message(tiny_checkpoint):
    model = HookedLVLM.from_pretrained(tiny_checkpoint("llava-onevision-qwen2", chat_template=True))
    inp = model.prepare(
        [noise_image(20, 20)],
        ["what is the main object ?"],
        template="chat",
        system="you are a helpful assistant .",
    )
    assert "<|im_start|>assistant" in inp.texts[0]
    assert group_tokens(model, inp, "question") == "what is the main object ?".split()
    assert group_tokens(model, inp, "system") == "you are a helpful assistant .".split()
    assert "<|im_start|>" in group_tokens(model, inp, "role")


def test_plain_template_without_chat_template(model):
    inp = model.prepare([noise_image(20, 20)], ["what is this ?"], template="chat")
    assert inp.texts[0] == "USER: <image>\nwhat is this ? ASSISTANT:"


def test_left_padding_and_select(model):
    inp = model.prepare([noise_image(20, 20, 1), noise_image(20, 20, 2)], PROMPTS)
    assert inp.attention_mask[0].all() and not inp.attention_mask[1].all()
    one = inp.select([1])
    assert one.attention_mask.all()  # padding-only columns dropped
    assert torch.allclose(model(one)[0], model(inp)[1][inp.attention_mask[1].bool()], atol=1e-5)


def test_precomputed_image_embeds_equal_pixels(model):
    inp = model.prepare([noise_image(20, 20, 1), noise_image(20, 20, 2)], PROMPTS)
    embeds = model.image_embeddings(inp)
    assert torch.allclose(model(inp.with_image_embeds(embeds)), model(inp), atol=1e-6)
    with pytest.raises(ValueError, match="image embeddings"):
        inp.with_image_embeds(embeds[:1])


def test_image_without_placeholder_is_refused(model):
    with pytest.raises(ValueError, match="0 image placeholder.*1 image"):
        model.prepare(noise_image(20, 20), "what is this ? ASSISTANT:")


def test_placeholder_without_image_is_refused(model):
    with pytest.raises(ValueError, match="1 image placeholder.*0 image"):
        model.prepare(None, PROMPTS[0])


def test_image_count_must_match_placeholders(model):
    with pytest.raises(ValueError, match="2 image placeholder.*1 image"):
        model.prepare(noise_image(20, 20), "USER: <image> <image>\nwhat ? ASSISTANT:")
    with pytest.raises(ValueError, match="image entries"):
        model.prepare([noise_image(20, 20)] * 2, PROMPTS[0])


def test_chat_template_rejects_a_placeholder_in_the_question(model):
    with pytest.raises(ValueError, match="bare question"):
        model.prepare(noise_image(20, 20), PROMPTS[0], template="chat")


def test_rgba_grayscale_and_tiny_images_are_converted(model):
    rgb = noise_image(20, 20, 3)
    rgba = rgb.copy()
    rgba.putalpha(255)
    base = model.prepare(rgb, PROMPTS[0]).pixel_values
    assert torch.equal(model.prepare(rgba, PROMPTS[0]).pixel_values, base)
    gray = rgb.convert("L")
    as_rgb = model.prepare(gray.convert("RGB"), PROMPTS[0]).pixel_values
    assert torch.equal(model.prepare(gray, PROMPTS[0]).pixel_values, as_rgb)
    transparent = Image.new("RGBA", (20, 20), (0, 0, 0, 0))  # composited onto white
    white = model.prepare(Image.new("RGB", (20, 20), "white"), PROMPTS[0]).pixel_values
    assert torch.equal(model.prepare(transparent, PROMPTS[0]).pixel_values, white)
    for h, w in [(1, 1), (3, 5), (2, 40)]:
        pixels = np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8)
        f = -(-MIN_IMAGE_SIDE // min(h, w))  # upscaled by a whole factor, nearest neighbour
        by_hand = Image.fromarray(pixels.repeat(f, 0).repeat(f, 1))
        assert min(by_hand.size) >= MIN_IMAGE_SIDE
        with pytest.warns(UserWarning, match="MIN_IMAGE_SIDE"):
            got = model.prepare(Image.fromarray(pixels), PROMPTS[0]).pixel_values
        assert torch.equal(got, model.prepare(by_hand, PROMPTS[0]).pixel_values)


def test_tiny_images_warn_once_per_call(model):
    """Upscaled silently, a 1x1 image is mispredicted without a hint: one warning per call,
    however many images are tiny, and none for images of at least MIN_IMAGE_SIDE."""
    tiny = [Image.new("RGB", (1, 1), "red"), Image.new("RGB", (3, MIN_IMAGE_SIDE), "blue")]
    with pytest.warns(UserWarning) as caught:
        model.prepare(tiny, PROMPTS)
    assert len(caught) == 1
    assert "2 image(s)" in str(caught[0].message) and "smallest 1x1" in str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.prepare(Image.new("RGB", (MIN_IMAGE_SIDE, MIN_IMAGE_SIDE)), PROMPTS[0])


def test_answers_outside_the_vocabulary_are_refused(model):
    """The tiny tokenizer is word-level: 'elephant' maps to <unk>, which must not be scored."""
    with pytest.raises(ValueError, match="answer 'elephant' is not in the model's vocabulary"):
        model.prepare(noise_image(20, 20), PROMPTS[0], answers="elephant")
    with pytest.raises(ValueError, match="answer 'cat elephant' is not in the model's vocab"):
        model.prepare(noise_image(20, 20), PROMPTS[0], answers="cat elephant", answer_rule="first")
    with pytest.raises(ValueError, match="'elephant' is not in the model's vocabulary"):
        model.to_single_token("elephant")
    with pytest.raises(ValueError, match="'elephant' is not"):
        model.tokens_to_residual_directions("elephant")
    assert model.to_single_token("cat") != model.tokenizer.unk_token_id
    inp = model.prepare(noise_image(20, 20), PROMPTS[0], answers="cat")
    assert inp.answer_ids.tolist() == [model.to_single_token("cat")]


def test_help_shows_the_real_parameters_of_prepare(model):
    params = inspect.signature(model.prepare).parameters
    assert not any(p.kind is p.VAR_KEYWORD for p in params.values())
    expected = list(inspect.signature(prepare_inputs).parameters)[1:]  # without `model`
    assert list(params) == expected
    for name in ("template", "system", "answer_rule"):
        assert params[name].default == inspect.signature(prepare_inputs).parameters[name].default
        assert f"{name}:" in model.prepare.__doc__


def test_multi_token_answers(model):
    with pytest.raises(ValueError, match="2 tokens.*answer_rule='first'"):
        model.prepare(noise_image(20, 20), PROMPTS[0], answers="red star")
    inp = model.prepare(noise_image(20, 20), PROMPTS[0], answers="red star", answer_rule="first")
    assert inp.answer_ids.tolist() == [model.to_single_token("red")]


def test_unsupported_architectures(tmp_path):
    with pytest.raises(ValueError, match="unsupported architecture 'llama'"):
        check_supported(transformers.LlamaConfig())
    with pytest.raises(ValueError, match="unsupported language backbone 'gemma'.*Llama"):
        check_supported(transformers.LlavaConfig(text_config=transformers.GemmaConfig().to_dict()))
    with pytest.raises(ValueError, match="unsupported language backbone 'gemma' for PaliGemma"):
        check_supported(transformers.PaliGemmaConfig())  # PaliGemma 1: a Gemma 1 backbone
    with pytest.raises(ValueError) as err:
        check_supported(transformers.Blip2Config())
    for name in ("Qwen/Qwen2.5-VL-7B-Instruct", "google/gemma-3-4b-it", "llava-hf/llava-1.5-7b-hf",
                 "HuggingFaceTB/SmolVLM-256M-Instruct"):
        assert name in str(err.value)  # the error lists what is supported
    with pytest.raises(ValueError, match="attn_logit_softcapping"):
        check_supported(transformers.Gemma3Config(text_config={"attn_logit_softcapping": 50.0}))
    cfg = transformers.LlamaConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        vocab_size=32,
    )
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="unsupported architecture"):
        HookedLVLM.from_pretrained(tmp_path)


def test_folder_without_processor_files(tiny_checkpoint, tmp_path):
    import shutil

    folder = tmp_path / "noproc"
    shutil.copytree(tiny_checkpoint("llava-llama"), folder)
    for name in ("preprocessor_config.json", "processor_config.json"):
        (folder / name).unlink(missing_ok=True)
    with pytest.raises(ValueError, match="image processor"):
        HookedLVLM.from_pretrained(folder)


def test_fp16_on_cpu_is_refused(tiny_checkpoint):
    with pytest.raises(ValueError, match="float16 on CPU"):
        HookedLVLM.from_pretrained(tiny_checkpoint("llava-llama"), dtype="float16", device="cpu")
