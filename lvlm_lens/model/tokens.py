"""TransformerLens' tokenizer views of the model: ``to_tokens``, ``to_single_token``,
``to_str_tokens`` (image tokens shown with their grid coordinates)."""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from lvlm_lens.model.inputs import LVLMInput
from lvlm_lens.model.vision import CLS, NEWLINE


class TokensMixin:
    """Token helpers of :class:`~lvlm_lens.HookedLVLM` (needs ``tokenizer`` and ``cfg``)."""

    tokenizer: Any
    cfg: Any
    vision: Any

    def to_tokens(
        self, text: str | list[str], prepend_bos: bool = True
    ) -> Int[Tensor, "batch pos"]:
        """Tokenize text (left-padded batch); image placeholders are *not* expanded."""
        texts = [text] if isinstance(text, str) else list(text)
        self.tokenizer.padding_side = "left"
        out = self.tokenizer(
            texts, return_tensors="pt", padding=True, add_special_tokens=prepend_bos
        )
        return out.input_ids.to(self.cfg.device)

    def to_single_token(self, text: str) -> int:
        """The id of a string that is exactly one token (no BOS)."""
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise ValueError(f"{text!r} is {len(ids)} tokens, not one: {ids}")
        return ids[0]

    def to_str_tokens(self, input: LVLMInput | Tensor | str, index: int = 0) -> list[str]:
        """String tokens of one example; image tokens read ``<img row,col>`` (``<img t:row,col>``
        for any-resolution tiles, ``<img nl>`` for image-newline tokens); padding is dropped."""
        if isinstance(input, str):
            input = self.to_tokens(input)
        if not isinstance(input, LVLMInput):
            ids = input if input.ndim == 1 else input[index]
            return self.tokenizer.convert_ids_to_tokens(ids.tolist())
        ids = input.input_ids[index][input.attention_mask[index] > 0].tolist()
        coords = iter(
            torch.cat(input.image_coords[input.image_slice(index)]).tolist()
            if input.images_per_example[index]
            else []
        )
        out = []
        for tok in ids:
            if tok != self.cfg.image_token_id:
                out.append(self.tokenizer.convert_ids_to_tokens(tok))
                continue
            t, r, c = next(coords)
            out.append(
                "<img nl>"
                if t == NEWLINE
                else "<img cls>"
                if t == CLS
                else f"<img {t}:{r},{c}>"
                if self.vision.tiled
                else f"<img {r},{c}>"
            )
        return out
