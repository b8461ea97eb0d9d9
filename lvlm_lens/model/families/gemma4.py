"""Gemma 4 (``Gemma4ForConditionalGeneration``), image side: a ViT over each image at its own
(aspect-preserving) resolution with 2-D position embeddings, average pooling of ``k x k``
patches, a weightless norm and a linear projection; then a Gemma decoder with per-layer input
embeddings (PLE), q / k / v norms, a scalar per layer, sliding-window and global layers (the
global ones with their own head width and rope), bidirectional attention within an image on
the sliding layers (``use_bidirectional_attention="vision"``), capped logits, K/V shared by
the last layers (``num_kv_shared_layers``), keys as values on the global layers
(``attention_k_eq_v``) and experts beside each dense MLP (``enable_moe_block``). Audio and
video inputs are refused. Tiny checkpoint: ``lvlm_lens/testing/tiny_gemma4.py``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jaxtyping import Float, Int
from torch import Tensor, nn

from lvlm_lens.model.config import DecoderSpec, MoESpec
from lvlm_lens.model.families.base import Family, ImageText, language_model, token_name
from lvlm_lens.model.vision import VisionSide, grid_coords

#: Image-processor outputs the vision side keeps per image (``LVLMInput.image_extra``).
EXTRA_KEYS = ("image_position_ids",)


class Gemma4Vision(VisionSide):
    """The vision tower and ``embed_vision``: HF's ``get_image_features`` with each image's
    patch positions. Image ``k`` of ``rows x cols`` patches gives a row-major grid of
    ``(rows / p) x (cols / p)`` tokens, ``p`` the pooling kernel."""

    extra_keys = EXTRA_KEYS

    def __init__(self, hf_model: nn.Module):
        super().__init__(hf_model)
        inner = hf_model.model
        if getattr(inner, "vision_tower", None) is None:
            raise ValueError("this Gemma 4 checkpoint has no vision tower (vision_config is "
                             "None): lvlm_lens supports its image side only")
        self.vision_tower = inner.vision_tower
        self.embed_vision = inner.embed_vision
        self.pool = hf_model.config.vision_config.pooling_kernel_size

    def forward(self, inp: Any) -> list[Float[Tensor, "img_tok d_model"]]:
        """One ``[rows * cols, d_model]`` tensor per image; the pixel values in their own dtype
        (the tower rescales them before casting, as HF's forward gives them)."""
        pixels = inp.pixel_values.to(next(self.parameters()).device)
        positions = inp.image_extra["image_position_ids"].to(pixels.device)
        out = self._inner.get_image_features(pixels, positions, return_dict=True)
        return list(out.pooler_output)

    def grid(self, positions: Int[Tensor, "patch 2"]) -> tuple[int, int]:
        """``(rows, cols)`` of tokens of an image from its patches' ``(x, y)`` positions
        (``-1`` for padding patches)."""
        real = positions[(positions >= 0).all(-1)]
        cols, rows = (real.amax(0) + 1).tolist()
        return rows // self.pool, cols // self.pool

    def token_layout(
        self, processed: Mapping[str, Tensor], images_per_example: list[int]
    ) -> list[Int[Tensor, "img_tok 3"]]:
        """``(0, row, col)`` of every image token on its image's own pooled grid."""
        return [grid_coords(*self.grid(p)) for p in processed["image_position_ids"]]


def gemma4_decoder(hf_model: nn.Module) -> DecoderSpec:
    """Gemma 4's decoder, read off the HF modules: head width and K/V heads per layer, the
    embedding scale, PLE width, bidirectional image blocks on the sliding layers."""
    cfg = hf_model.config
    tc = cfg.text_config
    mode = getattr(tc, "use_bidirectional_attention", None)
    if mode not in (None, "vision"):
        raise ValueError(f"Gemma 4 with use_bidirectional_attention={mode!r} is not supported "
                         "(a non-causal decoder): only None or 'vision'")
    lm = language_model(hf_model)
    attn = [layer.self_attn for layer in lm.layers]
    sources = kv_sources(tc)
    widths = tuple(a.head_dim for a in attn)
    kv = tuple(attn[s].k_proj.out_features // attn[s].head_dim for s in sources)
    return DecoderSpec(
        norm_offset=0.0,
        norm_fp32=True,
        moe=moe_spec(tc),
        sandwich_norms=True,
        qk_norm=True,
        v_norm=True,
        embed_scale=float(lm.embed_tokens.scalar_embed_scale),
        rope_per_layer_type=True,
        bidirectional_image=mode == "vision",
        bidirectional_sliding_only=True,
        logit_softcap=getattr(tc, "final_logit_softcapping", None),
        head_dims=widths if len(set(widths)) > 1 else (),
        kv_heads=kv if len(set(kv)) > 1 else (),
        per_layer_input=int(tc.hidden_size_per_layer_input or 0),
        layer_scalar=True,
        kv_sources=sources if sources != tuple(range(len(sources))) else (),
        values_from_keys=tuple(i for i, a in enumerate(attn) if a.use_alternative_attention),
        pad_embedded_ids=tuple(i for i in (cfg.image_token_id, cfg.video_token_id,
                                           cfg.audio_token_id) if i is not None),
    )


def moe_spec(tc: Any) -> MoESpec | None:
    """The experts every layer runs beside its dense MLP (``enable_moe_block``): softmax
    routing to the top ``top_k_experts``, renormalised, times each one's per-expert scale."""
    if not getattr(tc, "enable_moe_block", False):
        return None
    return MoESpec(
        n_experts=tc.num_experts, top_k=tc.top_k_experts, d_expert=tc.moe_intermediate_size,
        layers=tuple(range(tc.num_hidden_layers)), beside_dense=True, router_norm=True,
        per_expert_scale=True,
    )  # fmt: skip


def kv_sources(tc: Any) -> tuple[int, ...]:
    """Per layer, the layer whose keys and values it attends with: HF's K/V-sharing layers
    (the last ``num_kv_shared_layers``) read the last earlier layer of their type."""
    n, shared = tc.num_hidden_layers, tc.num_kv_shared_layers or 0
    first = n - shared
    if shared and first <= 0:
        raise ValueError(f"Gemma 4 with num_kv_shared_layers={shared} of {n} layers (no layer "
                         "computes keys) is not supported")
    types = tc.layer_types
    last = {t: max(i for i in range(first) if types[i] == t) for t in set(types[:first])}
    return tuple(i if i < first else last[types[i]] for i in range(n))


def gemma4_image_text(config: Any, tokenizer: Any) -> ImageText:
    """The image token in prompts; ``<boi><image><eoi>`` before tokenization (HF
    ``Gemma4Processor.replace_image_token``); the end marker closes it."""
    token = token_name(tokenizer, config.image_token_id)
    boi = token_name(tokenizer, config.boi_token_id)
    eoi = token_name(tokenizer, config.eoi_token_id)
    def markers(*ids: int | None) -> tuple[str, ...]:
        return tuple(token_name(tokenizer, i) for i in ids if i is not None and i < len(tokenizer))

    return ImageText(token, token, f"{boi}{token}{eoi}", (eoi,),
                     refused=markers(config.video_token_id),
                     refused_audio=markers(config.audio_token_id, config.boa_token_id))


def gemma4_hf_extra(inp: Any, kw: dict) -> dict:
    """HF's keywords: each image's patch positions beside its pixel values."""
    if "pixel_values" in kw:
        kw["image_position_ids"] = inp.image_extra["image_position_ids"]
    return kw


BY_MODEL_TYPE = {
    "gemma4": Family(
        "Gemma 4", "Gemma4ForConditionalGeneration", ("gemma4_text",),
        ("google/gemma-4-e2b-it", "google/gemma-4-e4b-it", "google/gemma-4-26B-A4B-it",
         "google/gemma-4-31B-it"),
        hf_inputs=("mm_token_type_ids",), vision=Gemma4Vision, decoder_spec=gemma4_decoder,
        image_text=gemma4_image_text, tiny_kinds=("gemma4",), hf_extra=gemma4_hf_extra,
        own_mask=True,
    ),
}  # fmt: skip
