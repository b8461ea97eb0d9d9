"""HookedLVLM: a vision-language model whose language side is a TransformerLens-hooked decoder."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint
from transformer_lens.HookedRootModule import HookedRootModule

from lvlm_lens.model.analysis import AnalysisMixin, with_bound_images
from lvlm_lens.model.attention import Segment, SelfAlternative, rotary_tables, temperature
from lvlm_lens.model.blocks import Embed, RMSNorm, TransformerBlock, Unembed
from lvlm_lens.model.caching import CachingMixin
from lvlm_lens.model.config import LVLMConfig
from lvlm_lens.model.embedding import EmbeddingMixin
from lvlm_lens.model.families import FAMILIES, image_text, language_model
from lvlm_lens.model.forward import ForwardMixin
from lvlm_lens.model.generate import GenerateMixin
from lvlm_lens.model.inputs import LVLMInput
from lvlm_lens.model.kv_cache import HeadSwitch, KVCache, LayerMemory
from lvlm_lens.model.layout import TokenLayout
from lvlm_lens.model.linear_attention import RecurrentPast
from lvlm_lens.model.masks import causal_mask
from lvlm_lens.model.per_layer import PerLayerInputs
from lvlm_lens.model.prepare import prepare_inputs
from lvlm_lens.model.switches import SwitchesMixin
from lvlm_lens.model.tokens import TokensMixin
from lvlm_lens.model.weights import ModelWeights


class HookedLVLM(
    ForwardMixin, AnalysisMixin, SwitchesMixin, CachingMixin, TokensMixin, GenerateMixin,
    EmbeddingMixin, ModelWeights, HookedRootModule,
):
    """A vision-language model with TransformerLens hooks: LLaVA-1.5 / NeXT / OneVision / OV-1.5,
    Qwen2-VL, Qwen2.5-VL, Qwen3-VL (dense and MoE), Qwen3.5 (dense and MoE), Gemma 3,
    PaliGemma 2, InternVL and Idefics3 / SmolVLM (:data:`~lvlm_lens.model.families.FAMILIES`).

    The vision tower, projector and image packing are the HF model's own modules; the
    language model is one hooked decoder, configured per family by ``cfg.decoder``, sharing
    the HF weights. ``hook_embed`` fires *after* the projected image embeddings
    (``hook_image_embeds``) are spliced into the token embeddings, so every residual-stream
    hook sees the image.

    Build one with :meth:`from_pretrained` or :meth:`from_hf`; make inputs with :meth:`prepare`.

    Attributes:
        cfg: The language backbone's configuration (TransformerLens field names).
        embed: Token embedding (``W_E``).
        hook_tokens: Hook on the token ids ``[batch, pos]`` (image placeholders included)
            before they are embedded.
        hook_image_embeds: Hook on the projected image embeddings, batch-first
            ``[batch, pos, d_model]``: each at its image position, zero at text positions
            (an edit there is ignored), so TL's cache utilities slice it like any activation;
            with cross-attention layers (Llama 3.2 Vision) the image side they read,
            ``[batch, image_pos, d_model]``.
        hook_embed: Hook on the token embeddings with the image embeddings spliced in.
        vision: The HF vision tower, projector and image packing (the family's vision side).
        blocks: The decoder blocks (``blocks[l].attn``, ``blocks[l].mlp``, ``ln1``, ``ln2``;
            ``ln1_post`` / ``ln2_post`` with sandwich norms).
        ln_final: The final RMSNorm.
        unembed: The unembedding (``W_U``).
        rotary_emb: The checkpoint's own rotary-embedding module.
        per_layer_inputs: Gemma 4's per-layer input embeddings (hook
            ``per_layer_inputs.hook_per_layer_inputs``); ``None`` for every other family.
        tokenizer: The checkpoint's tokenizer.
        image_processor: The checkpoint's image processor.
        image_text: How an image appears in this family's prompts and token ids
            (placeholder, what ``<image>`` becomes, expansion).
        chat_template: The chat template used by ``prepare(..., template="chat")``.
    """

    def __init__(
        self,
        cfg: LVLMConfig,
        hf_model: nn.Module,
        tokenizer: Any,
        image_processor: Any,
        chat_template: str | None = None,
    ):
        super().__init__()
        self.cfg = cfg
        lm = language_model(hf_model)
        self.embed = Embed(lm.embed_tokens, cfg.decoder.pad_embedded_ids, cfg.pad_token_id)
        self.hook_tokens = HookPoint()
        self.hook_image_embeds = HookPoint()
        self.hook_embed = HookPoint()
        self.vision = FAMILIES[cfg.lvlm_type].vision(hf_model)
        self.blocks = nn.ModuleList(
            TransformerBlock(cfg, layer, i) for i, layer in enumerate(lm.layers)
        )
        self.ln_final = RMSNorm(lm.norm, cfg.decoder.norm_offset, cfg.decoder.norm_fp32)
        self.unembed = Unembed(hf_model.get_output_embeddings(), cfg.decoder.logit_softcap)
        self.rotary_emb = lm.rotary_emb
        # Gemma 4: per-layer input embeddings (``per_layer_inputs.hook_per_layer_inputs``)
        self.per_layer_inputs = PerLayerInputs(cfg, lm) if cfg.decoder.per_layer_input else None
        self.tokenizer = tokenizer
        self.image_text = image_text(hf_model.config, tokenizer)
        self.image_processor = image_processor
        self.chat_template = chat_template
        object.__setattr__(self, "hf_model", hf_model)  # for reference runs; weights are shared
        self._bound: LVLMInput | None = None
        self.setup()
        self.eval()

    # construction -------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        **hf_kwargs: Any,
    ) -> HookedLVLM:
        """Load a checkpoint (local folder, or hub id where a network exists) with its processor.

        Args:
            name_or_path: Folder or hub id of a checkpoint of a supported family (e.g.
                ``llava-hf/llava-1.5-7b-hf``, ``Qwen/Qwen2.5-VL-7B-Instruct``,
                ``google/gemma-3-4b-it``).
            device: Where to put the weights (default: CUDA if available, else CPU).
            dtype: ``float32`` (default), ``bfloat16`` or ``float16`` (not on CPU).
            **hf_kwargs: Passed to ``from_pretrained`` of the HF model class.
        """
        from lvlm_lens.model.loading import load_pretrained

        return load_pretrained(cls, name_or_path, device=device, dtype=dtype, **hf_kwargs)

    @classmethod
    def from_hf(
        cls,
        hf_model: nn.Module,
        processor: Any = None,
        *,
        tokenizer: Any = None,
        image_processor: Any = None,
        chat_template: str | None = None,
    ) -> HookedLVLM:
        """Wrap an in-memory HF model of a supported family (weights shared, not copied).

        Args:
            hf_model: A ``Llava*``, ``Qwen2VL``, ``Qwen2_5_VL``, ``Qwen3VL``, ``Gemma3``,
                ``InternVL`` or ``Idefics3`` ``ForConditionalGeneration``.
            processor: Its processor; or pass ``tokenizer`` and ``image_processor`` instead.
            tokenizer: The tokenizer, when no processor is given.
            image_processor: The image processor, when no processor is given.
            chat_template: Overrides the processor's / tokenizer's chat template.
        """
        from lvlm_lens.model.loading import wrap_hf

        return wrap_hf(
            cls,
            hf_model,
            processor,
            tokenizer=tokenizer,
            image_processor=image_processor,
            chat_template=chat_template,
        )

    #: ``model.prepare(images, prompts, answers=None, *, template="raw", system=None,
    #: answer_rule="single")``: build a batched :class:`LVLMInput` (see its docstring).
    prepare = prepare_inputs

    # inputs ------------------------------------------------------------------------------
    @contextmanager
    def bind(self, inp: LVLMInput) -> Iterator[LVLMInput]:
        """Bind an input's images to its token ids for the duration of a ``with`` block.

        Inside the block, a plain token tensor equal to ``inp.input_ids`` runs with ``inp``'s
        images, so APIs that pass tokens around (e.g. ``transformer_lens.patching``) see the
        image. (Passing the :class:`LVLMInput` itself in place of tokens works too.) Tokens
        that start with ``inp.input_ids`` (each row, or every row for a one-example ``inp``)
        run with the images and the rest as text, as ``utilities.test_prompt(inp, answer,
        model)`` builds them.
        """
        previous, self._bound = self._bound, inp
        try:
            yield inp
        finally:
            self._bound = previous

    def _as_input(self, input: Any, attention_mask: Tensor | None = None) -> LVLMInput:
        if isinstance(input, LVLMInput):
            return input
        if isinstance(input, str | list):
            input, mask = self.encode_text(input)
            attention_mask = mask if attention_mask is None else attention_mask
        if not isinstance(input, Tensor):
            raise TypeError(f"expected an LVLMInput, a token tensor or text, got {type(input)}")
        if input.ndim == 1:
            input = input[None]
        bound = self._bound
        if bound is not None:  # its ids, maybe followed by text (see model/analysis.py)
            ids = input.to(bound.input_ids.device)
            run = with_bound_images(bound, ids, self.cfg.image_token_id)
            if run is not None:
                return run
        if (input == self.cfg.image_token_id).any():
            raise ValueError(
                "these tokens hold image placeholders but no image: pass the LVLMInput from "
                "model.prepare(...), or run inside `with model.bind(inp):`"
            )
        if attention_mask is None:
            attention_mask = torch.ones_like(input)
        return LVLMInput(input_ids=input, attention_mask=attention_mask, groups={})

    # forward -----------------------------------------------------------------------------
    def run_blocks(
        self,
        x: Float[Tensor, "batch pos d_model"],
        attention_mask: Int[Tensor, "batch pos"],
        past_kv_cache: KVCache | None = None,
        stop_at_layer: int | None = None,
        switch: HeadSwitch | None = None,
        layout: TokenLayout | None = None,
        start_at_layer: int = 0,
    ) -> tuple[Float[Tensor, "batch pos d_model"], list[LayerMemory]]:
        """Run the decoder blocks on already-embedded tokens (after any cached prefix).

        ``switch`` makes the selected query heads read the cache's alternative keys/values
        (and the given alternatives at the new tokens' own positions); it is how the head
        ablation engine runs many masks against one shared prefix. ``layout`` gives the new
        tokens' rotary positions (default: continue after the cache) and image blocks.
        ``start_at_layer`` runs only blocks ``start_at_layer..``: ``x`` is then the residual
        stream entering that block.

        Returns the residual stream after the last block run and each run block's new
        keys/values (a linear-attention layer: its
        :class:`~lvlm_lens.model.kv_cache.RecurrentState` after the new tokens); build a
        cache of them with :meth:`KVCache.from_run <lvlm_lens.model.kv_cache.KVCache.from_run>`.
        """
        b, s, _ = x.shape
        mask_new = attention_mask.to(x.device).long()
        cache = past_kv_cache
        if cache is not None:
            r = cache.rows_per_example(b)
            prev = cache.attention_mask.to(x.device).long().repeat_interleave(r, dim=0)
            key_mask = torch.cat([prev, mask_new], dim=1)
            start = cache.start_positions(r).to(x.device)[:, None]
        else:
            key_mask, start = mask_new, 0
        layout = layout or TokenLayout()
        position_ids = layout.position_ids
        if position_ids is None:
            offset = self.cfg.decoder.position_offset - 1  # PaliGemma: positions from 1
            position_ids = (start + mask_new.cumsum(-1) + offset).masked_fill(mask_new == 0, 1)
        spec = self.cfg.decoder
        per_type = spec.rope_per_layer_type  # Gemma 3: local and global rope bases
        rotary = (
            {t: self.rotary_emb(x, position_ids, t) for t in set(self.cfg.layer_types)}
            if per_type
            else {None: rotary_tables(self.rotary_emb(x, position_ids), spec.rope_pairs)}
        )
        q_scale = temperature(spec, position_ids)
        # Gemma 4: image blocks only on the sliding-window layers
        sliding_only = spec.bidirectional_sliding_only
        kinds = {layer: (w := self.cfg.sliding_windows[layer], spec.chunk(layer),
                         not sliding_only or w is not None)
                 for layer in range(len(self.blocks))}  # fmt: skip
        masks = {
            (w, c, bi): causal_mask(key_mask, s, x.dtype, w, layout.image_blocks if bi else None,
                                    windowed_blocks=not spec.bidirectional_prefix, chunk=c)
            for w, c, bi in set(kinds.values())
        }
        cross = layout.cross  # cross-attention layers: the input's image side, or the cache's
        if cross is None and cache is not None and cache.cross is not None:
            cross = cache.cross.continued(r, s)
        new_kvs = []
        for layer, block in enumerate(self.blocks[:stop_at_layer]):
            if layer < start_at_layer:
                continue
            select = None if switch is None else switch.select[:, layer]
            past, alt = None, None
            states = None if cache is None else cache.states
            if states is not None and states[layer] is not None:  # a linear-attention layer
                alts = cache.alt_states
                other = None if select is None or alts is None else alts[layer]
                index = None if other is None or switch.index is None else switch.index[layer]
                past = RecurrentPast(states[layer], other, None if other is None else select,
                                     index)
            elif cache is not None:
                local = [n for n in kinds[layer][:2] if n is not None]  # window, chunk
                seg = Segment(cache.keys[layer], cache.values[layer],
                              mask_rows_alike=all(cache.length + s <= n for n in local))
                if select is not None and cache.alt_keys is not None:
                    index = None if switch.index is None else switch.index[layer]
                    seg = replace(seg, k_alt=cache.alt_keys[layer],
                                  v_alt=cache.alt_values[layer], select=select, index=index)
                past = [seg]
            if select is not None and switch.self_keys is not None:
                alt = SelfAlternative(switch.self_keys[layer], switch.self_values[layer],
                                      switch.self_src, select, switch.self_queries)
            cos, sin = rotary[self.cfg.layer_types[layer] if per_type else None]
            deep = layout.deepstack
            extra = deep[layer] if deep is not None and layer < len(deep) else None
            ple = None if layout.per_layer is None else layout.per_layer[:, :, layer]
            source = spec.kv_from(layer)  # Gemma 4: K/V shared with an earlier layer
            if source < start_at_layer:
                raise ValueError(f"start_at_layer={start_at_layer} skips layer {source}, whose "
                                 f"keys and values layer {layer} attends with (K/V sharing): "
                                 f"start at layer {source} or before")
            shared = None if source == layer else new_kvs[source - start_at_layer]
            if shared is not None and cache is not None:  # its cache entries are the source's
                past = [replace(past[0], k=cache.keys[source], v=cache.values[source])]
            x, kv = block(x, cos, sin, masks[kinds[layer]], past, alt, extra, q_scale,
                          cross, ple, shared)
            new_kvs.append(kv)
        return x, new_kvs

    def run_prefix(
        self, input: LVLMInput | Tensor, length: int | None = None, *, frozen: bool = True
    ) -> KVCache:
        """Run the first ``length`` positions once and return their KV cache.

        A later ``model(suffix_tokens, past_kv_cache=cache)`` continues from it; a suffix batch
        ``r`` times larger runs ``r`` suffixes per cached example without copying the prefix.
        """
        return self.prefill(input, length, frozen=frozen)[1]

    def prefill(
        self, input: LVLMInput | Tensor, length: int | None = None, *, frozen: bool = True
    ) -> tuple[Float[Tensor, "batch pos d_model"], KVCache]:
        """Like :meth:`run_prefix`, also returning the final residual stream of the prefix."""
        inp = self._as_input(input)
        x, deep = self._embed(inp)
        layout = self.layout(inp, deepstack=deep, embeds=x)
        x = x[:, :length]
        mask = inp.attention_mask.to(x.device)[:, :length]
        if layout.splits_block(x.shape[1]):
            raise ValueError(f"a prefix of length {length} cuts an image in two, and the tokens "
                             "of one image attend to each other both ways: cut after the image")
        layout = layout.cols(slice(None, length))
        resid, kvs = self.run_blocks(x, mask, layout=layout)
        spec, cross = self.cfg.decoder.cross_attention, None
        if spec is not None and layout.cross is not None:  # what the later tokens read
            cross = layout.cross.last({la: kvs[la] for la in spec.layers})
        return resid, KVCache.from_run(kvs, mask, frozen=frozen, cross=cross,
                                       next_position=layout.next_positions(mask))


    def __repr__(self) -> str:  # the HF modules inside make the default repr unreadable
        c = self.cfg
        return (
            f"HookedLVLM({c.model_name or c.lvlm_type}: {c.text_model_type}, {c.n_layers} "
            f"layers, {c.n_heads} heads ({c.n_key_value_heads} kv), d_model={c.d_model}, "
            f"{c.dtype}, {c.device})"
        )
