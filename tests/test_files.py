"""Result files are written atomically and as any other new file (the umask applies)."""

from __future__ import annotations

import os
import stat

import torch

from lvlm_lens.files import atomic_json, atomic_save


def test_result_files_respect_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_json({"a": 1}, tmp_path / "a.json")
        atomic_save({"x": torch.zeros(2)}, tmp_path / "x.safetensors", {"k": "v"})
        os.umask(0o077)
        atomic_json({"b": 2}, tmp_path / "b.json")
    finally:
        os.umask(old)
    mode = lambda name: stat.S_IMODE((tmp_path / name).stat().st_mode)  # noqa: E731
    assert mode("a.json") == 0o644 and mode("x.safetensors") == 0o644
    assert mode("b.json") == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json", "x.safetensors"]
