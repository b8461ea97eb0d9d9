"""Builders of the tiny kinds that live in a module of their own (one per family), by kind.

Each builder takes ``(folder, *, seed, chat_template, vision, lvlm, processor,
**text_overrides)`` as :func:`~lvlm_lens.testing.tiny.build_tiny_checkpoint` does. Adding a
family's tiny kind means adding its module and one line here.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

from lvlm_lens.testing.tiny_gemma4 import GEMMA4_KIND, build_gemma4_checkpoint
from lvlm_lens.testing.tiny_glm4v import GLM4V_KIND, GLM4V_MOE_KIND, build_glm4v_checkpoint
from lvlm_lens.testing.tiny_llama4 import LLAMA4_KIND, build_llama4_checkpoint
from lvlm_lens.testing.tiny_mistral3 import MISTRAL3_KIND, build_mistral3_checkpoint
from lvlm_lens.testing.tiny_mllama import MLLAMA_KIND, build_mllama_checkpoint
from lvlm_lens.testing.tiny_smolvlm import SMOLVLM_KIND, build_smolvlm_checkpoint

#: Builder per tiny kind.
BUILDERS: dict[str, Callable[..., Path]] = {
    SMOLVLM_KIND: build_smolvlm_checkpoint,
    GLM4V_KIND: build_glm4v_checkpoint,
    GLM4V_MOE_KIND: partial(build_glm4v_checkpoint, moe=True),
    LLAMA4_KIND: build_llama4_checkpoint,
    MLLAMA_KIND: build_mllama_checkpoint,
    MISTRAL3_KIND: build_mistral3_checkpoint,
    GEMMA4_KIND: build_gemma4_checkpoint,
}
#: The kinds of :data:`BUILDERS`.
MORE_KINDS = tuple(BUILDERS)
