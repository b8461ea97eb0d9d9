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
        return self.encode_text(text, prepend_bos)[0]

    def encode_text(
        self, text: str | list[str], prepend_bos: bool = True
    ) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
        """Token ids and attention mask of text (left-padded batch)."""
        texts = [text] if isinstance(text, str) else list(text)
        self.tokenizer.padding_side = "left"
        out = self.tokenizer(
            texts, return_tensors="pt", padding=True, add_special_tokens=prepend_bos
        )
        return out.input_ids.to(self.cfg.device), out.attention_mask.to(self.cfg.device)

    def to_single_token(self, text: str) -> int:
        """The id of a string that is exactly one known token (no BOS).

        Raises:
            ValueError: If ``text`` is several tokens, or is not in the vocabulary (the
                tokenizer maps it to its unknown token).
        """
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise ValueError(f"{text!r} is {len(ids)} tokens, not one: {ids}")
        check_known(self.tokenizer, text, ids)
        return ids[0]

    def to_string(
        self, tokens: Int[Tensor, "... pos"] | list[int] | LVLMInput
    ) -> str | list[str]:
        """Decode token ids as TransformerLens does: one string for ``[pos]``, one per row for
        ``[batch, pos]`` (an :class:`LVLMInput` decodes each example without its padding)."""
        if isinstance(tokens, LVLMInput):
            pairs = zip(tokens.input_ids, tokens.attention_mask, strict=True)
            return [self.to_string(ids[m > 0]) for ids, m in pairs]
        tokens = torch.as_tensor(tokens)
        if tokens.ndim > 2:
            raise ValueError(f"to_string takes [pos] or [batch, pos] tokens, got {tokens.shape}")
        decode = self.tokenizer.batch_decode if tokens.ndim == 2 else self.tokenizer.decode
        return decode(tokens.tolist(), clean_up_tokenization_spaces=False)

    def to_str_tokens(
        self, input: LVLMInput | Tensor | str | list[str], index: int | None = None
    ) -> list[str] | list[list[str]]:
        """String tokens, as TransformerLens: a list for one prompt, a list per example for a batch.

        Image tokens read ``<img row,col>`` (``<img t:row,col>`` for any-resolution tiles,
        ``<img nl>`` for image-newline tokens); the padding of an :class:`LVLMInput` is dropped.

        Args:
            input: An :class:`LVLMInput`, token ids ``[pos]`` or ``[batch, pos]``, a string or a
                list of strings.
            index: Return only this example's tokens. By default a batch of one gives its list
                (as TransformerLens squeezes the batch) and a larger batch one list per example.
        """
        if isinstance(input, list) and all(isinstance(t, str) for t in input):
            out = [self.to_str_tokens(t) for t in input]
            return out if index is None else out[index]
        if isinstance(input, str):
            input = self.to_tokens(input)
        if not isinstance(input, LVLMInput):
            input = torch.as_tensor(input)
            if input.ndim == 1:
                input = input[None]
        if index is None and len(input) != 1:
            return [self._str_tokens(input, i) for i in range(len(input))]
        return self._str_tokens(input, 0 if index is None else index)

    def _str_tokens(self, input: LVLMInput | Tensor, index: int) -> list[str]:
        if not isinstance(input, LVLMInput):
            return self.tokenizer.convert_ids_to_tokens(input[index].tolist())
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


def check_known(tokenizer: Any, text: str, ids: list[int], what: str = "") -> None:
    """Refuse text that the tokenizer maps (in part) to its unknown token."""
    unk = tokenizer.unk_token_id
    if unk is not None and unk in ids and text.strip() != tokenizer.unk_token:
        raise ValueError(
            f"{what}{text!r} is not in the model's vocabulary (it tokenizes to the unknown token "
            f"{tokenizer.unk_token!r}): use a word the tokenizer knows"
        )
