"""Generation with a KV cache, as TransformerLens' ``generate``: greedy or sampled, from text,
tokens, embeddings or an :class:`LVLMInput` (images included), with TransformerLens' or our
own KV cache."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry
from transformer_lens.utilities import sample_logits

from lvlm_lens.model.inputs import LVLMInput
from lvlm_lens.model.kv_cache import KVCache
from lvlm_lens.progress import progress_bar

GenerateReturn = Literal["input", "str", "tokens", "embeds"]
AnyKVCache = KVCache | TransformerLensKeyValueCache


def decode_step(
    model: Any, tokens: Int[Tensor, "batch new"], cache: KVCache
) -> Float[Tensor, "batch d_vocab"]:
    """Run newly decoded tokens after an unfrozen cache (extended in place); next-token logits.

    Decoded tokens are embedded as ordinary tokens, the image token id included, as HF does:
    only the prompt's image placeholders carry an image.
    """
    mask = torch.ones_like(tokens)
    x = model.hook_embed(model.embed(tokens))
    resid, kvs = model.run_blocks(x, mask, cache, layout=model.text_layout(tokens, x))
    cache.append(kvs, mask)
    return model.unembed(model.ln_final(resid[:, -1]))


def from_tl_cache(tl: TransformerLensKeyValueCache) -> KVCache:
    """Our unfrozen cache holding a TransformerLens cache's keys, values and mask."""
    keys = [e.past_keys.transpose(1, 2) for e in tl.entries]
    values = [e.past_values.transpose(1, 2) for e in tl.entries]
    nxt = getattr(tl, "lvlm_next_position", None)
    return KVCache(keys, values, tl.previous_attention_mask.long(), frozen=False,
                   next_position=nxt, states=getattr(tl, "lvlm_states", None),
                   cross=getattr(tl, "lvlm_cross", None))


def to_tl_cache(cache: KVCache, tl: TransformerLensKeyValueCache) -> None:
    """Write our cache into a TransformerLens cache, as ``[batch, pos, kv_head, d_head]``."""
    tl.entries = [
        TransformerLensKeyValueCacheEntry(k.transpose(1, 2), v.transpose(1, 2), frozen=tl.frozen)
        for k, v in zip(cache.keys, cache.values, strict=True)
    ]
    tl.previous_attention_mask = cache.attention_mask.clone()
    tl.lvlm_next_position = cache.start_positions()  # M-RoPE positions outrun the mask
    tl.lvlm_states = cache.states  # linear attention (Qwen3.5): no K/V, a recurrent state
    tl.lvlm_cross = cache.cross  # cross-attention (Llama 3.2 Vision): what later tokens read


def extend_input(
    inp: LVLMInput, new: Int[Tensor, "batch new"], new_mask: Int[Tensor, "batch new"]
) -> LVLMInput:
    """``inp`` followed by ``new`` tokens (in no token group), images kept."""
    n, dev = new.shape[1], inp.input_ids.device
    new, new_mask = new.to(dev), new_mask.to(dev)
    pos = inp.position_ids
    if pos is not None:  # M-RoPE: text after the prompt continues from its largest position
        real = inp.attention_mask.to(pos.device) > 0
        nxt = pos.masked_fill(~real, -1).amax(dim=(0, 2)) + 1
        steps = nxt[:, None] + new_mask.to(pos.device).cumsum(-1) - 1
        pos = torch.cat([pos, steps.expand(pos.shape[0], -1, -1)], dim=2)
    return replace(
        inp,
        input_ids=torch.cat([inp.input_ids, new], 1),
        attention_mask=torch.cat([inp.attention_mask, new_mask.to(inp.attention_mask.dtype)], 1),
        groups={k: torch.cat([v, v.new_zeros(v.shape[0], n)], 1) for k, v in inp.groups.items()},
        position_ids=pos,
    )


class GenerateMixin:
    """``generate`` of :class:`~lvlm_lens.HookedLVLM`."""

    cfg: Any
    tokenizer: Any

    @torch.no_grad()
    def generate(
        self: Any,
        input: str | list[str] | Tensor | LVLMInput = "",
        max_new_tokens: int = 10,
        stop_at_eos: bool = True,
        eos_token_id: int | list[int] | None = None,
        do_sample: bool = False,
        top_k: int | None = None,
        top_p: float | None = None,
        temperature: float = 1.0,
        freq_penalty: float = 0.0,
        use_past_kv_cache: bool = True,
        prepend_bos: bool | None = None,
        padding_side: str | None = None,
        return_type: GenerateReturn = "input",
        verbose: bool = False,
        output_logits: bool = False,
        *,
        return_cache: bool = False,
        names_filter: Any = None,
        past_kv_cache: AnyKVCache | None = None,
        attention_mask: Int[Tensor, "batch pos"] | None = None,
        new_tokens_only: bool = False,
    ) -> Any:
        """Generate as TransformerLens' ``generate``, images included.

        Unlike TransformerLens, decoding is greedy unless ``do_sample=True`` (so the default is
        reproducible and equals HF ``generate`` token for token), and a row that has stopped is
        padded with the pad token, as HF does (TransformerLens pads with EOS). Sampling is
        TransformerLens' ``sample_logits`` on torch's global generator: the same
        ``torch.manual_seed`` gives the same output.

        Args:
            input: Text, a list of texts (left-padded), token ids (text-only, or bound with
                ``model.bind``), input embeddings ``[batch, pos, d_model]`` (what
                ``hook_embed`` gives) or an :class:`LVLMInput` from ``model.prepare``.
            max_new_tokens: Number of tokens to generate at most.
            stop_at_eos: Stop a row at an EOS token (``False``: always generate them all).
            eos_token_id: Stop token(s); default: the checkpoint's generation config, else
                the tokenizer's EOS (``[]``: none).
            do_sample: Sample (with ``temperature``, ``top_k`` or ``top_p``, and
                ``freq_penalty``) instead of taking the argmax.
            top_k: Sample among the ``k`` most likely tokens.
            top_p: Sample among the most likely tokens whose probability adds up to ``p``.
            temperature: Divides the logits before sampling.
            freq_penalty: Subtracted from a token's temperature-divided logit once per
                occurrence among the row's real text tokens so far (prompt and generated;
                image placeholders and padding do not count).
            use_past_kv_cache: Accepted for TransformerLens' signature; a cache is always used
                (with cross-attention layers, Llama 3.2 Vision, it holds their image keys /
                values, computed once, and every new token reads what the prompt's last token
                reads, as HF's ``generate``).
            prepend_bos: For text input, as in ``to_tokens``.
            padding_side: Ignored, as TransformerLens does for generation: a batch of texts
                is left-padded so that each row's last token is its last real token.
            return_type: ``"str"``, ``"tokens"``, ``"embeds"`` (the prompt's embeddings,
                image spliced in, then the new tokens') or ``"input"``: text for text,
                embeddings for embeddings, tokens otherwise.
            verbose: Show a progress bar.
            output_logits: Return a ``GenerateDecoderOnlyOutput`` with ``sequences`` (the
                tokens) and ``logits`` (each step's next-token logits ``[batch, d_vocab]``).
            return_cache: Also return the ``ActivationCache`` of a run on the whole output
                (prompt, images and new tokens; padding after a stopped row masked):
                ``(output, cache)``. TransformerLens' bridge refuses this for image inputs.
            names_filter: With ``return_cache``, which activations to cache.
            past_kv_cache: A prefix's cache, ``input`` then holding the tokens after it: ours
                (``model.run_prefix``; an unfrozen one is extended in place, a frozen one is
                left as is) or TransformerLens' ``TransformerLensKeyValueCache`` (an unfrozen
                one, e.g. fresh from ``init_cache``, is filled with the keys and values of the
                prompt and the new tokens, post-RoPE, ``[batch, pos, kv_head, d_head]``).
            attention_mask: For a token tensor input, 1 at real tokens (default: all ones).
            new_tokens_only: Return only the new tokens (text, embeddings), not the prompt.

        Returns:
            Text (a string for a string or a one-row batch, as TransformerLens; a list
            otherwise), tokens ``[batch, prompt + new]`` (the left-padded, image-expanded
            prompt ids then the new ids, as HF ``generate``; only the new ids for embeddings
            input, as TransformerLens), or embeddings ``[batch, prompt + new, d_model]``; see
            ``output_logits`` and ``return_cache``.
        """
        if return_type not in ("input", "str", "tokens", "embeds"):
            raise ValueError("return_type must be 'input', 'str', 'tokens' or 'embeds', "
                             f"got {return_type!r}")
        if freq_penalty < 0:
            raise ValueError(f"freq_penalty must be non-negative, got {freq_penalty}")
        del use_past_kv_cache, padding_side
        device = self.cfg.device
        embeds, inp = None, None
        if isinstance(input, str | list):
            kind = "str" if isinstance(input, str) else "list"
            ids, mask = self.encode_text(input, prepend_bos, padding_side="left")
            inp = self._as_input(ids, mask)
        elif isinstance(input, Tensor) and input.is_floating_point():
            kind = "embeds"
            embeds = input[None] if input.ndim == 2 else input
            if embeds.ndim != 3 or embeds.shape[-1] != self.cfg.d_model:
                raise ValueError(f"embeddings input must be [batch, pos, {self.cfg.d_model}], "
                                 f"got {tuple(input.shape)}")
            embeds = embeds.to(device, self.cfg.dtype)
        else:
            kind, inp = "tokens", self._as_input(input, attention_mask)
        if return_type == "input":
            return_type = {"str": "str", "list": "str", "embeds": "embeds"}.get(kind, "tokens")
        if return_cache and (embeds is not None or past_kv_cache is not None):
            raise ValueError("return_cache=True needs the whole prompt as text, tokens or an "
                             "LVLMInput (not embeddings, not after a past_kv_cache)")
        eos = self._stop_tokens(eos_token_id if stop_at_eos else [])
        pad = self.tokenizer.pad_token_id
        pad = self.cfg.pad_token_id if pad is None else pad

        is_tl = isinstance(past_kv_cache, TransformerLensKeyValueCache)
        tl_cache = past_kv_cache if is_tl else None
        cache = from_tl_cache(tl_cache) if tl_cache is not None else past_kv_cache
        if cache is not None and cache.length == 0:
            cache = None  # an empty TransformerLens cache: filled from the prompt
        elif cache is not None and cache.frozen:
            cache = replace(cache, frozen=False)  # extend a copy, leave the frozen one as is
        cross = self.cfg.decoder.cross_attention is not None
        if cross and embeds is not None and (cache is None or cache.cross is None):
            raise ValueError("with cross-attention layers (Llama 3.2 Vision) the image is not in "
                             "the embeddings: pass the LVLMInput, or a past_kv_cache from "
                             "model.run_prefix(inp) holding its image")
        if embeds is not None:
            mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=device)
            resid, kvs = self.run_blocks(self.hook_embed(embeds), mask, cache)
            if cache is None:
                cache = KVCache.from_run(kvs, mask, frozen=False)
            else:
                cache.append(kvs, mask)
            logits = self.unembed(self.ln_final(resid[:, -1]))
        elif cache is not None:
            logits = self(inp, past_kv_cache=cache)[:, -1]
        else:
            resid, cache = self.prefill(inp, frozen=False)
            logits = self.unembed(self.ln_final(resid[:, -1]))

        batch = len(embeds) if embeds is not None else len(inp)
        seen = torch.zeros(batch, logits.shape[-1], device=device)
        if do_sample and freq_penalty > 0 and inp is not None:
            ids = inp.input_ids.to(device)
            real = inp.attention_mask.to(device) * (ids != self.cfg.image_token_id)
            seen.scatter_add_(1, ids.clamp(0, seen.shape[1] - 1), real.float())
        done = torch.zeros(batch, dtype=torch.bool, device=device)
        out, live, step_logits = [], [], []
        for step in progress_bar(range(max_new_tokens), show=verbose, desc="generate"):
            step_logits.append(logits)
            if do_sample:
                scaled = logits.float() - freq_penalty * temperature * seen
                nxt = sample_logits(scaled, top_k=top_k, top_p=top_p,
                                    temperature=temperature).to(device)
            else:
                nxt = logits.argmax(-1)
            live.append(~done)
            nxt = nxt.masked_fill(done, pad)
            out.append(nxt)
            seen.scatter_add_(1, nxt[:, None], (~done).float()[:, None])
            done = done | torch.isin(nxt, eos)
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            logits = decode_step(self, nxt[:, None], cache)
        if tl_cache is not None and not tl_cache.frozen:
            to_tl_cache(cache, tl_cache)

        new = torch.stack(out, 1) if out else torch.zeros(batch, 0, dtype=torch.long,
                                                             device=device)
        prompt = None if inp is None else inp.input_ids.to(device)
        tokens = new if new_tokens_only or prompt is None else torch.cat([prompt, new], 1)
        if output_logits:
            from transformers.generation.utils import GenerateDecoderOnlyOutput

            result: Any = GenerateDecoderOnlyOutput(sequences=tokens, logits=tuple(step_logits))
        elif return_type == "tokens":
            result = tokens
        elif return_type == "embeds":
            result = self.embed(new)
            if not new_tokens_only:
                first = embeds if embeds is not None else self.embed_input(inp)
                result = torch.cat([first, result.to(first.dtype)], 1)
        else:
            text = self.tokenizer.batch_decode(tokens, skip_special_tokens=True)
            result = text[0] if kind == "str" or len(text) == 1 else text
        if not return_cache:
            return result
        live_mask = torch.stack(live, 1).long() if live else new
        full = extend_input(inp, new, live_mask)
        return result, self.run_with_cache(full, names_filter=names_filter)[1]

    def _stop_tokens(self: Any, eos_token_id: int | list[int] | None) -> Int[Tensor, " n"]:
        """The stop token ids: given, else the generation config's, else the tokenizer's."""
        if eos_token_id is None:
            eos_token_id = self.hf_model.generation_config.eos_token_id
        if eos_token_id is None:
            eos_token_id = self.tokenizer.eos_token_id
        ids = [] if eos_token_id is None else eos_token_id
        return torch.as_tensor(ids, dtype=torch.long, device=self.cfg.device).flatten()
