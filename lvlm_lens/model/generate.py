"""Greedy generation with a KV cache."""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor
from tqdm.auto import tqdm

from lvlm_lens.model.inputs import LVLMInput


@torch.no_grad()
def greedy_generate(
    model: Any,
    input: LVLMInput,
    max_new_tokens: int = 10,
    *,
    eos_token_id: int | list[int] | None = None,
    return_type: str = "tokens",
    verbose: bool = False,
) -> Int[Tensor, "batch new"] | list[str]:
    """Greedy decoding; finished rows are padded with the pad token, as HF does.

    Args:
        model: The :class:`~lvlm_lens.HookedLVLM`.
        input: A batch from ``model.prepare``.
        max_new_tokens: Number of tokens to generate at most.
        eos_token_id: Stop token(s); default: the checkpoint's generation config.
        return_type: ``"tokens"`` (new token ids) or ``"str"`` (decoded new text per example).
        verbose: Show a progress bar.
    """
    if eos_token_id is None:
        eos_token_id = model.hf_model.generation_config.eos_token_id
    eos = torch.as_tensor(
        [] if eos_token_id is None else eos_token_id, device=model.cfg.device
    ).flatten()
    pad = (
        model.tokenizer.pad_token_id
        if model.tokenizer.pad_token_id is not None
        else model.cfg.pad_token_id
    )
    resid, cache = model.prefill(input, frozen=False)
    logits = model.unembed(model.ln_final(resid[:, -1]))
    done = torch.zeros(len(input), dtype=torch.bool, device=model.cfg.device)
    out = []
    for step in tqdm(range(max_new_tokens), disable=not verbose, desc="generate"):
        nxt = logits.argmax(-1).masked_fill(done, pad)
        out.append(nxt)
        done = done | torch.isin(nxt, eos)
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        logits = model(nxt[:, None], past_kv_cache=cache)[:, -1]
    tokens = torch.stack(out, dim=1)
    if return_type == "str":
        return model.tokenizer.batch_decode(tokens, skip_special_tokens=True)
    return tokens
