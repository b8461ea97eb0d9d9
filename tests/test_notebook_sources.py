"""The stored notebooks and the executed copies the docs site shows (docs/testing.md).

Notebooks are stored without outputs, each seeds torch in its first code cell, and
``docs/scripts/nb_outputs.py`` scrubs machine paths and addresses from an executed copy, reports
stderr noise, and refuses a copy that is stale or failed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
sys.path.insert(0, str(ROOT / "docs" / "scripts"))
import nb_outputs  # noqa: E402


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def _notebook(cells: list[dict]) -> dict:
    return {"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


def _code(source: str, outputs=(), count=1) -> dict:
    return {"cell_type": "code", "source": source, "metadata": {}, "execution_count": count,
            "outputs": list(outputs)}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_stored_without_outputs_and_seeded(path):
    code = [c for c in _cells(path) if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), (
        f"{path.name}: stored with outputs; clear them (the site shows the CI run's outputs)")
    assert "torch.manual_seed(" in "".join(code[0]["source"]), (
        f"{path.name}: its first code cell must seed torch (torch.manual_seed(0))")


def test_clean_scrubs_paths_addresses_timestamps_and_reports_stderr(tmp_path):
    root = str(nb_outputs.ROOT)
    cells = [
        _code("model", [{"output_type": "execute_result", "execution_count": 1, "metadata": {},
                         "data": {"text/plain": f"HookedLVLM({root}/lvlm_lens/toy/checkpoint)",
                                  "text/html": "<b>x</b>"}}]),
        _code("view", [{"output_type": "display_data", "metadata": {},
                        "data": {"text/plain": "<circuitsvis.RenderedHTML at 0x7f793cb4bf50>"}}]),
        _code("print(cwd)", [
            {"output_type": "stream", "name": "stdout", "text": [root, "\n"]},
            {"output_type": "stream", "name": "stderr", "text": "UserWarning: x"},
        ]),
    ]
    cells[0]["metadata"]["execution"] = {"iopub.execute_input": "2026-12-07T05:00:00"}
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps(_notebook(cells)), encoding="utf-8")
    problems = nb_outputs.clean(path)
    assert problems == ["nb.ipynb cell 2: stderr output 'UserWarning: x'"]
    out = _cells(path)
    assert out[0]["outputs"][0]["data"]["text/plain"] == "HookedLVLM(lvlm_lens/toy/checkpoint)"
    assert out[0]["metadata"] == {}
    assert out[1]["outputs"][0]["data"]["text/plain"] == "<circuitsvis.RenderedHTML>"
    assert out[2]["outputs"][0]["text"] == ".\n"


def test_executed_copy_is_used_only_when_current_and_successful(tmp_path, monkeypatch):
    monkeypatch.setattr(nb_outputs, "EXECUTED", tmp_path / "executed")
    (tmp_path / "executed" / "notebooks").mkdir(parents=True)
    stored = tmp_path / "nb.ipynb"
    stored.write_text(json.dumps(_notebook([_code("x = 1", count=None)])), encoding="utf-8")
    copy = tmp_path / "executed" / "notebooks" / "nb.ipynb"
    assert nb_outputs.executed_copy(stored) == (None, "not executed")

    def write(cell):
        copy.write_text(json.dumps(_notebook([cell])), encoding="utf-8")
        return nb_outputs.executed_copy(stored)

    assert write(_code("x = 1")) == (copy, "")
    assert write(_code("x = 2"))[1] == "its executed copy is stale (the stored cells changed)"
    assert write(_code("x = 1", count=None))[1] == "its executed copy did not run to the end"
    error = {"output_type": "error", "ename": "E", "evalue": "", "traceback": []}
    assert write(_code("x = 1", [error]))[1] == "its executed copy has an error"
