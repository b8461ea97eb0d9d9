"""SmolVLM2: the tokens of a left-padded batch = HF's expansion of ``<image>``.

HF's ``SmolVLMProcessor`` needs ``num2words`` (for video prompts), which is not installed, so the
reference is built from its parts: the tokenizer's own chat template, HF's module-level
``get_image_prompt_string`` over the image processor's tile grid, and the tokenizer."""

from __future__ import annotations

from transformers.models.smolvlm.processing_smolvlm import get_image_prompt_string

from lvlm_lens import HookedLVLM
from lvlm_lens.testing.tiny_smolvlm import SMOLVLM_SEQ_LEN
from tests.helpers import noise_image

PROMPTS = ["what is this ?", "what is the main object ?"]


def test_smolvlm2_input_ids_are_hfs_expansion(tiny_checkpoint):
    model = HookedLVLM.from_pretrained(tiny_checkpoint("smolvlm2", chat_template=True))
    images = [noise_image(20, 28, 1), noise_image(30, 18, 2)]
    inp = model.prepare(images, PROMPTS, template="chat")
    tok = model.tokenizer
    out = model.image_processor(images=[[im] for im in images], return_row_col_info=True)
    assert inp.image_tiles.tolist() == [10, 7]  # 3x3 and 3x2 tiles, each plus the global image
    for i, prompt in enumerate(PROMPTS):
        content = [{"type": "image"}, {"type": "text", "text": prompt}]
        messages = [{"role": "user", "content": content}]
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert text.startswith("<|im_start|>User:<image>") and inp.texts[i] == text
        image = get_image_prompt_string(out["rows"][i][0], out["cols"][i][0], SMOLVLM_SEQ_LEN,
                                        "<fake_token_around_image>", "<image>", "<global-img>")
        expected = tok(text.replace("<image>", image)).input_ids  # adds no special token
        real = inp.attention_mask[i].bool()
        assert inp.input_ids[i][real].tolist() == expected
    assert inp.attention_mask[1, 0] == 0, "left-padded (the second has fewer tiles)"
