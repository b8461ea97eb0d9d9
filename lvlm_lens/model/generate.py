"""Greedy generation with a KV cache, returning what TransformerLens' ``generate`` returns."""

from __future__ import annotations

from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lvlm_lens.model.inputs import LVLMInput
from lvlm_lens.model.kv_cache import KVCache
from lvlm_lens.progress import progress_bar

GenerateReturn = Literal["input", "tokens", "str"]


def decode_step(
    model: Any, tokens: Int[Tensor, "batch new"], cache: KVCache
) -> Float[Tensor, "batch d_vocab"]:
    """Run newly decoded tokens after an unfrozen cache (extended in place); next-token logits.

    Decoded tokens are embedded as ordinary tokens, the image token id included, as HF does:
    only the prompt's image placeholders carry an image.
    """
    mask = torch.ones_like(tokens)
    x = model.hook_embed(model.embed(tokens))
    resid, kvs = model.run_blocks(x, mask, cache)
    cache.append(kvs, mask)
    return model.unembed(model.ln_final(resid[:, -1]))


@torch.no_grad()
def greedy_generate(
    model: Any,
    input: LVLMInput | Tensor | str | list[str],
    max_new_tokens: int = 10,
    *,
    eos_token_id: int | list[int] | None = None,
    return_type: GenerateReturn = "input",
    new_tokens_only: bool = False,
    verbose: bool = False,
) -> Int[Tensor, "batch pos"] | list[str] | str:
    """Greedy decoding; finished rows are padded with the pad token, as HF does.

    Args:
        model: The :class:`~lvlm_lens.HookedLVLM`.
        input: A batch from ``model.prepare``, or the text / token ids of a text-only prompt.
        max_new_tokens: Number of tokens to generate at most.
        eos_token_id: Stop token(s); default: the checkpoint's generation config.
        return_type: ``"tokens"``, ``"str"`` or ``"input"`` (as TransformerLens: text for text
            input, tokens otherwise).
        new_tokens_only: Return only the new tokens (or their text), without the prompt.
        verbose: Show a progress bar.

    Returns:
        Tokens ``[batch, prompt + new]``: the (left-padded, image-expanded) prompt ids followed
        by the new ids, exactly what HF ``generate`` returns; ``[batch, new]`` with
        ``new_tokens_only``. Or the decoded text per example (special tokens, image
        placeholders and padding skipped), one string for a string input.
    """
    if return_type not in ("input", "tokens", "str"):
        raise ValueError(f"return_type must be 'input', 'tokens' or 'str', got {return_type!r}")
    if return_type == "input":
        return_type = "str" if isinstance(input, str | list) else "tokens"
    if eos_token_id is None:
        eos_token_id = model.hf_model.generation_config.eos_token_id
    device = model.cfg.device
    eos = torch.as_tensor([] if eos_token_id is None else eos_token_id, device=device).flatten()
    pad = model.tokenizer.pad_token_id
    pad = model.cfg.pad_token_id if pad is None else pad
    inp = model._as_input(input)
    resid, cache = model.prefill(inp, frozen=False)
    logits = model.unembed(model.ln_final(resid[:, -1]))
    done = torch.zeros(len(inp), dtype=torch.bool, device=device)
    out = []
    for step in progress_bar(range(max_new_tokens), show=verbose, desc="generate"):
        nxt = logits.argmax(-1).masked_fill(done, pad)
        out.append(nxt)
        done = done | torch.isin(nxt, eos)
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        logits = decode_step(model, nxt[:, None], cache)
    tokens = torch.stack(out, dim=1) if out else inp.input_ids.new_zeros(len(inp), 0).to(device)
    if not new_tokens_only:
        tokens = torch.cat([inp.input_ids.to(device), tokens], dim=1)
    if return_type == "tokens":
        return tokens
    text = model.tokenizer.batch_decode(tokens, skip_special_tokens=True)
    return text[0] if isinstance(input, str) else text
