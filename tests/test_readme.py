"""The README's Python examples run as written (on the bundled toy model)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the examples write runs/...
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 4
    namespace: dict = {}
    for block in blocks:  # later blocks use the names earlier ones define
        exec(compile(block, str(README), "exec"), namespace)
    assert namespace["sweep"].shape[0] == namespace["model"].cfg.n_layers
    assert namespace["result"].coef.shape[1:] == (namespace["model"].cfg.n_layers,
                                                  namespace["model"].cfg.n_heads)
