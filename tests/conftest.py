"""Shared pytest fixtures: tiny random LLaVA-family checkpoints, built once per session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from lvlm_lens.testing.tiny import build_tiny_checkpoint

# Tiny models gain nothing from a second thread, and a busy core slows every op a lot.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Returns ``build(kind, **kw) -> folder``; each distinct (kind, kw) is built only once."""
    cache: dict[tuple[str, str], Path] = {}

    def build(kind: str, **kw: Any) -> Path:
        key = (kind, repr(sorted(kw.items())))
        if key not in cache:
            folder = tmp_path_factory.mktemp(kind.replace("-", "_"))
            cache[key] = build_tiny_checkpoint(kind, folder, **kw)
        return cache[key]

    return build
