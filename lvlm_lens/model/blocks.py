"""Gated MLP, the decoder block, embedding and unembedding, with TransformerLens hook names."""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from lvlm_lens.model.attention import KV, Attention, Segment, SelfAlternative
from lvlm_lens.model.config import LVLMConfig
from lvlm_lens.model.cross_attention import CrossAttention, CrossInput
from lvlm_lens.model.linear_attention import GatedDeltaNet
from lvlm_lens.model.moe import SparseMoE
from lvlm_lens.model.norm import RMSNorm, through_hook
from lvlm_lens.model.per_layer import PerLayerBlock, as_pad

__all__ = ["Embed", "GatedMLP", "RMSNorm", "TransformerBlock", "Unembed"]


class GatedMLP(nn.Module):
    """``down(act(gate(x)) * up(x))`` with hooks ``hook_pre`` (gate), ``hook_pre_linear`` (up)
    and ``hook_post``. With the spec's ``fused_gate_up`` (GLM-4.1V) gate and up are the two
    halves of one HF linear ``gate_up_proj``, computed in one matmul as HF does."""

    def __init__(self, cfg: LVLMConfig, hf_mlp: nn.Module):
        super().__init__()
        self.fused = cfg.decoder.fused_gate_up
        if self.fused:
            self.gate_up_proj = hf_mlp.gate_up_proj
        else:
            self.gate_proj, self.up_proj = hf_mlp.gate_proj, hf_mlp.up_proj
        self.down_proj = hf_mlp.down_proj
        # the checkpoint's own activation module (GLM and Llama 4 name it activation_fn)
        self.act = hf_mlp.act_fn if hasattr(hf_mlp, "act_fn") else hf_mlp.activation_fn
        self.hook_pre = HookPoint()
        self.hook_pre_linear = HookPoint()
        self.hook_post = HookPoint()

    def _half(self, up: bool) -> tuple[Tensor, Tensor | None]:
        """Weight ``[d_mlp, d_model]`` and bias of the gate (or, with ``up``, the up) projection."""
        if not self.fused:
            lin = self.up_proj if up else self.gate_proj
            return lin.weight, lin.bias
        w, b = self.gate_up_proj.weight, self.gate_up_proj.bias
        half = slice(w.shape[0] // 2, None) if up else slice(None, w.shape[0] // 2)
        return w[half], None if b is None else b[half]

    @property
    def W_gate(self) -> Float[Tensor, "d_model d_mlp"]:
        return self._half(up=False)[0].T

    @property
    def W_in(self) -> Float[Tensor, "d_model d_mlp"]:
        return self._half(up=True)[0].T

    @property
    def W_out(self) -> Float[Tensor, "d_mlp d_model"]:
        return self.down_proj.weight.T

    @property
    def b_in(self) -> Float[Tensor, " d_mlp"]:
        w, b = self._half(up=True)
        return b if b is not None else w.new_zeros(w.shape[0])

    @property
    def b_out(self) -> Float[Tensor, " d_model"]:
        b = self.down_proj.bias
        return b if b is not None else self.down_proj.weight.new_zeros(self.down_proj.out_features)

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        """Apply the gated MLP."""
        if self.fused:
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        pre = self.hook_pre(gate)
        pre_linear = self.hook_pre_linear(up)
        return self.down_proj(self.hook_post(self.act(pre) * pre_linear))


class TransformerBlock(nn.Module):
    """The decoder block of every family: ``resid_mid = resid_pre + attn(ln1(.))``,
    ``resid_post = resid_mid + mlp(ln2(.))``; with sandwich norms (Gemma, GLM) the attention and
    MLP outputs pass ``ln1_post`` / ``ln2_post`` first (``hook_attn_out`` / ``hook_mlp_out``
    are after them, so they are what the residual stream receives). The MLP of a layer the
    spec's ``moe`` lists is a :class:`~lvlm_lens.model.moe.SparseMoE`; the attention of a layer
    its ``linear_attention`` lists is a :class:`~lvlm_lens.model.linear_attention.GatedDeltaNet`
    (whose input is never split per head); a layer its ``cross_attention`` lists is a gated
    cross-attention layer: ``blocks.{l}.cross_attn`` (a
    :class:`~lvlm_lens.model.cross_attention.CrossAttention`, also reachable as ``attn`` for
    TransformerLens' weight surface; its hooks are named ``cross_attn.hook_*``) and its gates,
    ``resid_mid = resid_pre + tanh(attn_gate) * cross_attn(ln1(.))``, ``resid_post = resid_mid
    + tanh(mlp_gate) * rows * mlp(ln2(.))`` (``hook_attn_gate`` / ``hook_mlp_gate``
    ``[batch, pos, 1]``: the tanh of each gate; ``hook_attn_out`` / ``hook_mlp_out`` are after
    the gates). Without an image the layer adds nothing (HF skips it)."""

    def __init__(self, cfg: LVLMConfig, hf_layer: nn.Module, layer: int):
        super().__init__()
        self.cfg = cfg
        self.layer = layer
        spec = cfg.decoder
        off, fp32 = spec.norm_offset, spec.norm_fp32
        self.ln1 = RMSNorm(hf_layer.input_layernorm, off, fp32)
        lin = spec.linear_attention  # Qwen3.5: Gated-DeltaNet in the layers it lists
        self.linear = lin is not None and layer in lin.layers
        cross = spec.cross_attention  # Llama 3.2 Vision: gated cross-attention layers
        self.cross = cross is not None and layer in cross.layers
        if self.cross:
            self.cross_attn = CrossAttention(cfg, hf_layer.cross_attn)
            # TransformerLens' surface (model.W_Q, loops over blocks[l].attn): the same module
            # as ``attn``, registered second, so its hook names stay ``cross_attn.hook_*``
            self.attn = self.cross_attn
            self.attn_gate = hf_layer.cross_attn_attn_gate
            self.mlp_gate = hf_layer.cross_attn_mlp_gate
            self.hook_attn_gate, self.hook_mlp_gate = HookPoint(), HookPoint()
        else:
            self.attn = (GatedDeltaNet(cfg, lin, hf_layer.linear_attn, layer) if self.linear
                         else Attention(cfg, hf_layer.self_attn, layer))  # fmt: skip
        moe = spec.moe
        sparse = moe is not None and layer in moe.layers
        hf_mlp = hf_layer.mlp if hasattr(hf_layer, "mlp") else hf_layer.feed_forward  # Llama 4
        self.beside = sparse and moe.beside_dense  # Gemma 4: experts beside the dense MLP
        if self.beside:
            self.mlp = GatedMLP(cfg, hf_mlp)
            self.moe = SparseMoE(moe, hf_layer)
            self.ln2_dense_post = RMSNorm(hf_layer.post_feedforward_layernorm_1, off, fp32)
            self.ln2_moe = RMSNorm(hf_layer.pre_feedforward_layernorm_2, off, fp32)
            self.ln2_moe_post = RMSNorm(hf_layer.post_feedforward_layernorm_2, off, fp32)
        else:
            self.mlp = SparseMoE(moe, hf_mlp) if sparse else GatedMLP(cfg, hf_mlp)
        self.sandwich = spec.sandwich_norms
        if self.sandwich:
            post_attn, pre_mlp, post_mlp = spec.sandwich_norm_names
            self.ln1_post = RMSNorm(getattr(hf_layer, post_attn), off, fp32)
            self.ln2 = RMSNorm(getattr(hf_layer, pre_mlp), off, fp32)
            self.ln2_post = RMSNorm(getattr(hf_layer, post_mlp), off, fp32)
            # what TransformerLens' direct-path check reads: a norm after the head sum, so a
            # head's residual write is not z @ W_O and that patching is refused here
            self.submodules = {"attn": self.attn, "ln1_post": self.ln1_post}
            self.hook_aliases = {"hook_attn_out": "ln1_post.hook_normalized"}
        else:
            self.ln2 = RMSNorm(hf_layer.post_attention_layernorm, off, fp32)
        # a linear or cross-attention layer's input is never split per head
        split = () if self.linear or self.cross else ("attn_in", "q_input", "k_input", "v_input")
        for name in ("resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post", "mlp_in",
                     *split):  # mlp_in and the split points: switched
            setattr(self, f"hook_{name}", HookPoint())
        if spec.deepstack:
            self.hook_deepstack = HookPoint()
        self.ple = spec.per_layer_input > 0  # Gemma 4: per-layer inputs after the MLP
        if self.ple:
            self.per_layer = PerLayerBlock(hf_layer, fp32)
            self.hook_per_layer = HookPoint()
        self.scalar = spec.layer_scalar  # Gemma 4: the output residual times a scalar
        if self.scalar:
            self.register_buffer("layer_scalar", hf_layer.layer_scalar, persistent=False)
            self.hook_layer_scale = HookPoint()

    def forward(
        self,
        x: Float[Tensor, "batch pos d_model"],
        cos: Tensor,
        sin: Tensor,
        mask: Tensor,
        past: list[Segment] | None = None,
        alt: SelfAlternative | None = None,
        extra: Float[Tensor, "batch pos d_model"] | None = None,
        q_scale: Tensor | None = None,
        cross: CrossInput | None = None,
        per_layer: Float[Tensor, "batch pos d_ple"] | None = None,
        shared: KV | None = None,
    ) -> tuple[Float[Tensor, "batch pos d_model"], KV | None]:
        """Run the block; returns the new residual stream and this block's new ``(key, value)``
        (a cross-attention layer's: the image side's, ``None`` without an image).

        ``cross`` is the image side the cross-attention layers read. ``extra`` (Qwen3-VL's
        DeepStack features) is added to the residual stream after the block, through
        ``hook_deepstack``, as part of ``hook_mlp_out`` (summed after the MLP's
        residual add, as in HF, unless a hook edits ``hook_mlp_out``); ``q_scale`` is the
        attention's query scale on a layer without RoPE (Llama 4's temperature tuning);
        ``per_layer`` this layer's per-layer input vectors (Gemma 4's PLE); ``shared`` the
        new tokens' keys and values of the layer whose K/V this one reads (Gemma 4); this
        block then returns those."""
        cfg = self.cfg
        resid_pre = self.hook_resid_pre(x)
        if self.cross:
            return self._gated_cross(resid_pre, cross, past, alt)
        split = (cfg.use_attn_in or cfg.use_split_qkv_input) and not self.linear
        attn_in = self.per_head_inputs(resid_pre) if split else self.ln1(resid_pre)
        if self.linear:
            attn_out, kv = self.attn(attn_in, cos, sin, mask, past, alt)
        else:
            attn_out, kv = self.attn(attn_in, cos, sin, mask, past, alt, q_scale, shared)
        if self.sandwich:
            attn_out = self.ln1_post(attn_out)
        resid_mid = self.hook_resid_mid(resid_pre + self.hook_attn_out(attn_out))
        mlp_in = self.hook_mlp_in(resid_mid.clone()) if cfg.use_hook_mlp_in else resid_mid
        mlp_out = self.mlp(self.ln2(mlp_in))
        if self.beside:  # Gemma 4: the experts' normed output added to the dense one's
            experts = self.moe(self.ln2_moe(mlp_in), router_in=mlp_in)
            mlp_out = self.ln2_dense_post(mlp_out) + self.ln2_moe_post(experts)
        if self.sandwich:
            mlp_out = self.ln2_post(mlp_out)
        if self.ple or self.scalar:
            return self._gemma4_tail(resid_mid, mlp_out, per_layer), kv
        if extra is None:
            return self.hook_resid_post(resid_mid + self.hook_mlp_out(mlp_out)), kv
        deep = self.hook_deepstack(extra)
        total, untouched = through_hook(self.hook_mlp_out, mlp_out + deep)
        # HF adds DeepStack features to the block's output: that order where no hook edited it
        resid_post = (resid_mid + mlp_out) + deep if untouched else resid_mid + total
        return self.hook_resid_post(resid_post), kv

    def _gemma4_tail(
        self, resid_mid: Tensor, mlp_out: Tensor, vector: Tensor | None
    ) -> Float[Tensor, "batch pos d_model"]:
        """After the MLP: the per-layer input's write (``hook_per_layer``), then the layer
        scalar's change (``hook_layer_scale``), both part of ``hook_mlp_out``; HF's order of
        operations where no hook edited them."""
        h = resid_mid + mlp_out
        total, exact = mlp_out, True
        if self.ple:
            if vector is None:
                raise ValueError("this decoder has per-layer inputs (Gemma 4's PLE), which come "
                                 "from the token ids: run it from tokens or an LVLMInput")
            ple = self.hook_per_layer(self.per_layer(h, vector))
            h, total = h + ple, total + ple
        out = h
        if self.scalar:
            out = h * self.layer_scalar.to(h.dtype)
            change, exact = through_hook(self.hook_layer_scale, out - h)
            total = total + change
        total, untouched = through_hook(self.hook_mlp_out, total)
        return self.hook_resid_post(out if untouched and exact else resid_mid + total)

    def _gated_cross(
        self,
        resid_pre: Float[Tensor, "batch pos d_model"],
        cross: CrossInput | None,
        past: list[Segment] | None = None,
        alt: SelfAlternative | None = None,
    ) -> tuple[Float[Tensor, "batch pos d_model"], KV | None]:
        """A gated cross-attention layer (see the class docstring). ``past``: the image side's
        keys / values as one cached segment (a KV cache), maybe with alternatives for the heads
        it selects; ``alt``: alternative image-side keys / values for the heads it selects
        (every image-side state is a source; ``alt.src`` is not read)."""
        if cross is None:  # no image in the run: HF skips the layer
            zero = torch.zeros_like(resid_pre)
            resid_mid = self.hook_resid_mid(resid_pre + self.hook_attn_out(zero))
            if self.cfg.use_hook_mlp_in:  # fires as on any layer (no MLP reads it here)
                self.hook_mlp_in(resid_mid.clone())
            return self.hook_resid_post(resid_mid + self.hook_mlp_out(zero.clone())), None
        b, s, _ = resid_pre.shape
        seg = None if past is None else past[0]
        kv = None if cross.kv is None else cross.kv.get(self.layer)
        if seg is None and alt is not None:
            k, v = kv if kv is not None else self.cross_attn.image_kv(cross.states)
            seg = Segment(k, v, alt.k, alt.v, alt.select, queries=alt.queries)
        attn, kv = self.cross_attn(self.ln1(resid_pre), cross, kv, seg)
        gate = self.hook_attn_gate(self.attn_gate.tanh().expand(b, s, 1).clone())
        resid_mid = self.hook_resid_mid(resid_pre + self.hook_attn_out(gate * attn))
        mlp_in = self.hook_mlp_in(resid_mid.clone()) if self.cfg.use_hook_mlp_in else resid_mid
        mlp = cross.rows[..., None] * self.mlp(self.ln2(mlp_in))
        gate = self.hook_mlp_gate(self.mlp_gate.tanh().expand(b, s, 1).clone())
        return self.hook_resid_post(resid_mid + self.hook_mlp_out(gate * mlp)), kv

    def per_head_inputs(
        self, resid_pre: Float[Tensor, "batch pos d_model"]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The attention's normalised query, key and value inputs, one copy per head that
        reads it (``[batch, pos, head, d_model]``, K/V: ``kv_head``), through ``hook_attn_in``
        and / or ``hook_q_input`` / ``hook_k_input`` / ``hook_v_input`` (see
        :mod:`~lvlm_lens.model.switches`)."""
        cfg = self.cfg
        h, h_kv = cfg.n_heads, getattr(self.attn, "n_kv", cfg.n_key_value_heads)
        src = resid_pre[:, :, None]
        if cfg.use_attn_in:
            src = self.hook_attn_in(src.expand(-1, -1, h, -1).clone())
        if not cfg.use_split_qkv_input:
            q = self.ln1(src)
            return q, q[:, :, :h_kv], q[:, :, :h_kv]

        def fork(hook: HookPoint, n: int) -> Tensor:
            return hook(src[:, :, :n].expand(-1, -1, n, -1).clone())

        # TL's order: the three inputs' hooks, then ln1 on each
        qkv = (fork(self.hook_q_input, h), fork(self.hook_k_input, h_kv),
               fork(self.hook_v_input, h_kv))
        return self.ln1(qkv[0]), self.ln1(qkv[1]), self.ln1(qkv[2])


class Embed(nn.Module):
    """Token embedding (the checkpoint's own ``nn.Embedding``, with its scale if it has one:
    Gemma multiplies by ``sqrt(d_model)``; ``W_E`` is the unscaled table). The ids in
    ``pad_as`` are embedded as ``pad_id`` (Gemma 4's multimodal placeholders, as HF)."""

    def __init__(self, hf_embed: nn.Embedding, pad_as: tuple[int, ...] = (), pad_id: int = 0):
        super().__init__()
        self.embed_tokens = hf_embed
        self.pad_as, self.pad_id = pad_as, pad_id

    @property
    def W_E(self) -> Float[Tensor, "d_vocab d_model"]:
        return self.embed_tokens.weight

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        if self.pad_as:
            tokens = as_pad(tokens, self.pad_as, self.pad_id)
        return self.embed_tokens(tokens)


class Unembed(nn.Module):
    """Unembedding (the checkpoint's own ``lm_head``), then ``tanh(logits / cap) * cap`` where
    the decoder caps its logits (Gemma 2's ``final_logit_softcapping``; ``W_U`` is before it)."""

    def __init__(self, lm_head: nn.Linear, softcap: float | None = None):
        super().__init__()
        self.lm_head = lm_head
        self.softcap = softcap

    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        return self.lm_head.weight.T

    @property
    def b_U(self) -> Float[Tensor, " d_vocab"]:
        b = self.lm_head.bias
        return b if b is not None else self.lm_head.weight.new_zeros(self.lm_head.out_features)

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_vocab"]:
        logits = self.lm_head(x)
        if self.softcap is None:
            return logits
        return torch.tanh(logits / self.softcap) * self.softcap
