"""Conditional hook points and their switches, as TransformerLens defines them.

Off by default (they cost memory and time), each switch makes its hook points fire:

- ``use_attn_result``: ``blocks.{l}.attn.hook_result``, the per-head outputs
  ``[batch, pos, head, d_model]`` (their sum plus ``b_O`` is the attention output).
- ``use_attn_in``: ``blocks.{l}.hook_attn_in``, the residual stream entering the attention
  copied per query head, ``[batch, pos, head, d_model]`` (before ``ln1``); query head ``h``
  reads copy ``h``, and, with grouped-query attention, key/value head ``j`` reads copy ``j``
  (TransformerLens' rule).
- ``use_split_qkv_input``: ``blocks.{l}.hook_q_input`` ``[batch, pos, head, d_model]`` and
  ``hook_k_input`` / ``hook_v_input`` ``[batch, pos, kv_head, d_model]``, one copy per head that
  reads it (taken from ``hook_attn_in``'s copies when that switch is on too), so an edit of one
  head's input changes that head alone.
- ``use_hook_mlp_in``: ``blocks.{l}.hook_mlp_in``, the MLP's input before ``ln2``
  ``[batch, pos, d_model]`` (an edit changes the MLP, not the residual stream it is added to).

A hook added on one of these points while its switch is off would never be called: it is
refused with a message naming the switch. ``run_with_cache`` and hooks added by a name filter
skip such points; a cache filter that names one explicitly is refused the same way.
"""

from __future__ import annotations

from typing import Any

#: Each switch and the hook-name endings it turns on.
SWITCHES = {
    "use_attn_result": ("attn.hook_result",),
    "use_split_qkv_input": ("hook_q_input", "hook_k_input", "hook_v_input"),
    "use_hook_mlp_in": ("hook_mlp_in",),
    "use_attn_in": ("hook_attn_in",),
}


def switch_off(cfg: Any, name: str) -> str | None:
    """The switch that hook ``name`` needs, when it is off (``None`` if the hook fires)."""
    for switch, ends in SWITCHES.items():
        if name.endswith(ends) and not getattr(cfg, switch):
            return switch
    return None


def refuse_if_off(cfg: Any, name: str, points: Any = None) -> None:
    """Raise a one-line ``ValueError`` naming the switch if hook ``name`` cannot fire (or, given
    the model's hook ``points``, saying so if it is none of them)."""
    if points is not None and name not in points:
        raise ValueError(f"{name} is not a hook point of this model (a linear- or cross-"
                         f"attention layer has no hook_attn_in / hook_q_input ...): "
                         "model.hook_dict lists them")
    switch = switch_off(cfg, name)
    if switch is not None:
        raise ValueError(f"{name} fires only with {switch} on: call "
                         f"model.set_{switch}(True) first")


class SwitchesMixin:
    """The ``set_use_*`` switches of :class:`~lvlm_lens.HookedLVLM` and the refusal of hooks
    on switched-off points (needs ``cfg`` and TransformerLens' ``HookedRootModule``)."""

    def set_use_attn_result(self, use_attn_result: bool) -> None:
        """Toggle computing ``blocks.{l}.attn.hook_result`` (per-head outputs)."""
        self.cfg.use_attn_result = bool(use_attn_result)

    def set_use_split_qkv_input(self, use_split_qkv_input: bool) -> None:
        """Toggle ``blocks.{l}.hook_q_input`` / ``hook_k_input`` / ``hook_v_input`` (a copy
        of the attention's input per head, so each head's query/key/value input can be edited
        alone)."""
        self.cfg.use_split_qkv_input = bool(use_split_qkv_input)

    def set_use_hook_mlp_in(self, use_hook_mlp_in: bool) -> None:
        """Toggle ``blocks.{l}.hook_mlp_in`` (the MLP's input before ``ln2``)."""
        self.cfg.use_hook_mlp_in = bool(use_hook_mlp_in)

    def set_use_attn_in(self, use_attn_in: bool) -> None:
        """Toggle ``blocks.{l}.hook_attn_in`` (the attention's input copied per query head)."""
        self.cfg.use_attn_in = bool(use_attn_in)

    def check_hooks_to_add(
        self,
        hook_point: Any,
        hook_point_name: str,
        hook: Any,
        dir: str = "fwd",
        is_permanent: bool = False,
        prepend: bool = False,
    ) -> None:
        """Refuse a hook on a conditional point whose switch is off (it would never run)."""
        refuse_if_off(self.cfg, hook_point.name or hook_point_name)

    def add_hook(
        self,
        name: Any,
        hook: Any,
        dir: str = "fwd",
        is_permanent: bool = False,
        level: int | None = None,
        prepend: bool = False,
    ) -> None:
        """As TransformerLens' ``add_hook``; a name filter skips switched-off points."""
        super().add_hook(self._firing(name), hook, dir=dir,  # type: ignore[misc]
                         is_permanent=is_permanent, level=level, prepend=prepend)

    def _enable_hook(self, name: Any, hook: Any, dir: str) -> None:
        # the path of ``hooks()`` / ``run_with_hooks``, which skips ``check_hooks_to_add``
        if isinstance(name, str):
            refuse_if_off(self.cfg, name, self.mod_dict)  # type: ignore[attr-defined]
        super()._enable_hook(self._firing(name), hook, dir)  # type: ignore[misc]

    def _firing(self, name: Any) -> Any:
        """``name``, or a name filter narrowed to points that fire."""
        if isinstance(name, str):
            return name
        return lambda n: name(n) and switch_off(self.cfg, n) is None
