"""The language backbone's configuration, in TransformerLens' field names."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch


@dataclass(frozen=True)
class MoESpec:
    """A sparse mixture-of-experts MLP (Qwen3-VL-MoE): a linear router over ``n_experts``
    experts, softmax, the ``top_k`` most probable experts per token (their probabilities
    renormalised to sum to 1 where ``renormalize``), each a gated MLP of width ``d_expert``;
    the MLP output is the routing-weighted sum of the chosen experts' outputs.

    Attributes:
        n_experts: Experts per sparse layer.
        top_k: Experts each token is sent to.
        d_expert: Hidden width of one expert.
        layers: The layers whose MLP is sparse (the others keep a dense gated MLP).
        renormalize: The chosen experts' probabilities are divided by their sum.
        shared_expert: Every token also passes a shared gated MLP (``hf_mlp.shared_expert``)
            whose output is scaled by ``sigmoid(shared_expert_gate(x))`` and added (Qwen3.5-MoE).
        shared_module: The HF attribute of the shared MLP (GLM-4.5V: ``shared_experts``).
        shared_gated: The shared MLP's output is scaled by its sigmoid gate (GLM-4.5V, Llama 4:
            added as it is).
        scoring: ``"softmax"`` over the router logits (Qwen), or ``"sigmoid"`` of each logit
            computed in fp32 (GLM-4.5V's DeepSeek-style router; Llama 4's, whose unchosen
            experts then weigh nothing).
        router_fp32: The router's logits are computed in fp32 (GLM-4.5V; Llama 4's stay in the
            model's dtype).
        choice_bias: The router's ``e_score_correction_bias`` is added to the scores for the
            choice of experts only (the weights stay the unbiased scores).
        n_group: Experts are split into this many groups; only the ``topk_group`` groups of
            largest sum of their two best (biased) scores are eligible.
        topk_group: See ``n_group``.
        routed_scaling: Factor on the chosen experts' weights (after any renormalisation).
        weight_input: The routing weight scales the expert's input, not its output (Llama 4).
        experts_transposed: The fused expert weights are stored ``[expert, d_model, 2 *
            d_expert]`` / ``[expert, d_expert, d_model]`` (Llama 4) instead of ``[expert, 2 *
            d_expert, d_model]`` / ``[expert, d_model, d_expert]``.
        beside_dense: The experts run beside the layer's dense MLP (Gemma 4's
            ``enable_moe_block``): the router and the experts are the HF layer's ``router`` /
            ``experts`` (``blocks.{l}.moe``); the router reads the MLP's input before any norm,
            the experts it after ``pre_feedforward_layernorm_2``; the dense output passes
            ``post_feedforward_layernorm_1``, the experts' ``post_feedforward_layernorm_2``
            (``blocks.{l}.ln2_dense_post`` / ``ln2_moe`` / ``ln2_moe_post``), and their sum the
            layer's ``ln2_post``.
        router_norm: The router's input is RMS-normalised without weight, times the router's
            ``scale`` and ``d_model ** -0.5`` (Gemma 4); its linear is ``router.proj``.
        per_expert_scale: The chosen experts' weights are multiplied by the router's
            ``per_expert_scale`` of each (after the renormalisation; Gemma 4).
    """

    n_experts: int
    top_k: int
    d_expert: int
    layers: tuple[int, ...]
    renormalize: bool = True
    shared_expert: bool = False
    shared_module: str = "shared_expert"
    shared_gated: bool = True
    scoring: Literal["softmax", "sigmoid"] = "softmax"
    router_fp32: bool = False
    choice_bias: bool = False
    n_group: int = 1
    topk_group: int = 1
    routed_scaling: float = 1.0
    weight_input: bool = False
    experts_transposed: bool = False
    beside_dense: bool = False
    router_norm: bool = False
    per_expert_scale: bool = False


@dataclass(frozen=True)
class LinearAttentionSpec:
    """Gated-DeltaNet linear-attention layers (Qwen3.5), in place of self-attention in the
    layers it lists (:class:`~lvlm_lens.model.linear_attention.GatedDeltaNet`).

    Attributes:
        n_k_heads: Query / key heads (each read by ``n_v_heads / n_k_heads`` value heads).
        n_v_heads: Value heads: the heads of the layer, each with its own recurrent state.
        d_k: Width of one query / key head.
        d_v: Width of one value head.
        conv_kernel: Length of the causal depthwise convolution over q, k and v.
        layers: The linear-attention layers (the others keep full attention).
    """

    n_k_heads: int
    n_v_heads: int
    d_k: int
    d_v: int
    conv_kernel: int
    layers: tuple[int, ...]


@dataclass(frozen=True)
class CrossAttentionSpec:
    """Gated cross-attention layers (Llama 3.2 Vision), in place of self-attention in the
    layers it lists (:class:`~lvlm_lens.model.cross_attention.CrossAttention`): the text
    queries read keys / values of the image side (the projected vision states, never part of
    the residual stream); the block adds ``tanh(attn_gate)`` times the attention output and
    ``tanh(mlp_gate)`` times the MLP output (zero at tokens that see no image).

    Attributes:
        layers: The cross-attention layers (the others keep self-attention).
    """

    layers: tuple[int, ...]


@dataclass(frozen=True)
class DecoderSpec:
    """What differs between the language models of the supported families.

    The one decoder block (:mod:`~lvlm_lens.model.blocks`) and the one attention
    (:mod:`~lvlm_lens.model.attention`) read these flags; the weights, the embedding (with its
    scale), the MLP activation and the rotary tables stay the HF modules' own.

    Attributes:
        norm_offset: RMSNorm multiplies by ``norm_offset + w`` (1 for Gemma's ``1 + w``).
        sandwich_norms: Norms also after attention and after the MLP, before each residual
            add (Gemma 2/3, GLM-4.1V); their hooks are ``blocks.{l}.ln1_post`` / ``ln2_post``.
        sandwich_norm_names: With ``sandwich_norms``, the HF layer's attribute names of
            ``ln1_post``, ``ln2`` and ``ln2_post`` (Gemma's by default; GLM-4.1V's are
            ``post_self_attn_layernorm``, ``post_attention_layernorm``, ``post_mlp_layernorm``).
        qk_norm: RMSNorm over ``d_head`` of each query and key head before RoPE (Gemma 3):
            ``blocks.{l}.attn.q_norm`` / ``k_norm``.
        embed_scale: Factor the HF embedding multiplies token embeddings by (``sqrt(d_model)``
            for Gemma); image embeddings are spliced in unscaled, after it.
        rotary: ``"rope"`` (1-D positions), ``"mrope"`` (Qwen2-VL's multimodal RoPE: ``(t, h,
            w)`` positions per token, ``[3, batch, pos]``, the rotary module splits the
            frequencies into ``mrope_section`` blocks) or ``"mrope_interleaved"`` (Qwen3-VL: the
            same positions, the frequencies of t, h, w interleaved).
        rotary_pairs: RoPE rotates adjacent pairs of dimensions ``(2i, 2i + 1)`` (GLM-4.1V;
            HF's tables then hold each frequency twice in a row) instead of the two halves of
            the rotated dimensions.
        rope_per_layer_type: The rotary module takes the layer type (Gemma 3: a local and a
            global rope base).
        bidirectional_image: The tokens of one image attend to each other in both directions
            (Gemma 3); everything else stays causal.
        deepstack: Features of intermediate vision layers are added at the image positions
            after the first decoder layers (Qwen3-VL's DeepStack): ``blocks.{l}.hook_deepstack``,
            part of that layer's ``hook_mlp_out`` so ``decompose_resid`` still sums.
        moe: The sparse MLP of the layers it lists (:class:`MoESpec`), ``None`` where every
            MLP is dense: ``blocks.{l}.mlp`` is then a :class:`~lvlm_lens.model.moe.SparseMoE`.
        attn_output_gate: Full attention multiplies each head's output by ``sigmoid`` of a gate
            its ``q_proj`` also computes (Qwen3.5: per head, ``d_head`` query then ``d_head``
            gate rows): ``blocks.{l}.attn.hook_gate``, before the sigmoid.
        linear_attention: The Gated-DeltaNet layers (:class:`LinearAttentionSpec`), ``None``
            where every layer has self-attention.
        bidirectional_prefix: Prefix-LM attention (PaliGemma): the real tokens of an input (image
            and prompt) attend to each other both ways, seen whole past a sliding window (HF's
            order); tokens run after a KV cache (generated ones, suffixes) attend causally.
        position_offset: Rotary positions count from this (PaliGemma: 1).
        attn_softcap: Attention scores become ``tanh(scores / cap) * cap`` after scaling and
            before the mask (Gemma 2's ``attn_logit_softcapping``); ``hook_attn_scores`` holds
            them capped. The fused kernels cannot cap, so attention is then always materialised.
        fused_gate_up: The gated MLP's gate and up projections are one HF linear
            ``gate_up_proj`` (gate rows first, GLM-4.1V), run as one matmul and split, as HF.
        cross_attention: The gated cross-attention layers (:class:`CrossAttentionSpec`),
            ``None`` where the image enters as tokens of the sequence: the image is then not
            spliced into the embeddings (its placeholder stays an ordinary token) and is read
            only by those layers.
        logit_softcap: Logits become ``tanh(logits / cap) * cap`` in ``unembed`` (Gemma 2's
            ``final_logit_softcapping``); ``W_U`` stays the linear map before the cap.
        rope_pairs: RoPE rotates consecutive pairs of a head's dimensions (Llama 4's complex
            ``freqs_cis``: the rotary module returns ``cos + i sin`` per pair) instead of its
            two halves.
        no_rope_layers: Layers without RoPE (Llama 4's NoPE layers, ``no_rope_layers`` 0).
        qk_l2_norm: On the RoPE layers, queries and keys pass a weightless RMSNorm (eps
            ``cfg.eps``) after RoPE (Llama 4's ``use_qk_norm``); ``hook_rot_q`` / ``hook_rot_k``
            hold them normalised, as the scores read them.
        attn_temperature: ``(floor_scale, attn_scale)``: on the layers without RoPE, queries
            are scaled by ``1 + attn_scale * log1p(floor((pos + 1) / floor_scale))`` at rotary
            position ``pos`` (Llama 4's ``attn_temperature_tuning``; ``hook_rot_q`` holds them
            scaled).
        attention_chunk: Chunked local attention (Llama 4's ``attention_chunk_size``) on the
            layers ``chunked_layers`` lists: a query sees only the keys of its own chunk of
            ``attention_chunk`` rotary positions (``pos // attention_chunk``).
        chunked_layers: The layers with chunked attention.
        head_dims: Per-layer head width where the layers differ (Gemma 4: its global layers'
            ``global_head_dim``), ``()`` where every layer has ``cfg.d_head``; each
            ``blocks.{l}.attn`` then reads its own (``attn.d_head``), its stacked weights differ
            in shape and are read per layer.
        kv_heads: Per-layer K/V head count where the layers differ (Gemma 4's
            ``num_global_key_value_heads``), ``()`` where every layer has
            ``cfg.n_key_value_heads`` (``attn.n_kv``).
        v_norm: Values pass a weightless RMSNorm over ``d_head`` (eps ``cfg.eps``; Gemma 4's
            ``v_norm``) before ``hook_v``, which holds them as the attention reads them.
        bidirectional_sliding_only: With ``bidirectional_image``, only the sliding-window layers
            let an image's tokens attend both ways; the global layers stay causal (Gemma 4).
        per_layer_input: Per-layer input embeddings (Gemma 4's PLE): the width of each layer's
            slice (``hidden_size_per_layer_input``), ``0`` without. A table of the token ids
            plus a projection of the embeddings (:mod:`~lvlm_lens.model.per_layer`) gives each
            layer a vector per token; after the MLP the block adds ``norm(proj(act(gate(
            resid)) * vector))`` (``blocks.{l}.hook_per_layer``, part of ``hook_mlp_out``).
        layer_scalar: The block's output residual is multiplied by the layer's HF
            ``layer_scalar`` buffer (Gemma 4); ``blocks.{l}.hook_layer_scale`` holds the change
            this makes, ``(scalar - 1) * resid``, part of ``hook_mlp_out`` so ``decompose_resid``
            still sums.
        kv_sources: Per layer, the layer whose keys and values it attends with (Gemma 4's
            ``num_kv_shared_layers``: the last layers reuse those of the last earlier layer of
            their type), ``()`` where each layer has its own. A sharing layer projects only
            queries; its ``hook_rot_k`` / ``hook_v`` re-emit the source's (an edit there is its
            own; an edit at the source's reaches every layer sharing it, as in HF).
        values_from_keys: Layers whose values are their keys as projected, before ``k_norm``
            (Gemma 4's ``attention_k_eq_v`` on its global layers): no ``v_proj``, ``W_V`` is
            ``W_K``; the values still pass ``v_norm``.
        norm_fp32: RMSNorms multiply by their weight in fp32 and round once (Gemma 4's ``w``
            norms, as Gemma's ``1 + w`` ones always do); else in the model's dtype.
        pad_embedded_ids: Token ids the HF model embeds as its pad token wherever they occur
            (Gemma 4's image, video and audio placeholders: an image token then carries the
            image embedding spliced over it; a generated one stays the pad embedding).
    """

    norm_offset: float = 0.0
    sandwich_norms: bool = False
    sandwich_norm_names: tuple[str, str, str] = (
        "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm"
    )
    qk_norm: bool = False
    embed_scale: float = 1.0
    rotary: Literal["rope", "mrope", "mrope_interleaved"] = "rope"
    rotary_pairs: bool = False
    rope_per_layer_type: bool = False
    bidirectional_image: bool = False
    deepstack: bool = False
    moe: MoESpec | None = None
    attn_output_gate: bool = False
    linear_attention: LinearAttentionSpec | None = None
    attn_softcap: float | None = None
    bidirectional_prefix: bool = False
    position_offset: int = 0
    logit_softcap: float | None = None
    fused_gate_up: bool = False
    rope_pairs: bool = False
    no_rope_layers: tuple[int, ...] = ()
    qk_l2_norm: bool = False
    attn_temperature: tuple[float, float] | None = None
    attention_chunk: int | None = None
    chunked_layers: tuple[int, ...] = ()
    cross_attention: CrossAttentionSpec | None = None
    head_dims: tuple[int, ...] = ()
    kv_heads: tuple[int, ...] = ()
    v_norm: bool = False
    bidirectional_sliding_only: bool = False
    per_layer_input: int = 0
    layer_scalar: bool = False
    pad_embedded_ids: tuple[int, ...] = ()
    norm_fp32: bool = False
    kv_sources: tuple[int, ...] = ()
    values_from_keys: tuple[int, ...] = ()

    def chunk(self, layer: int) -> int | None:
        """The attention chunk of a layer (``None``: not chunked)."""
        return self.attention_chunk if layer in self.chunked_layers else None

    def kv_from(self, layer: int) -> int:
        """The layer whose keys and values ``layer`` attends with (itself unless shared)."""
        return self.kv_sources[layer] if self.kv_sources else layer

    def head_width(self, layer: int, default: int) -> int:
        """The head width of a layer (``default``: ``cfg.d_head``)."""
        return self.head_dims[layer] if self.head_dims else default

    def kv_head_count(self, layer: int, default: int) -> int:
        """The K/V head count of a layer (``default``: ``cfg.n_key_value_heads``)."""
        return self.kv_heads[layer] if self.kv_heads else default


@dataclass
class LVLMConfig:
    """Configuration of a hooked LVLM language backbone.

    Field names follow ``transformer_lens`` so that ``ActivationCache`` and
    ``transformer_lens.patching`` read them as they would a ``HookedTransformerConfig``.

    Attributes:
        n_layers: Number of decoder blocks.
        n_heads: Number of query heads per block.
        d_head: Dimension of one head.
        d_model: Width of the residual stream.
        d_mlp: Hidden width of the gated MLP.
        d_vocab: Vocabulary size of the unembedding.
        n_key_value_heads: Number of key/value heads (``< n_heads`` under grouped-query attention).
        eps: RMSNorm epsilon.
        act_fn: Name of the MLP activation in ``transformers.activations.ACT2FN``.
        sliding_windows: Per-layer sliding-window size, ``None`` for full attention.
        layer_types: Per-layer HF layer type (``full_attention`` / ``sliding_attention``).
        decoder: What this family's decoder does differently (:class:`DecoderSpec`).
        n_ctx: Maximum number of positions of the checkpoint.
        model_name: Name or path the model was loaded from.
        lvlm_type: HF ``model_type`` of the multimodal model (``llava``, ``llava_next``, ...).
        text_model_type: HF ``model_type`` of the language backbone (``llama``, ``mistral``, ...).
        image_token_id: Token id of the image placeholder.
        pad_token_id: Token id used for left padding.
        device: Device the weights live on.
        dtype: Dtype of the weights.
        use_attn_result: Compute and hook the per-head output ``blocks.{l}.attn.hook_result``.
        fused_attention: Where no hook reads ``attn.hook_attn_scores`` / ``attn.hook_pattern``,
            attend with fused kernels that never hold the full scores (same numbers); where
            hooks only read them (caching), ``z`` still comes from those kernels, so cached and
            plain runs give the same logits bit for bit; ``False`` always materialises them.
        normalization_type: Always ``"RMS"`` (TransformerLens field, read by ``ActivationCache``).
        final_rms: Always true: a final RMSNorm (``ln_final``) precedes the unembedding.
        attn_only: Always false: every block has an MLP.
        positional_embedding_type: Always ``"rotary"``.
        original_architecture: HF architecture name of the checkpoint, if known.
        default_prepend_bos: Whether ``to_tokens`` prepends BOS by default.
        use_split_qkv_input: Hook ``hook_q_input`` / ``hook_k_input`` / ``hook_v_input`` (a copy
            of the attention input per head; see :mod:`~lvlm_lens.model.switches`).
        use_attn_in: Hook ``hook_attn_in`` (the attention input copied per query head).
        use_hook_mlp_in: Hook ``hook_mlp_in`` (the MLP input before ``ln2``).
        extra: Family-specific settings that have no TransformerLens field.
    """

    n_layers: int
    n_heads: int
    d_head: int
    d_model: int
    d_mlp: int
    d_vocab: int
    n_key_value_heads: int
    eps: float
    act_fn: str = "silu"
    sliding_windows: tuple[int | None, ...] = ()
    layer_types: tuple[str, ...] = ()
    decoder: DecoderSpec = field(default_factory=DecoderSpec)
    n_ctx: int = 4096
    model_name: str = ""
    lvlm_type: str = "llava"
    text_model_type: str = "llama"
    image_token_id: int = -1
    pad_token_id: int = 0
    device: torch.device | str = "cpu"
    dtype: torch.dtype = torch.float32
    use_attn_result: bool = False
    fused_attention: bool = True
    # Constant TransformerLens fields that analysis code reads.
    normalization_type: str = "RMS"
    final_rms: bool = True
    attn_only: bool = False
    positional_embedding_type: str = "rotary"
    original_architecture: str = ""
    default_prepend_bos: bool = True
    use_split_qkv_input: bool = False
    use_attn_in: bool = False
    use_hook_mlp_in: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def n_groups(self) -> int:
        """Query heads per key/value head."""
        return self.n_heads // self.n_key_value_heads

    @property
    def ungroup_grouped_query_attention(self) -> bool:
        """TransformerLens flag: ``hook_k``/``hook_v`` carry one entry per key/value head."""
        return False
