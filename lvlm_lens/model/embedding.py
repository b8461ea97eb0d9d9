"""How an :class:`LVLMInput` becomes the decoder's input: token embeddings with the image
spliced in, Qwen3-VL's DeepStack features, rotary positions and Gemma 3's image blocks."""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lvlm_lens.model.cross_attention import CrossInput, cross_input
from lvlm_lens.model.inputs import LVLMInput
from lvlm_lens.model.layout import TokenLayout
from lvlm_lens.model.masks import image_blocks, prefix_blocks


def _at_images(
    feats: list[list[Tensor]], is_image: Tensor, like: Tensor
) -> list[Float[Tensor, "batch pos d_model"]]:
    """Per DeepStack layer, its per-image features placed at the image positions (0 elsewhere)."""
    mask = is_image[..., None]
    return [torch.zeros_like(like).masked_scatter(mask, torch.cat(f).to(like)) for f in feats]


class EmbeddingMixin:
    """Input side of :class:`~lvlm_lens.HookedLVLM` (needs ``cfg``, ``embed``, ``vision``,
    ``hook_tokens``, ``hook_image_embeds`` and ``hook_embed``)."""

    cfg: Any
    embed: Any
    vision: Any
    hook_tokens: Any
    hook_image_embeds: Any
    hook_embed: Any
    per_layer_inputs: Any

    def image_embeddings(self, inp: LVLMInput) -> list[Float[Tensor, "img_tok d_model"]]:
        """Projected image embeddings of every image in the batch (before ``hook_image_embeds``,
        which fires them placed at their positions, ``[batch, pos, d_model]``)."""
        if inp.image_embeds is not None:
            return inp.image_embeds
        if inp.pixel_values is None:
            raise ValueError(
                "this input has image tokens but neither pixel_values nor image_embeds"
            )
        return self.vision(inp)

    def image_features(
        self, inp: LVLMInput
    ) -> tuple[list[Float[Tensor, "img_tok d_model"]], list[list[Tensor]] | None]:
        """:meth:`image_embeddings` and, for DeepStack families (Qwen3-VL), per DeepStack
        layer the features added at each image's positions (``None`` for other families)."""
        if not self.cfg.decoder.deepstack:
            return self.image_embeddings(inp), None
        if inp.image_embeds is not None:
            if inp.image_deepstack is None:
                raise ValueError("precomputed image embeddings without DeepStack features: give "
                                 "Qwen3-VL inputs pixel values or with_image_embeds(deepstack=)")
            return inp.image_embeds, inp.image_deepstack
        if inp.pixel_values is None:
            raise ValueError(
                "this input has image tokens but neither pixel_values nor image_embeds"
            )
        return self.vision.with_deepstack(inp)

    def embed_input(self, inp: LVLMInput) -> Float[Tensor, "batch pos d_model"]:
        """Token embeddings with the image embeddings spliced in (output of ``hook_embed``)."""
        return self._embed(inp)[0]

    def _embed(
        self, inp: LVLMInput
    ) -> tuple[Float[Tensor, "batch pos d_model"], list[Tensor] | None]:
        """``embed_input`` and, for DeepStack families, the per-layer features to add at the
        image positions (``[batch, pos, d_model]``, zero elsewhere), from one tower run."""
        ids = self.hook_tokens(inp.input_ids.to(self.cfg.device))
        if self.cfg.decoder.cross_attention is not None:  # the image is read by those layers
            if inp.image_embeds is not None:
                raise ValueError("precomputed image embeddings are not supported with "
                                 "cross-attention layers (Llama 3.2 Vision): give pixel values")
            return self.hook_embed(self.embed(ids)), None
        is_image = ids == self.cfg.image_token_id
        if self.cfg.image_token_id >= self.cfg.d_vocab:  # out of the table: HF embeds id 0
            x = self.embed(ids.masked_fill(is_image, 0))
        else:
            x = self.embed(ids)
        n_tok, deep = int(is_image.sum()), None
        if n_tok or inp.has_images:
            embeds, feats = self.image_features(inp)
            flat = torch.cat(embeds).to(x.device, x.dtype)
            if flat.shape[0] != n_tok:
                raise ValueError(f"{n_tok} image tokens but {flat.shape[0]} image embeddings")
            at = is_image[..., None]
            placed = self.hook_image_embeds(torch.zeros_like(x).masked_scatter(at, flat))
            x = torch.where(at, placed, x)
            if feats is not None:
                deep = _at_images(feats, is_image, x)
        return self.hook_embed(x), deep

    def layout(
        self, inp: LVLMInput, positions: bool = True, deepstack: list[Tensor] | None = None,
        embeds: Float[Tensor, "batch pos d_model"] | None = None,
    ) -> TokenLayout:
        """Rotary positions (M-RoPE families; with ``positions``), bidirectional image blocks
        (Gemma 3), DeepStack features (Qwen3-VL; computed unless given), the image side of
        cross-attention layers (Llama 3.2 Vision) and the per-layer inputs (Gemma 4; from
        ``embeds``, the output of ``hook_embed``, computed unless given) of an input's tokens,
        for :meth:`run_blocks`."""
        spec = self.cfg.decoder
        pos = inp.position_ids if positions else None
        blocks = None
        if spec.bidirectional_image:
            blocks = image_blocks(inp.input_ids == self.cfg.image_token_id)
        if spec.bidirectional_prefix:  # PaliGemma: image and prompt, one block
            blocks = prefix_blocks(inp.attention_mask)
        if spec.deepstack and deepstack is None and inp.has_images:
            feats = self.image_features(inp)[1]
            is_image = inp.input_ids.to(self.cfg.device) == self.cfg.image_token_id
            like = torch.empty(*is_image.shape, self.cfg.d_model, dtype=self.cfg.dtype,
                               device=self.cfg.device)
            deepstack = _at_images(feats, is_image, like)
        cross = None
        if spec.cross_attention is not None and inp.has_images:
            cross = self.cross_input(inp)
        ple = None
        if spec.per_layer_input:
            embeds = self.embed_input(inp) if embeds is None else embeds
            ple = self.per_layer_inputs(inp.input_ids, embeds)
        return TokenLayout(pos, blocks, deepstack, cross, ple).to(self.cfg.device)

    def text_layout(
        self, tokens: Int[Tensor, "batch pos"], embeds: Float[Tensor, "batch pos d_model"]
    ) -> TokenLayout | None:
        """The layout of text tokens run after a cache (decoding): their per-layer inputs
        (Gemma 4), ``None`` for a decoder without them."""
        if not self.cfg.decoder.per_layer_input:
            return None
        return TokenLayout(per_layer=self.per_layer_inputs(tokens, embeds))

    def cross_input(self, inp: LVLMInput) -> CrossInput:
        """The image side of an input for the cross-attention layers (Llama 3.2 Vision): the
        vision side's projected states per example, through ``hook_image_embeds`` (there
        ``[batch, image_pos, d_model]``), and which of them each token may read."""
        states = self.hook_image_embeds(self.vision.image_side(inp).to(self.cfg.dtype))
        allowed = self.vision.cross_allowed(inp).to(states.device)
        return cross_input(states, allowed, states.dtype)
