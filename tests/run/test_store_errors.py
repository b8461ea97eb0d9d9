"""The store is persistence only: a folder or file it cannot use raises ``RunError`` (one line,
naming it and what to do), never ``SystemExit``; nothing under ``lvlm_lens/`` exits by itself."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

import lvlm_lens
from lvlm_lens.errors import RunError
from lvlm_lens.run.cli import build_parser, user_message
from lvlm_lens.run.distributed import Shard
from lvlm_lens.run.options import RunOptions
from lvlm_lens.run.runner import merge
from lvlm_lens.run.store import (
    check_out_dir,
    chunk_fingerprint,
    chunk_path,
    discard_run,
    load_chunk,
    prediction_path,
    read_metrics,
    read_predictions,
    save_chunk,
    wait_for_files,
)


def _is_main_guard(node: ast.AST) -> bool:
    """``if __name__ == "__main__":``, where an entry point may hand its code to ``sys.exit``."""
    test = getattr(node, "test", None)
    left = getattr(test, "left", None)
    return isinstance(node, ast.If) and isinstance(left, ast.Name) and left.id == "__name__"


def _exits(tree: ast.AST) -> list[int]:
    """Lines that raise ``SystemExit`` or call ``sys.exit`` / ``exit`` outside a main guard."""
    found, todo = [], [tree]
    while todo:
        node = todo.pop()
        if _is_main_guard(node):
            continue
        if isinstance(node, ast.Raise) and node.exc is not None:
            exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(exc, ast.Name) and exc.id == "SystemExit":
                found.append(node.lineno)
        if isinstance(node, ast.Call):
            f = node.func
            sys_exit = isinstance(f, ast.Attribute) and f.attr == "exit" and (
                isinstance(f.value, ast.Name) and f.value.id == "sys")
            if sys_exit or (isinstance(f, ast.Name) and f.id == "exit"):
                found.append(node.lineno)
        todo.extend(ast.iter_child_nodes(node))
    return found


def test_the_walk_finds_an_exit():
    code = "import sys\ndef f():\n    raise SystemExit('x')\ndef g():\n    sys.exit(1)\n"
    code += "if __name__ == '__main__':\n    sys.exit(0)\n"
    assert sorted(_exits(ast.parse(code))) == [3, 5]


def test_nothing_under_lvlm_lens_raises_system_exit():
    root = Path(lvlm_lens.__file__).parent
    hits = [f"{p.relative_to(root.parent)}:{line}" for p in sorted(root.rglob("*.py"))
            for line in _exits(ast.parse(p.read_text(), str(p)))]  # fmt: skip
    assert hits == []


def _one_line(err: pytest.ExceptionInfo, *parts: str) -> str:
    text = str(err.value)
    assert "\n" not in text and all(p in text for p in parts), text
    assert user_message(err.value, build_parser(), "attribute") == text  # the CLI prints it
    return text


def test_out_is_a_file(tmp_path):
    (file := tmp_path / "afile").write_text("")
    with pytest.raises(RunError) as err:
        check_out_dir(RunOptions(out=str(file)), False, Shard())
    _one_line(err, f"--out {file} is a file", "pass a folder")


def test_a_damaged_run_json_is_named_with_what_to_do(tmp_path):
    opts = RunOptions(out=str(tmp_path / "run"))
    check_out_dir(opts, False, Shard())
    (tmp_path / "run" / "run.json").write_text("{")
    with pytest.raises(RunError) as err:
        check_out_dir(opts, False, Shard())
    _one_line(err, str(tmp_path / "run" / "run.json"), "is damaged", "--overwrite")


def test_other_options_are_named(tmp_path):
    check_out_dir(RunOptions(out=str(tmp_path / "run")), False, Shard())
    with pytest.raises(RunError) as err:
        check_out_dir(RunOptions(out=str(tmp_path / "run"), n_random=3), False, Shard())
    _one_line(err, "holds a run with other options (n_random differ)", "--overwrite")


def test_discard_refuses_a_folder_with_foreign_files(tmp_path):
    (tmp_path / "mine.txt").write_text("user data")
    with pytest.raises(RunError) as err:
        discard_run(tmp_path)
    _one_line(err, "holds files no run wrote (mine.txt)", "another --out")
    assert (tmp_path / "mine.txt").exists()


def test_missing_files_after_the_wait(tmp_path):
    with pytest.raises(RunError) as err:
        wait_for_files([tmp_path / "a.json", tmp_path / "b.json"], timeout=0.0)
    _one_line(err, "2 result files still missing", str(tmp_path / "a.json"), "re-run")


def test_a_damaged_chunk_is_named_and_removed(tmp_path):
    (tmp_path / "chunks").mkdir()
    meta = chunk_fingerprint("key", 0, "ex0", 0, 4)
    save_chunk(tmp_path, 0, 0, torch.arange(4.0), meta)
    assert torch.equal(load_chunk(tmp_path, 0, 0, meta), torch.arange(4.0))
    with pytest.raises(RunError) as err:
        load_chunk(tmp_path, 0, 0, meta | {"example_id": "ex9"})
    _one_line(err, str(chunk_path(tmp_path, 0, 0)), "belongs to another run", "run the same")
    assert not chunk_path(tmp_path, 0, 0).exists()


def test_no_examples_and_no_correct_answers(tmp_path):
    """The runner decides what is attributed; the store only reads the files."""
    opts = RunOptions(out=str(tmp_path))
    with pytest.raises(RunError) as err:
        merge(tmp_path, [], {}, opts, timeout=0.0)
    _one_line(err, "the dataset has no examples")
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "00000.json").write_text(json.dumps({"correct": False}))
    assert read_predictions(tmp_path, ["r0"]) == [{"correct": False}]  # the store reads it
    with pytest.raises(RunError) as err:
        merge(tmp_path, [object()], {0: []}, opts, timeout=0.0)
    _one_line(err, "none of the 1 example(s) correctly", "--keep-wrong")


def _sharded_folder(out: Path, n: int = 4, n_masks: int = 3) -> dict[int, list[dict[str, str]]]:
    """A finished 2-shard run's files: every example's prediction and one chunk each."""
    (out / "examples").mkdir(parents=True)
    (out / "chunks").mkdir()
    metas = {}
    for i in range(n):
        info = {"id": f"ex{i}", "correct": True, "row": f"row{i}"}
        prediction_path(out, i).write_text(json.dumps(info))
        metas[i] = [chunk_fingerprint("key", i, f"ex{i}", 0, n_masks, f"row{i}")]
        save_chunk(out, i, 0, torch.full((n_masks,), float(i)), metas[i][0])
    return metas


def test_other_shards_files_are_validated_and_name_the_shard_to_rerun(tmp_path):
    metas = _sharded_folder(tmp_path)
    rows = [m[0]["row"] for m in metas.values()]
    assert torch.equal(read_metrics(tmp_path, [0, 1, 2, 3], metas, world=2)[:, 0],
                       torch.arange(4.0))  # fmt: skip
    damaged = prediction_path(tmp_path, 1)  # shard 1's file
    damaged.write_text('{"correct": tr')
    with pytest.raises(RunError) as err:
        read_predictions(tmp_path, rows, world=2)
    _one_line(err, str(damaged), "is damaged", "run shard 1 of 2", "same command")
    assert not damaged.exists()
    damaged.write_text(json.dumps(["not", "a", "prediction"]))
    with pytest.raises(RunError) as err:
        read_predictions(tmp_path, rows, world=2)
    _one_line(err, str(damaged), "not a prediction file", "run shard 1 of 2")
    damaged.write_text(json.dumps({"correct": True, "row": "row1"}))
    stale = prediction_path(tmp_path, 3)  # computed from another version of its row
    stale.write_text(json.dumps({"correct": True, "row": "old"}))
    with pytest.raises(RunError) as err:
        read_predictions(tmp_path, rows, world=2)
    _one_line(err, str(stale), "another version of its data row", "run shard 1 of 2")


def test_another_shards_stale_or_damaged_chunk_names_it_and_its_shard(tmp_path):
    metas = _sharded_folder(tmp_path)
    other = chunk_fingerprint("other-run", 2, "ex2", 0, 3, "row2")  # another fingerprint
    save_chunk(tmp_path, 2, 0, torch.zeros(3), other)
    with pytest.raises(RunError) as err:
        read_metrics(tmp_path, [0, 1, 2, 3], metas, world=2)
    _one_line(err, str(chunk_path(tmp_path, 2, 0)), "belongs to another run",
              "'other-run' instead of 'key'", "run shard 0 of 2")  # fmt: skip
    assert not chunk_path(tmp_path, 2, 0).exists()
    chunk_path(tmp_path, 3, 0).write_bytes(b"\0" * 8)
    with pytest.raises(RunError) as err:
        read_metrics(tmp_path, [3], metas, world=2)
    _one_line(err, str(chunk_path(tmp_path, 3, 0)), "does not load", "run shard 1 of 2")
