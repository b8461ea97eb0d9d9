"""TransformerLens' tokenizer views of the model: ``to_tokens``, ``to_str_tokens`` (image
tokens shown with their grid coordinates), ``to_single_token``, ``get_token_position``,
``set_tokenizer`` and ``input_to_embed``."""

from __future__ import annotations

import weakref
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lvlm_lens.model.inputs import LVLMInput
from lvlm_lens.model.vision import CLS, NEWLINE

PaddingSide = Literal["left", "right"]


class TokenError(ValueError, AssertionError):
    """A token helper's input that cannot work (a string that is not one token, a token absent
    from the prompt). Also an ``AssertionError``, which is what TransformerLens raises there."""


#: ``tokenizer_prepends_bos``'s answer per tokenizer, with the settings it was found under.
_PREPENDS_BOS: weakref.WeakKeyDictionary[Any, tuple[Any, bool]] = weakref.WeakKeyDictionary()


def tokenizer_prepends_bos(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` puts BOS first by itself (else, or with no BOS token, ``False``).

    Found by tokenizing once per tokenizer (``to_tokens`` asks on every call); asked again
    when its BOS token or ``add_bos_token`` changes."""
    bos = tokenizer.bos_token_id
    key = (bos, getattr(tokenizer, "add_bos_token", None))
    try:
        seen = _PREPENDS_BOS.get(tokenizer)
    except TypeError:  # not weak-referenceable: ask every time
        seen = None
    if seen is not None and seen[0] == key:
        return seen[1]
    answer = bos is not None and tokenizer("a").input_ids[:1] == [bos]
    try:
        _PREPENDS_BOS[tokenizer] = (key, answer)
    except TypeError:
        pass
    return answer


class TokensMixin:
    """Token helpers of :class:`~lvlm_lens.HookedLVLM` (needs ``tokenizer`` and ``cfg``).

    As in TransformerLens, ``prepend_bos=None`` means ``cfg.default_prepend_bos``; unlike it,
    ``padding_side=None`` means :attr:`default_padding_side` (``"left"``, the side every
    batch of :meth:`prepare` and HF generation use), not the tokenizer's own side.
    """

    tokenizer: Any
    cfg: Any
    vision: Any
    _as_input: Any
    #: The side ``to_tokens`` pads a batch of strings on when ``padding_side`` is not given.
    default_padding_side: PaddingSide = "left"

    def to_tokens(
        self,
        input: str | list[str] | LVLMInput,
        prepend_bos: bool | None = None,
        padding_side: PaddingSide | None = None,
        move_to_device: bool = True,
        truncate: bool = True,
    ) -> Int[Tensor, "batch pos"]:
        """Tokenize text as TransformerLens does; image placeholders are *not* expanded.

        Args:
            input: A string or a list of strings (padded to one length); an
                :class:`LVLMInput` gives its ``input_ids`` (image tokens expanded; the other
                options do not apply), which run with its images inside ``model.bind(inp)``.
            prepend_bos: Whether to prepend BOS (default ``cfg.default_prepend_bos``). Pass
                ``False`` when tokenizing part of a prompt.
            padding_side: ``"left"`` or ``"right"`` (default :attr:`default_padding_side`).
            move_to_device: Put the tokens on ``cfg.device`` (else they stay on the CPU).
            truncate: Cut inputs longer than ``cfg.n_ctx``.
        """
        if isinstance(input, LVLMInput):
            return input.input_ids.to(self.cfg.device) if move_to_device else input.input_ids
        return self.encode_text(input, prepend_bos, padding_side, move_to_device, truncate)[0]

    def encode_text(
        self,
        text: str | list[str],
        prepend_bos: bool | None = None,
        padding_side: PaddingSide | None = None,
        move_to_device: bool = True,
        truncate: bool = True,
    ) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
        """Token ids and attention mask of text, as :meth:`to_tokens` (default: left-padded)."""
        if isinstance(text, str):
            texts = [text]
        elif isinstance(text, list | tuple) and all(isinstance(t, str) for t in text):
            texts = list(text)
        else:
            raise TypeError(f"expected a string or a list of strings, got {type(text).__name__}")
        if prepend_bos is None:
            prepend_bos = self.cfg.default_prepend_bos
        side = padding_side or self.default_padding_side
        if side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
        bos = self.tokenizer.bos_token
        if prepend_bos and bos is not None and not tokenizer_prepends_bos(self.tokenizer):
            texts = [bos + t for t in texts]  # as TL does for such tokenizers
        # A tokenizer with no BOS token at all (Qwen's) gets none, as its HF processor gives.
        out = self.tokenizer(
            texts,
            return_tensors="pt",
            padding=True,
            padding_side=side,
            add_special_tokens=bool(prepend_bos),
            truncation=truncate,
            max_length=self.cfg.n_ctx if truncate else None,
        )
        ids, mask = out.input_ids, out.attention_mask
        if move_to_device:
            ids, mask = ids.to(self.cfg.device), mask.to(self.cfg.device)
        return ids, mask

    def to_single_token(self, string: str) -> int:
        """The id of a string that is exactly one known token (no BOS).

        Raises:
            TokenError: If ``string`` is several tokens (TransformerLens' ``AssertionError``),
                or is not in the vocabulary (the tokenizer maps it to its unknown token).
        """
        ids = self.tokenizer(string, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise TokenError(f"Input string: {string!r} is not a single token! It is "
                             f"{len(ids)} tokens: {ids}; pass one token's text")
        check_known(self.tokenizer, string, ids)
        return ids[0]

    def to_single_str_token(self, int_token: int) -> str:
        """The text of one token id (as TransformerLens: an ``int``, else an error)."""
        if isinstance(int_token, Tensor) and int_token.numel() == 1:
            int_token = int(int_token.item())
        if not isinstance(int_token, int) or isinstance(int_token, bool):
            raise TokenError(f"to_single_str_token takes one int token id, got {int_token!r}")
        if not 0 <= int_token < len(self.tokenizer):
            raise TokenError(f"token id {int_token} is outside the vocabulary "
                             f"[0, {len(self.tokenizer)})")
        return self.to_str_tokens(torch.tensor([int_token]))[0]

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
        self,
        input: LVLMInput | Tensor | str | list[str],
        prepend_bos: bool | None = None,
        padding_side: PaddingSide | None = None,
        index: int | None = None,
    ) -> list[str] | list[list[str]]:
        """String tokens, as TransformerLens: a list for one prompt, a list per example for a batch.

        Each token is decoded on its own (``" the"``, not ``"Ġthe"``). Image tokens read
        ``<img row,col>`` (``<img t:row,col>`` for any-resolution tiles, ``<img nl>`` for
        image-newline tokens); the padding of an :class:`LVLMInput` is dropped.

        Args:
            input: An :class:`LVLMInput`, token ids ``[pos]`` or ``[batch, pos]``, a string or a
                list of strings.
            prepend_bos: For text input only, as in :meth:`to_tokens`. (An ``int`` here is
                taken as ``index``: ``to_str_tokens(inp, i)``.)
            padding_side: For text input only (each string is tokenized alone, so unpadded).
            index: Return only this example's tokens. By default a batch of one gives its list
                (as TransformerLens squeezes the batch) and a larger batch one list per example.
        """
        if isinstance(prepend_bos, int) and not isinstance(prepend_bos, bool):
            index, prepend_bos = prepend_bos, None
        if isinstance(input, list) and all(isinstance(t, str) for t in input):
            out = [self.to_str_tokens(t, prepend_bos, padding_side) for t in input]
            return out if index is None else out[index]
        if isinstance(input, str):
            input = self.to_tokens(input, prepend_bos, padding_side)
        if not isinstance(input, LVLMInput):
            input = torch.as_tensor(input)
            if input.ndim == 0:
                input = input[None]
            if input.ndim == 1:
                input = input[None]
        if index is None and len(input) != 1:
            return [self._str_tokens(input, i) for i in range(len(input))]
        return self._str_tokens(input, 0 if index is None else index)

    def _decode_each(self, ids: list[int]) -> list[str]:
        return self.tokenizer.batch_decode([[t] for t in ids], clean_up_tokenization_spaces=False)

    def _str_tokens(self, input: LVLMInput | Tensor, index: int) -> list[str]:
        if not isinstance(input, LVLMInput):
            return self._decode_each(input[index].tolist())
        ids = input.input_ids[index][input.attention_mask[index] > 0].tolist()
        coords = iter(
            torch.cat(input.image_coords[input.image_slice(index)]).tolist()
            if input.images_per_example[index]
            else []
        )
        out = self._decode_each(ids)
        if self.cfg.decoder.cross_attention is not None:  # the image is not in the sequence
            return out
        for i, tok in enumerate(ids):
            if tok != self.cfg.image_token_id:
                continue
            t, r, c = next(coords)
            out[i] = (
                "<img nl>"
                if t == NEWLINE
                else "<img cls>"
                if t == CLS
                else f"<img {t}:{r},{c}>"
                if self.vision.tiled
                else f"<img {r},{c}>"
            )
        return out

    def get_token_position(
        self,
        single_token: str | int | Tensor,
        input: str | Tensor | LVLMInput,
        mode: Literal["first", "last"] = "first",
        prepend_bos: bool | None = None,
        padding_side: PaddingSide | None = None,
    ) -> int:
        """Position of a token in one prompt, as TransformerLens (``mode``: first or last match).

        Positions index the model's token sequence: for an :class:`LVLMInput` every image
        token counts (and any left padding of the row).

        Args:
            single_token: A token id, or a string that is one token.
            input: A string (tokenized with ``prepend_bos`` / ``padding_side``), token ids
                ``[pos]`` or ``[1, pos]``, or an :class:`LVLMInput` of one example.
            mode: ``"first"`` or ``"last"`` occurrence.

        Raises:
            TokenError: If the token does not occur, or ``input`` holds several prompts.
        """
        if mode not in ("first", "last"):
            raise ValueError(f"mode must be 'first' or 'last', not {mode!r}")
        if isinstance(input, str):
            tokens = self.to_tokens(input, prepend_bos, padding_side)
        elif isinstance(input, LVLMInput):
            tokens = input.input_ids
        else:
            tokens = torch.as_tensor(input)
        if tokens.ndim == 2:
            if tokens.shape[0] != 1:
                raise TokenError(f"get_token_position takes one prompt, got a batch of shape "
                                 f"{tuple(tokens.shape)}: pass one row (inp.select(i), tokens[i])")
            tokens = tokens[0]
        if isinstance(single_token, str):
            single_token = self.to_single_token(single_token)
        elif isinstance(single_token, Tensor):
            single_token = int(single_token.item())
        found = (tokens == single_token).nonzero()[:, 0]
        if len(found) == 0:
            raise TokenError(f"The token does not occur in the prompt: token {single_token} "
                             f"({self._decode_each([single_token])[0]!r}) is not among its "
                             f"{len(tokens)} tokens")
        return int(found[0] if mode == "first" else found[-1])

    def set_tokenizer(self, tokenizer: Any, default_padding_side: PaddingSide | None = None):
        """Use another tokenizer, as TransformerLens' ``set_tokenizer``.

        A tokenizer without a pad token pads with its EOS token (as TransformerLens does).

        Args:
            tokenizer: A ``transformers`` tokenizer whose ids fit the model's vocabulary.
            default_padding_side: Make this the side :meth:`to_tokens` pads on by default.

        Raises:
            ValueError: If the tokenizer has more ids than the unembedding has rows.
        """
        from transformers import PreTrainedTokenizerBase

        if not isinstance(tokenizer, PreTrainedTokenizerBase):
            raise TypeError(f"set_tokenizer needs a transformers tokenizer, got "
                            f"{type(tokenizer).__name__}")
        if len(tokenizer) > self.cfg.d_vocab:
            raise ValueError(f"this tokenizer has {len(tokenizer)} ids but the model's "
                             f"vocabulary only {self.cfg.d_vocab}: use the checkpoint's tokenizer")
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        if default_padding_side is not None:
            if default_padding_side not in ("left", "right"):
                raise ValueError("default_padding_side must be 'left' or 'right', "
                                 f"got {default_padding_side!r}")
            tokenizer.padding_side = default_padding_side
            self.default_padding_side = default_padding_side
        self.tokenizer = tokenizer

    def input_to_embed(
        self,
        input: str | list[str] | Tensor | LVLMInput,
        prepend_bos: bool | None = None,
        padding_side: PaddingSide | None = None,
        attention_mask: Int[Tensor, "batch pos"] | None = None,
    ) -> tuple[Float[Tensor, "batch pos d_model"], Int[Tensor, "batch pos"], None,
               Int[Tensor, "batch pos"]]:
        """The residual stream entering block 0, as TransformerLens' ``input_to_embed``.

        Returns ``(residual, tokens, shortformer_pos_embed, attention_mask)``: ``residual`` is
        ``hook_embed``'s output (image embeddings spliced in), ``shortformer_pos_embed`` is
        always ``None`` (positions are rotary), the mask is 1 at real tokens.
        """
        if isinstance(input, str | list):
            input, mask = self.encode_text(input, prepend_bos, padding_side)
            attention_mask = mask if attention_mask is None else attention_mask
        inp = self._as_input(input, attention_mask)
        return self.embed_input(inp), inp.input_ids, None, inp.attention_mask


def check_known(tokenizer: Any, text: str, ids: list[int], what: str = "") -> None:
    """Refuse text that the tokenizer maps (in part) to its unknown token."""
    unk = tokenizer.unk_token_id
    if unk is not None and unk in ids and text.strip() != tokenizer.unk_token:
        raise ValueError(
            f"{what}{text!r} is not in the model's vocabulary (it tokenizes to the unknown token "
            f"{tokenizer.unk_token!r}): use a word the tokenizer knows"
        )
