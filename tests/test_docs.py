"""The documentation's Python code runs as written, so the docs cannot drift from the API.

Every ```` ```python ```` block of every page under ``docs/`` runs, in page order, in one
namespace per page (later blocks use the names earlier ones define), on the bundled toy LVLM,
in a temporary working directory. A block that cannot run here (a 7B checkpoint, a GPU) is
marked on the line before its fence with ``<!-- no-run: why -->`` and is only compiled.
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs"
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```\s*$", flags=re.S | re.M)
NO_RUN = re.compile(r"<!--\s*no-run:\s*(.*?)\s*-->\s*$")


def python_blocks(text: str) -> list[tuple[int, str, str | None]]:
    """``(line, code, no_run_reason)`` of each Python block of a Markdown page."""
    blocks = []
    for m in FENCE.finditer(text):
        if m.group(1) != "python":
            continue
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        reason = NO_RUN.search(before)
        blocks.append((text.count("\n", 0, m.start()) + 1, m.group(2),
                       reason.group(1) if reason else None))
    return blocks


PAGES = sorted(
    p for p in DOCS.rglob("*.md") if python_blocks(p.read_text(encoding="utf-8"))
)


def test_the_guides_have_runnable_code():
    """The runner finds the guides' blocks (a broken fence pattern would find none)."""
    guides = [p for p in PAGES if p.parent.name == "guides"]
    assert len(guides) >= 6
    for page in guides:
        blocks = python_blocks(page.read_text(encoding="utf-8"))
        assert any(reason is None for _, _, reason in blocks), f"{page.name}: nothing runs"


def test_no_run_markers_say_why():
    for page in DOCS.rglob("*.md"):
        for line in page.read_text(encoding="utf-8").splitlines():
            if "no-run" in line:
                assert NO_RUN.search(line) and NO_RUN.search(line).group(1), (
                    f"{page}: `{line}` must read <!-- no-run: reason -->"
                )


def test_code_lines_fit_the_page():
    """Python lines of at most 88 characters fit the site's text column without scrolling."""
    long = [
        f"{page.relative_to(DOCS)}:{line + i}"
        for page in PAGES
        for line, code, _ in python_blocks(page.read_text(encoding="utf-8"))
        for i, text in enumerate(code.splitlines(), 1)
        if len(text) > 88
    ]
    assert not long, f"code lines over 88 characters: {long}"


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(DOCS)) for p in PAGES])
def test_page_code_runs(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples write runs/, my_data/, ...
    torch.set_num_threads(1)
    namespace: dict = {"__name__": "__docs__"}
    for line, code, reason in python_blocks(page.read_text(encoding="utf-8")):
        compiled = compile(code, f"{page}:{line}", "exec")
        if reason is None:
            exec(compiled, namespace)
    plt.close("all")


QWEN3_5 = "In a Qwen3.5"


def _rows(section: str, prefix: str) -> dict[str, int]:
    """``{prefix + hook name: rank}`` of a hook table's rows."""
    rows = re.findall(r"^\| `([\w.{}]+)` \| `\[([^\]]*)\]` \|", section, flags=re.M)
    return {prefix + name: len(shape.split(",")) for name, shape in rows}


def test_hook_table_lists_qwen3_5s_own_hooks_with_their_rank(tiny_checkpoint):
    """The Qwen3.5 sections name every hook of a linear-attention layer's ``attn`` and what a
    full-attention layer's ``attn`` has beyond every block's, with their ranks."""
    from lvlm_lens import HookedLVLM
    from tests.helpers import PROMPTS, noise_image

    page = (DOCS / "concepts" / "hooked-lvlm.md").read_text(encoding="utf-8")
    sections = [s for s in re.split(r"^### ", page, flags=re.M) if s.startswith(QWEN3_5)]
    linear, full = (_rows(s, "") for s in sorted(sections, key=lambda s: "full" in s[:40]))
    common = {}
    for section in re.split(r"^### ", page, flags=re.M):
        if section.startswith("In every block"):
            common = _rows(section, "")
    model = HookedLVLM.from_pretrained(tiny_checkpoint("qwen3.5", chat_template=True))
    model.set_use_attn_result(True)
    try:
        _, cache = model.run_with_cache(model.prepare([noise_image(20, 28, 1)], PROMPTS[:1]))
    finally:
        model.set_use_attn_result(False)
    lin = model.cfg.decoder.linear_attention.layers
    for layer in range(model.cfg.n_layers):
        ranks = {n.split(".", 2)[2]: v.ndim for n, v in cache.items()
                 if n.startswith(f"blocks.{layer}.attn.")}  # fmt: skip
        if layer in lin:
            assert ranks == linear
        else:
            assert {n: r for n, r in ranks.items() if n not in common} == full


def test_hook_table_lists_every_hook_with_its_rank():
    """The hook table of concepts/hooked-lvlm.md names every hook the model has, and each
    hook's shape there has as many dimensions as the cached activation."""
    from lvlm_lens import load_toy, synthetic_records

    page = (DOCS / "concepts" / "hooked-lvlm.md").read_text(encoding="utf-8")
    table = {}
    for section in re.split(r"^### ", page, flags=re.M):  # block hooks: names after blocks.{l}.
        if section.startswith(QWEN3_5):
            continue  # checked on the tiny Qwen3.5 below
        prefix = "blocks.{l}." if section.startswith("In every block") else ""
        table |= _rows(section, prefix)
    model = load_toy(device="cpu")
    model.set_use_attn_result(True)
    model.set_use_hook_mlp_in(True)
    rec = synthetic_records(1, seed=0)[0]
    inp = model.prepare(rec.image, rec.prompt)
    _, cache = model.run_with_cache(inp)
    model.set_use_attn_in(True)  # these two make ln1 per head: only their own points here
    model.set_use_split_qkv_input(True)
    _, split = model.run_with_cache(inp, names_filter=lambda n: n.endswith(("_input", "attn_in")))
    for switch in ("attn_result", "hook_mlp_in", "attn_in", "split_qkv_input"):
        getattr(model, f"set_use_{switch}")(False)
    both = {**dict(cache.items()), **dict(split.items())}
    seen = {re.sub(r"^blocks\.\d+\.", "blocks.{l}.", n): v.ndim for n, v in both.items()}
    assert set(table) == set(seen), (set(seen) - set(table), set(table) - set(seen))
    assert table == seen
