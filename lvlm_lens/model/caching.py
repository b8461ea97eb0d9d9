"""Activation caching of :class:`~lvlm_lens.HookedLVLM` with TransformerLens' semantics.

Every cached activation is batch-first, the image embeddings included (``hook_image_embeds``
fires ``[batch, pos, d_model]``), so ``ActivationCache.remove_batch_dim()``,
``apply_slice_to_batch_dim()`` and per-example slicing pick the right rows. ``pos_slice``
slices the position axis of every activation: axis 1 of ``[batch, pos, ...]`` hooks
(``hook_q`` / ``hook_rot_q`` / ``hook_z`` / ``hook_result``, whose head axis comes after the
position), the query axis (2) of ``hook_attn_scores`` / ``hook_pattern``. TransformerLens
picks the axis from the end of the tensor by the hook's name instead, which slices the head
axis of ``hook_rot_q`` / ``hook_rot_k``. The cache object answers TransformerLens' name of a
cross-attention layer's hooks (``blocks.{l}.attn.hook_z``, ``("z", l)``) with that layer's
``cross_attn.hook_*`` (what TL's patching helpers read). The image side those layers read
(``hook_image_embeds``, ``cross_attn.hook_k`` / ``hook_v``, ``[batch, image_pos, ...]``) has
no position axis: ``pos_slice`` leaves it whole (:func:`image_side_hooks`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor
from transformer_lens.ActivationCache import ActivationCache
from transformer_lens.hook_points import HookPoint
from transformer_lens.utilities import Slice, get_act_name

from lvlm_lens.model.linear_refusal import LinearAwareDict
from lvlm_lens.model.linear_sweeps import direct_path_source
from lvlm_lens.model.switches import refuse_if_off, switch_off

#: Hooks whose position axis is not axis 1 of the batch-first tensor: scores and patterns
#: are ``[batch, head, query_pos, key_pos]``, sliced on the query axis as TransformerLens does.
_QUERY_AXIS = ("hook_attn_scores", "hook_pattern")


def position_axis(name: str) -> int:
    """The position axis of the batch-first activation of hook ``name`` (query axis of scores
    and patterns)."""
    return 2 if name.endswith(_QUERY_AXIS) else 1


def image_side_hooks(cfg: Any) -> set[str]:
    """Hooks whose axis 1 is the image side the cross-attention layers read (Llama 3.2 Vision:
    ``hook_image_embeds`` and each cross layer's ``cross_attn.hook_k`` / ``hook_v`` and
    ``cross_attn.k_norm.*``), not the sequence: they have no position axis, and ``pos_slice``
    leaves them whole."""
    cross = cfg.decoder.cross_attention
    if cross is None:
        return set()
    ends = ("hook_k", "hook_v", "k_norm.hook_scale", "k_norm.hook_normalized")
    return {"hook_image_embeds"} | {f"blocks.{la}.cross_attn.{end}"
                                    for la in cross.layers for end in ends}  # fmt: skip


class CrossLayerError(KeyError):
    """A cross-attention layer's hook missing from a cache (printed as one line)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class LVLMActivationCache(ActivationCache):
    """TransformerLens' ``ActivationCache``; a name of TL's for a cross-attention layer's
    attention hooks (``blocks.{l}.attn.hook_*``) reads that layer's ``cross_attn.hook_*``, and a
    linear-attention layer's missing names are refused in one line; so do the caches its
    methods derive (``apply_slice_to_batch_dim``, ``to``, ``remove_batch_dim``)."""

    def __init__(self, cache_dict: dict, model: Any, has_batch_dim: bool = True):
        if not isinstance(cache_dict, LinearAwareDict):
            cache_dict = LinearAwareDict(cache_dict, model.cfg)
        super().__init__(cache_dict, model, has_batch_dim=has_batch_dim)

    def apply_slice_to_batch_dim(self, batch_slice: Any) -> LVLMActivationCache:
        """As TransformerLens' (the sliced cache keeps these lookups)."""
        out = super().apply_slice_to_batch_dim(batch_slice)
        return LVLMActivationCache(out.cache_dict, self.model, has_batch_dim=out.has_batch_dim)

    def to(self, device: Any) -> LVLMActivationCache:
        """As TransformerLens' (the moved cache keeps these lookups)."""
        super().to(device)
        self.cache_dict = LinearAwareDict(self.cache_dict, self.model.cfg)
        return self

    def __getitem__(self, key: Any) -> Tensor:
        try:
            value = super().__getitem__(key)
        except KeyError:
            if isinstance(key, tuple) and len(key) > 1 and key[1] is not None and key[1] < 0:
                key = (key[0], self.model.cfg.n_layers + key[1], *key[2:])
            name = key if isinstance(key, str) and "." in key else (
                get_act_name(key) if isinstance(key, str) else get_act_name(*key))
            alt = self.model._resolve(name)
            if alt != name and alt in self.cache_dict:
                return self.cache_dict[alt]
            if alt != name and isinstance(alt, str) and ".cross_attn." in alt:
                raise CrossLayerError(
                    f"{name}: its layer is a cross-attention layer, whose hook is {alt}, not in "
                    "this cache (a run without an image skips the layer; or the cache filter "
                    "left it out)") from None
            raise
        if self._linear and isinstance(key, str):  # a direct-path source on a linear layer
            value = direct_path_source(self.model, key, value)
        return value

    @property
    def _linear(self) -> bool:
        return self.model.cfg.decoder.linear_attention is not None

    def stack_head_results(self, layer: int | None = -1, return_labels: bool = False,
                           *args: Any, **kwargs: Any) -> Any:
        """TransformerLens' ``stack_head_results``; the labels follow each layer's own head
        count (a linear-attention layer's ``hook_result`` has one row per value head, which
        TL labels as if it had ``n_heads``). On a sandwich-norm layer (Gemma 3) the heads'
        ``z @ W_O`` are, as in TL, before the post-attention norm."""
        stack, labels = super().stack_head_results(layer, True, *args, **kwargs)
        if self._linear:
            n = self.model.cfg.n_layers if layer is None or layer == -1 else layer
            heads = [self[("result", i, "attn")].shape[-2] for i in range(n)]
            rest = labels[n * self.model.cfg.n_heads:]  # "remainder"
            labels = [f"L{i}H{h}" for i, k in enumerate(heads) for h in range(k)] + rest
        return (stack, labels) if return_labels else stack

    def get_full_resid_decomposition(self, layer: int | None = -1, *args: Any,
                                     **kwargs: Any) -> Any:
        """TransformerLens' ``get_full_resid_decomposition`` (components that sum to the
        residual stream); refused in one line where they would not sum to it: across a
        sandwich-norm layer (the heads' and neurons' writes pass a norm after their sum), and
        per neuron across a DeepStack layer (Qwen3-VL: image features join ``hook_mlp_out``)."""
        n = self.model.cfg.n_layers if layer is None or layer == -1 else layer
        n += int(bool(kwargs.get("mlp_input", args[0] if args else False)))  # + layer n's heads
        post = [i for i in range(n) if getattr(self.model.blocks[i], "sandwich", False)]
        if post:
            raise ValueError(f"get_full_resid_decomposition: layer {post[0]} normalises its "
                             "attention and MLP outputs after the head / neuron sums (sandwich "
                             "norms), so the components would not sum to the residual stream; "
                             "use decompose_resid (exact per-layer attn_out / mlp_out)")
        expand = kwargs.get("expand_neurons", args[1] if len(args) > 1 else True)
        deep = [i for i in range(n) if f"blocks.{i}.hook_deepstack" in self.cache_dict]
        if expand and deep:
            raise ValueError(f"get_full_resid_decomposition: layer {deep[0]}'s hook_mlp_out also "
                             "carries DeepStack image features (hook_deepstack), which no "
                             "neuron writes; pass expand_neurons=False (whole mlp_out terms)")
        return super().get_full_resid_decomposition(layer, *args, **kwargs)


def _names_filter(names_filter: Any) -> Callable[[str], bool]:
    if names_filter is None:
        return lambda name: True
    if isinstance(names_filter, str):
        return lambda name: name == names_filter
    if isinstance(names_filter, list | tuple | set):
        wanted = set(names_filter)
        return lambda name: name in wanted
    if callable(names_filter):
        return names_filter
    raise ValueError("names_filter must be None, a hook name, a list of hook names or a "
                     f"function of the name, got {type(names_filter).__name__}")


class CachingMixin:
    """``run_with_cache`` / ``get_caching_hooks`` of :class:`~lvlm_lens.HookedLVLM` (needs
    TransformerLens' ``HookedRootModule`` after it in the bases, and ``_as_input``)."""

    def get_caching_hooks(
        self,
        names_filter: Any = None,
        incl_bwd: bool = False,
        device: Any = None,
        remove_batch_dim: bool = False,
        cache: dict | None = None,
        pos_slice: Any = None,
    ) -> tuple[dict, list, list]:
        """Hooks that store activations (and, with ``incl_bwd``, their gradients) in ``cache``.

        As TransformerLens' ``HookedRootModule.get_caching_hooks``, except that ``pos_slice``
        slices each activation's own position axis (:func:`position_axis`) and conditional
        points whose switch is off are skipped (refused when ``names_filter`` names them; see
        :mod:`~lvlm_lens.model.switches`).

        Returns:
            The cache dict, the forward hooks and the backward hooks (``(name, fn)`` pairs).
        """
        cache = {} if cache is None else cache
        # TL's names of a cross-attention layer's hooks, as the names they stand for here
        resolve = self._resolve  # type: ignore[attr-defined]
        if isinstance(names_filter, str):
            names_filter = resolve(names_filter, strict=True)
        elif isinstance(names_filter, list | tuple | set):
            names_filter = [resolve(n, strict=True) for n in names_filter]
        elif callable(names_filter):
            names_filter = resolve(names_filter)
        keep = _names_filter(names_filter)
        pos = Slice.unwrap(pos_slice)
        self.is_caching = True
        whole = image_side_hooks(self.cfg)  # type: ignore[attr-defined]

        def save(tensor: Tensor, hook: HookPoint, suffix: str = "") -> None:
            t = tensor.detach().to(device)
            axis = position_axis(hook.name)
            if remove_batch_dim and t.ndim > 0 and t.shape[0] == 1:
                t, axis = t[0], axis - 1
            if t.ndim > axis and hook.name not in whole:
                t = pos.apply(t, dim=axis)
            cache[hook.name + suffix] = t

        if isinstance(names_filter, str | list):  # named: refused if it can't fire
            for n in [names_filter] if isinstance(names_filter, str) else names_filter:
                refuse_if_off(self.cfg, n, self.hook_dict)
        names = [n for n in self.hook_dict if keep(n) and switch_off(self.cfg, n) is None]
        fwd = [(n, save) for n in names]
        bwd = [(n, lambda t, hook: save(t, hook, "_grad")) for n in names] if incl_bwd else []
        return cache, fwd, bwd

    def run_with_cache(
        self,
        *model_args: Any,
        names_filter: Any = None,
        device: Any = None,
        remove_batch_dim: bool = False,
        return_cache_object: bool = True,
        **kwargs: Any,
    ) -> tuple[Any, LVLMActivationCache | dict[str, Tensor]]:
        """Run the model and cache activations (an ``ActivationCache`` by default).

        Keywords as TransformerLens' (``incl_bwd``, ``pos_slice``, ``reset_hooks_end``,
        ``clear_contexts``; the rest go to the forward); see :class:`CachingMixin`'s module
        for the shapes and how ``pos_slice`` slices.
        """
        if remove_batch_dim and model_args and len(self._as_input(model_args[0])) != 1:
            raise ValueError("remove_batch_dim=True needs a batch of one example")
        out, cache = super().run_with_cache(  # type: ignore[misc]
            *model_args,
            names_filter=names_filter,
            device=device,
            remove_batch_dim=remove_batch_dim,
            **kwargs,
        )
        if return_cache_object:  # a linear layer's hook_pattern: one line
            cache = LVLMActivationCache(cache, self, has_batch_dim=not remove_batch_dim)
        return out, cache
