"""The TransformerLens-parity tests of the analysis surface (``W_Q`` ..., ``OV`` / ``QK``,
``accumulated_bias``, ``all_composition_scores``, ``SVDInterpreter``, ``detect_head``) rerun on
every tiny family kind, with a text prompt and an image input, as ``test_tl_families`` does for
the cache, switch and token tests (one model per kind, loaded once for the module).
"""

from __future__ import annotations

import pytest

from lvlm_lens import HookedLVLM
from tests.model.test_tl_analysis import (  # noqa: F401 (collected here again)
    test_accumulated_bias_sums_the_planted_output_biases,
    test_composition_scores_by_the_frobenius_formula,
    test_detect_head_finds_a_planted_head,
    test_ov_and_qk_are_the_heads_circuits,
    test_svd_interpreter_projects_the_right_singular_vectors,
    test_weight_views_are_the_hf_weights_per_head,
)
from tests.model.test_tl_families import KINDS

#: Not Qwen3.5 / Qwen3.5-MoE: these tests read TL's layer-stacked views (model.W_Q, OV ...),
#: which a linear-attention layer (no per-head weights) cannot join; the stacks are refused in
#: one line (test_tl_analysis::test_a_stack_over_unlike_layers_is_refused_in_one_line). Their
#: Qwen3.5 counterparts, text and image (detect_head, composition scores, SVDInterpreter,
#: test_prompt, the patching sweeps with NaN rows for the linear layers), are in
#: test_tl_linear_layers.
ANALYSIS_KINDS = [k for k in KINDS if k not in ("qwen3.5", "qwen3.5-moe")]
#: Not Gemma 4 either: its global layers' wider heads make the layer stacks differ in shape
#: (refused in one line, tests/model/test_gemma4.py) and its K/V-sharing layers have no W_K /
#: W_V of their own; its per-layer weight views are still to be tested (left for later).
ANALYSIS_KINDS = [k for k in ANALYSIS_KINDS if k != "gemma4"]


@pytest.fixture(scope="module", params=ANALYSIS_KINDS)
def model(request, tiny_checkpoint):
    return HookedLVLM.from_pretrained(tiny_checkpoint(request.param))
