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
