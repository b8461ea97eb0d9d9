"""What every tiny family builder does once its config, tokenizer and processor exist: apply the
caller's overrides, build the random model under a seed and save it beside its tokenizer and
processor."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def set_fields(obj: Any, fields: dict[str, Any] | None) -> Any:
    """``obj`` with each of ``fields`` set as an attribute (config or processor overrides)."""
    for key, value in (fields or {}).items():
        setattr(obj, key, value)
    return obj


def save_random(
    folder: Path,
    model_cls: Callable[[Any], torch.nn.Module],
    config: Any,
    seed: int,
    *savers: Any,
    init: Callable[[torch.nn.Module], None] | None = None,
) -> Path:
    """Build ``model_cls(config)`` with torch seeded by ``seed`` (without touching the caller's
    random state), move its norms and biases off their defaults, run ``init`` on it (a family's
    own parameters to draw), and save it and each of ``savers`` (tokenizer, processor) to
    ``folder``."""
    from lvlm_lens.testing.tiny import _randomize_

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
        _randomize_(model)
        if init is not None:
            with torch.no_grad():
                init(model)
    model.eval().save_pretrained(folder)
    for saver in savers:
        saver.save_pretrained(folder)
    return folder


def tiny_builder(
    name: str,
    model_cls: Callable[[Any], torch.nn.Module],
    tokenizer: Callable[[bool], Any],
    config: Callable[[Any, dict[str, Any], dict[str, Any]], Any],
    image_processor: Callable[[], Any],
    init: Callable[[torch.nn.Module], None] | None = None,
) -> Callable[..., Path]:
    """The ``build_<family>_checkpoint(folder, *, seed, chat_template, vision=None, lvlm=None,
    processor=None, **text_overrides)`` of a family whose parts are ``tokenizer(chat_template)``,
    ``config(tokenizer, text_overrides, vision_overrides)`` and ``image_processor()``: overrides
    applied, the random model drawn by :func:`save_random` (with ``init``) and saved beside them."""

    def build(
        folder: Path,
        *,
        seed: int,
        chat_template: bool,
        vision: dict[str, Any] | None = None,
        lvlm: dict[str, Any] | None = None,
        processor: dict[str, Any] | None = None,
        **text_overrides: Any,
    ) -> Path:
        tok = tokenizer(chat_template)
        cfg = set_fields(config(tok, dict(text_overrides), dict(vision or {})), lvlm)
        return save_random(folder, model_cls, cfg, seed, tok,
                           set_fields(image_processor(), processor), init=init)  # fmt: skip

    build.__doc__ = f"Builds and saves the tiny {name} (see :func:`~.tiny.build_tiny_checkpoint`)."
    return build
