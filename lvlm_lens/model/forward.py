"""The forward pass of :class:`~lvlm_lens.HookedLVLM`, with TransformerLens' keywords.

As ``HookedTransformer.forward``: a string or list of strings is tokenized with
``prepend_bos`` / ``padding_side`` (left and right padding both give each row the logits it
has alone: positions count real tokens only and padded keys are masked);
``stop_at_layer=k`` runs blocks ``[0, k)`` and returns the residual stream (no ``ln_final``);
``start_at_layer=k`` takes that residual stream as ``input`` and runs blocks ``k..``
(``tokens`` gives the input it came from, for its mask, rotary positions, image blocks and
the loss); ``return_type=None`` runs ``ln_final`` and stops before the unembedding, so it
fires the hooks a ``"logits"`` run fires; ``"loss"`` / ``"both"`` give the next-token loss
(``loss_per_token``: per position, ``[batch, pos - 1]``), over targets that are real
tokens (not padding, not image placeholders) predicted from a real position.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lvlm_lens.model.inputs import LVLMInput
from lvlm_lens.model.kv_cache import KVCache
from lvlm_lens.model.layout import TokenLayout
from lvlm_lens.model.tokens import PaddingSide

ReturnType = Literal["logits", "loss", "both"] | None


class ForwardMixin:
    """``forward`` and ``lm_loss`` of :class:`~lvlm_lens.HookedLVLM` (needs ``cfg``,
    ``_as_input``, ``encode_text``, ``_embed``, ``layout``, ``run_blocks``, ``ln_final`` and
    ``unembed``)."""

    cfg: Any
    ln_final: Any
    unembed: Any

    def forward(
        self,
        input: LVLMInput | Int[Tensor, "batch pos"] | str | list[str] | Float[Tensor, "b p d"],
        return_type: ReturnType = "logits",
        *,
        loss_per_token: bool = False,
        prepend_bos: bool | None = None,
        padding_side: PaddingSide | None = None,
        start_at_layer: int | None = None,
        tokens: LVLMInput | Int[Tensor, "batch pos"] | None = None,
        past_kv_cache: KVCache | None = None,
        stop_at_layer: int | None = None,
        attention_mask: Int[Tensor, "batch pos"] | None = None,
    ) -> Any:
        """Run the model.

        Args:
            input: An :class:`LVLMInput`, token ids (text-only, or bound with :meth:`bind`),
                text, or (with ``start_at_layer``) the residual stream entering that block.
            return_type: ``"logits"``, ``"loss"`` (next-token loss over real text targets),
                ``"both"`` (``(logits, loss)``) or ``None``.
            loss_per_token: Return the loss per position (``[batch, pos - 1]``, 0 where the
                target or its source is padding, or the target an image placeholder) instead
                of its mean.
            prepend_bos: For text input: prepend BOS (default ``cfg.default_prepend_bos``).
            padding_side: For a list of strings: ``"left"`` or ``"right"``.
            start_at_layer: Run only blocks ``start_at_layer..`` on the residual stream ``input``.
            tokens: With ``start_at_layer``: the input the residual stream came from (needed for
                image inputs, padding and the loss).
            past_kv_cache: A prefix cache (from :meth:`run_prefix`); ``input`` then holds only
                the tokens after it. An unfrozen cache is extended in place.
            stop_at_layer: Run only blocks ``[0, stop_at_layer)`` and return the residual stream.
            attention_mask: Mask for a plain token tensor (default: all ones).
        """
        if return_type not in ("logits", "loss", "both", None):
            raise ValueError(f"return_type must be 'logits', 'loss', 'both' or None, got "
                             f"{return_type!r}")
        if start_at_layer is None:
            inp = self._text_input(input, prepend_bos, padding_side, attention_mask)
            x, deep = self._embed(inp)
            layout = self.layout(inp, deepstack=deep, embeds=x)
        else:
            x = input
            if not (isinstance(x, Tensor) and x.is_floating_point() and x.ndim == 3):
                raise TypeError("with start_at_layer, input must be the residual stream "
                                "[batch, pos, d_model] (e.g. from stop_at_layer)")
            inp = None
            if tokens is not None:
                inp = self._text_input(tokens, prepend_bos, padding_side, attention_mask)
                if tuple(inp.input_ids.shape) != tuple(x.shape[:2]):
                    raise ValueError(f"tokens has shape {tuple(inp.input_ids.shape)} but the "
                                     f"residual stream {tuple(x.shape[:2])}: pass the input "
                                     "the residual stream came from")
            layout = TokenLayout() if inp is None else self.layout(inp)
        if inp is not None:
            mask = inp.attention_mask.to(x.device)
        elif attention_mask is not None:
            mask = attention_mask.to(x.device)
        else:
            mask = torch.ones(x.shape[:2], dtype=torch.long, device=x.device)
        if past_kv_cache is not None and self.cfg.decoder.bidirectional_prefix:
            layout.image_blocks = None  # PaliGemma: tokens after the prefix attend causally
        if past_kv_cache is not None and layout.position_ids is not None:
            # M-RoPE: the input's own (t, h, w) positions, continued after the cached prefix
            rows = past_kv_cache.rows_per_example(x.shape[0])
            start = past_kv_cache.start_positions(rows).to(layout.position_ids.device)
            layout.position_ids = layout.position_ids + start[:, None]
        resid, new_kvs = self.run_blocks(x, mask, past_kv_cache, stop_at_layer, layout=layout,
                                         start_at_layer=start_at_layer or 0)
        if past_kv_cache is not None and not past_kv_cache.frozen:
            past_kv_cache.append(new_kvs, mask)
        if stop_at_layer is not None:
            return resid
        resid = self.ln_final(resid)
        if return_type is None:
            return None
        logits = self.unembed(resid)
        if return_type == "logits":
            return logits
        if inp is None:
            raise ValueError(f"return_type={return_type!r} with start_at_layer needs the input "
                             "the residual stream came from: pass tokens=")
        loss = self.lm_loss(logits, inp, per_token=loss_per_token)
        return loss if return_type == "loss" else (logits, loss)

    def _text_input(
        self, input: Any, prepend_bos: bool | None, padding_side: PaddingSide | None,
        attention_mask: Tensor | None,
    ) -> LVLMInput:
        if isinstance(input, str | list) and (prepend_bos is not None or padding_side):
            input, mask = self.encode_text(input, prepend_bos, padding_side)
            attention_mask = mask if attention_mask is None else attention_mask
        return self._as_input(input, attention_mask)

    def lm_loss(
        self, logits: Float[Tensor, "batch pos d_vocab"], inp: LVLMInput, per_token: bool = False
    ) -> Tensor:
        """Next-token cross-entropy, counting only real, non-image targets predicted from a real
        position (as TransformerLens: with left padding, the first real token is not a target)."""
        ids = inp.input_ids.to(logits.device)
        real = inp.attention_mask.to(logits.device) > 0
        target_ok = real[:, :-1] & real[:, 1:] & (ids[:, 1:] != self.cfg.image_token_id)
        lp = logits[:, :-1].float().log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0]
        loss = -lp * target_ok
        return loss if per_token else loss.sum() / target_ok.sum().clamp(min=1)
