"""The TransformerLens-parity tests of cache and hook semantics, conditional-hook switches and
tokenisation helpers, rerun on every tiny family kind, each with a text
prompt and an image input (the modules they come from run them on the toy and a tiny GQA
checkpoint, ``llava-onevision-qwen2``).

The test functions are imported from their modules unchanged, so pytest collects them here a
second time with this module's ``model`` fixture: one model per kind, loaded once for the whole
module. Only the cheap tests are rerun (no patching sweeps, no per-head input edits); the
analysis surface's are in ``test_tl_families_analysis``.
"""

from __future__ import annotations

import pytest

from lvlm_lens import HookedLVLM
from lvlm_lens.testing.tiny import TINY_KINDS
from tests.model.test_tl_cache import (  # noqa: F401 (collected here again)
    test_image_embeds_are_batch_first_for_cache_utilities,
    test_pos_slice_slices_every_position_axis,
    test_remove_batch_dim_with_pos_slice,
    test_run_with_cache_logits_equal_forward_bit_for_bit,
)
from tests.model.test_tl_switches import (  # noqa: F401
    test_every_switch_on_fires_tl_shapes_and_keeps_logits,
    test_switched_off_points_are_refused_naming_the_switch,
)
from tests.model.test_tl_tokens import (  # noqa: F401
    test_get_token_position,
    test_to_str_tokens_text_tokens_and_image,
    test_to_tokens_keywords,
)

#: Every tiny kind but the GQA one the source modules already run on.
KINDS = [k for k in TINY_KINDS if k not in ("llava-onevision-qwen2",)]


@pytest.fixture(scope="module", params=KINDS)
def model(request, tiny_checkpoint):
    return HookedLVLM.from_pretrained(tiny_checkpoint(request.param))
