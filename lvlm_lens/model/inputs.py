"""The one batched input type that every analysis takes."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

#: Named token groups carried by every :class:`LVLMInput`: the first six partition the real
#: tokens, ``text`` is every real token that is not an image token.
GROUP_NAMES = ("bos", "system", "role", "image", "question", "final", "text")


@dataclass
class LVLMInput:
    """A left-padded batch of image + prompt examples.

    Attributes:
        input_ids: Token ids, image placeholders already expanded to one token per image embedding.
        attention_mask: 1 at real tokens, 0 at left padding.
        groups: Named token groups as boolean masks. Every real token is in exactly one of
            ``bos``, ``system`` (system-message text), ``role`` (chat-template scaffolding
            such as ``USER``, ``ASSISTANT``, ``\\n``, but not the last token), ``image``,
            ``question`` (the user's text) and ``final`` (the last real token, whatever it
            is); ``text`` is the union of all but ``image``. The one exception: a prompt
            that ends with an image token keeps that token in ``image`` as well as ``final``.
        pixel_values: Image processor output, or ``None`` when ``image_embeds`` is given.
        image_sizes: Original ``(height, width)`` of every image.
        image_grid: Qwen2-VL: ``(t, h, w)`` patch grid of every image (HF's ``image_grid_thw``);
            ``pixel_values`` then holds the patches of all images, concatenated.
        image_tiles: InternVL, Idefics3: how many tiles (rows of ``pixel_values``) each image
            was cut into.
        pixel_attention_mask: Idefics3: the real (unpadded) pixels of each tile, ``1`` where
            ``pixel_values`` holds the image.
        position_ids: Rotary positions when they are not ``cumsum(attention_mask) - 1``:
            ``[3, batch, pos]`` M-RoPE ``(t, h, w)`` positions (Qwen2-VL / Qwen2.5-VL).
        image_embeds: Precomputed projected image embeddings, one ``[n_tokens, d_model]`` per image.
        image_deepstack: With ``image_embeds`` on DeepStack families (Qwen3-VL): per DeepStack
            layer, the features added at each image's positions, one ``[n_tokens, d_model]``
            per image.
        image_coords: Per image, ``(tile, row, col)`` of each of its tokens (``-1`` marks an
            image-newline token); used by ``to_str_tokens`` and patch overlays.
        images_per_example: How many images each example holds, in batch order.
        image_extra: Further image-processor outputs, one row per image (first axis), that the
            family's vision side reads (Llama 3.2 Vision: ``aspect_ratio_ids``,
            ``aspect_ratio_mask``, ``num_tiles``).
        answer_ids: The answer's (first) token id per example, if answers were given.
        texts: The rendered prompt of each example, before image-token expansion.
        lvlm_type: HF ``model_type`` of the model that prepared it (for :meth:`to_hf`).
        image_token_id: That model's image token id.
    """

    input_ids: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    groups: dict[str, Bool[Tensor, "batch pos"]]
    pixel_values: Float[Tensor, ...] | None = None
    image_sizes: Int[Tensor, "n_images 2"] | None = None
    image_grid: Int[Tensor, "n_images 3"] | None = None
    image_tiles: Int[Tensor, " n_images"] | None = None
    pixel_attention_mask: Int[Tensor, "n_tiles height width"] | None = None
    position_ids: Int[Tensor, "3 batch pos"] | None = None
    image_embeds: list[Float[Tensor, "img_tok d_model"]] | None = None
    image_deepstack: list[list[Float[Tensor, "img_tok d_model"]]] | None = None
    image_coords: list[Int[Tensor, "img_tok 3"]] = field(default_factory=list)
    images_per_example: list[int] = field(default_factory=list)
    image_extra: dict[str, Tensor] = field(default_factory=dict)
    answer_ids: Int[Tensor, " batch"] | None = None
    texts: list[str] = field(default_factory=list)
    lvlm_type: str = ""
    image_token_id: int = -1

    @property
    def shape(self) -> torch.Size:
        """``input_ids.shape``, so ``transformer_lens.patching`` can take an input directly."""
        return self.input_ids.shape

    @property
    def has_images(self) -> bool:
        """Whether any example of the batch holds an image."""
        return sum(self.images_per_example) > 0

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def positions(self, group: str, index: int = 0) -> Int[Tensor, " n"]:
        """Sequence positions of a token group in one example."""
        if group not in self.groups:
            raise KeyError(f"unknown token group {group!r}; known: {sorted(self.groups)}")
        return self.groups[group][index].nonzero().flatten()

    def to(self, device: torch.device | str) -> LVLMInput:
        """Move every tensor to ``device``."""
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return replace(
            self,
            input_ids=mv(self.input_ids),
            attention_mask=mv(self.attention_mask),
            groups={k: mv(v) for k, v in self.groups.items()},
            pixel_values=mv(self.pixel_values),
            image_sizes=mv(self.image_sizes),
            image_grid=mv(self.image_grid),
            image_tiles=mv(self.image_tiles),
            pixel_attention_mask=mv(self.pixel_attention_mask),
            position_ids=mv(self.position_ids),
            image_embeds=None if self.image_embeds is None else [mv(e) for e in self.image_embeds],
            image_deepstack=None if self.image_deepstack is None
            else [[mv(e) for e in d] for d in self.image_deepstack],
            answer_ids=mv(self.answer_ids),
            image_extra={k: mv(v) for k, v in self.image_extra.items()},
        )

    def image_slice(self, index: int) -> slice:
        """Indices of example ``index``'s images among all images of the batch."""
        start = sum(self.images_per_example[:index])
        return slice(start, start + self.images_per_example[index])

    def select(self, indices: list[int] | slice | int) -> LVLMInput:
        """Sub-batch of the given examples (leading all-padding columns are dropped)."""
        if isinstance(indices, int):
            indices = [indices]
        elif isinstance(indices, slice):
            indices = list(range(len(self)))[indices]
        img = [i for e in indices for i in range(*self.image_slice(e).indices(10**9))]
        mask = self.attention_mask[indices]
        start = int((mask.sum(0) > 0).int().argmax()) if mask.numel() else 0
        cut = lambda t: t[indices][:, start:]  # noqa: E731
        # no image selected: None, as prepare gives
        pick = lambda t: None if t is None or not img else t[img]  # noqa: E731
        rows = pick if self._pixel_rows() is None else lambda t: self._patches(t, img)
        return replace(
            self,
            input_ids=cut(self.input_ids),
            attention_mask=cut(self.attention_mask),
            groups={k: cut(v) for k, v in self.groups.items()},
            pixel_values=rows(self.pixel_values),
            pixel_attention_mask=rows(self.pixel_attention_mask),
            image_sizes=pick(self.image_sizes),
            image_grid=pick(self.image_grid),
            image_tiles=pick(self.image_tiles),
            position_ids=None
            if self.position_ids is None
            else self.position_ids[:, indices][..., start:],
            image_embeds=None if self.image_embeds is None else [self.image_embeds[i] for i in img],
            image_deepstack=None if self.image_deepstack is None
            else [[d[i] for i in img] for d in self.image_deepstack],
            image_coords=[self.image_coords[i] for i in img] if self.image_coords else [],
            images_per_example=[self.images_per_example[i] for i in indices],
            image_extra={k: v[img] for k, v in self.image_extra.items()} if img else {},
            answer_ids=None if self.answer_ids is None else self.answer_ids[indices],
            texts=[self.texts[i] for i in indices] if self.texts else [],
        )

    def rotary_positions(self) -> Int[Tensor, "*three batch pos"]:
        """The rotary positions of this batch: ``position_ids`` (M-RoPE), else
        ``cumsum(attention_mask) - 1`` (1 at left padding), as HF ``generate`` computes them."""
        if self.position_ids is not None:
            return self.position_ids
        return (self.attention_mask.cumsum(-1) - 1).masked_fill(self.attention_mask == 0, 1)

    def to_hf(self, *, generate: bool = False) -> dict[str, Tensor]:
        """The keyword arguments of the HF model's ``forward`` for this batch.

        ``hf_model(**inp.to_hf()).logits`` are the logits ``model(inp)`` reproduces (the
        rotary positions are passed explicitly: HF's default ``arange`` positions are wrong for
        left-padded rows). With ``generate=True`` the positions are left out, for
        ``hf_model.generate(**inp.to_hf(generate=True))``, which derives them from the mask.

        Per family: ``pixel_values`` always; ``image_sizes`` (LLaVA-NeXT, OneVision),
        ``batch_num_images`` (OneVision), ``image_grid_thw`` and ``mm_token_type_ids``
        (Qwen2-VL / 2.5-VL / 3-VL, GLM-4.1V / 4.5V), ``token_type_ids`` (Gemma 3),
        ``pixel_attention_mask`` (Idefics3, whose ``pixel_values`` are ``[batch, max_tiles, 3,
        height, width]``: each example's tiles, zero-padded); LLaVA-1.5 and InternVL take the
        pixel values alone.
        """
        from lvlm_lens.model.families import FAMILIES

        if self.has_images and self.pixel_values is None:
            raise ValueError("to_hf needs pixel values: this input holds precomputed image "
                             "embeddings, which the HF forward does not take")
        kw: dict[str, Tensor] = dict(input_ids=self.input_ids, attention_mask=self.attention_mask)
        if not generate:
            kw["position_ids"] = self.rotary_positions()
        family = FAMILIES.get(self.lvlm_type)
        types = (self.input_ids == self.image_token_id).long()
        extra = {
            "image_sizes": self.image_sizes,
            "batch_num_images": torch.tensor([n for n in self.images_per_example if n > 0]),
            "image_grid_thw": self.image_grid,
            "mm_token_type_ids": types,
            "token_type_ids": types,
        }
        pixels = self.has_images and self.pixel_values is not None
        for key in family.hf_inputs if family is not None else ():
            if pixels and key == "pixel_attention_mask":
                kw["pixel_values"], kw[key] = self._tiles_per_example()
            elif pixels or key.endswith("token_type_ids"):
                kw[key] = extra[key]
        if pixels and "pixel_values" not in kw:
            kw["pixel_values"] = self.pixel_values
        if family is not None and family.hf_extra is not None:
            kw = family.hf_extra(self, kw)
        return kw

    def _tiles_per_example(self) -> tuple[Tensor, Tensor]:
        """Idefics3's HF layout: ``[batch, max_tiles, ...]`` pixel values and pixel masks, each
        example's tiles first, zeros after (HF drops all-zero tiles)."""
        tiles = self.image_tiles.tolist()
        per = [sum(tiles[self.image_slice(i)]) for i in range(len(self))]
        values = self.pixel_values.new_zeros(len(self), max(per), *self.pixel_values.shape[1:])
        mask = self.pixel_attention_mask
        if mask is None:
            mask = torch.ones(self.pixel_values.shape[:1] + self.pixel_values.shape[2:],
                              dtype=torch.long, device=self.pixel_values.device)
        masks = mask.new_zeros(len(self), max(per), *mask.shape[1:])
        for i, (v, m) in enumerate(zip(self.pixel_values.split(per), mask.split(per), strict=True)):
            values[i, : len(v)], masks[i, : len(m)] = v, m
        return values, masks

    def _pixel_rows(self) -> Tensor | None:
        """Rows of ``pixel_values`` per image where images share them unevenly (Qwen's patches,
        InternVL's and Idefics3's tiles); ``None`` where each image has one row."""
        if self.image_grid is not None:
            return self.image_grid.prod(-1)
        return self.image_tiles

    def _patches(self, values: Tensor | None, images: list[int]) -> Tensor | None:
        """Rows of the concatenated ``values`` (pixel values, pixel masks) that belong to the
        given images."""
        if values is None or not images:
            return None
        counts = self._pixel_rows().tolist()
        ends = torch.tensor(counts).cumsum(0).tolist()
        rows = [torch.arange(e - n, e) for e, n in zip(ends, counts, strict=True)]
        idx = torch.cat([rows[i] for i in images])
        return values[idx.to(values.device)]

    def with_image_embeds(
        self,
        embeds: list[Float[Tensor, "img_tok d_model"]],
        deepstack: list[list[Float[Tensor, "img_tok d_model"]]] | None = None,
    ) -> LVLMInput:
        """The same batch with its images replaced by precomputed embeddings (and, for DeepStack
        families, ``deepstack``: per DeepStack layer, one ``[n_tokens, d_model]`` per image)."""
        n_images = sum(self.images_per_example)
        if len(embeds) != n_images:
            raise ValueError(f"got {len(embeds)} image embeddings for {n_images} images")
        for i, (e, c) in enumerate(zip(embeds, self.image_coords, strict=False)):
            if e.shape[0] != c.shape[0]:
                raise ValueError(
                    f"image {i}: {e.shape[0]} embeddings for {c.shape[0]} image tokens"
                )
        for layer, feats in enumerate(deepstack or []):
            shapes = [tuple(f.shape) for f in feats]
            if shapes != [tuple(e.shape) for e in embeds]:
                raise ValueError(f"deepstack layer {layer}: feature shapes {shapes} differ from "
                                 "the image embeddings' (one per image, same shape)")
        return replace(self, image_embeds=list(embeds), pixel_values=None,
                       pixel_attention_mask=None,
                       image_deepstack=None if deepstack is None else [list(d) for d in deepstack])
