"""Activation and attribution patching against answers derived by hand.

Known effects on the toy (4 layers, image tokens at positions 3 ... 38, final token 55), clean
and corrupted images of different classes:

- the residual stream before layer 0 at the image positions is the only thing that differs
  between the two runs, so patching it restores the clean metric exactly (share 1), and
  patching it at the question positions restores nothing;
- a last-layer MLP at the final position reaches the logits only through the final norm and
  the unembedding: the patched metric is ``unembed(ln_final(resid_post + clean - corrupted))``
  of the corrupted run's cached final residual; a last-layer head's part (its ``z`` difference
  times its ``W_O`` rows) is added to ``resid_mid`` and also passes the layer's MLP
  (``mid + mlp(ln2(mid))``, position by position); a last-layer node at any other position
  cannot reach the final logits (delta 0). Attribution patching of the same node is the same
  difference times the gradient of that small function, taken with autograd on its own.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from lvlm_lens.analysis import PatchingConfig, activation_patching, attribution_patching
from lvlm_lens.analysis.circuits import PatchingResult, metric_fn, position_masks

FAST = dict(progress=False)
LAST = 3


@pytest.fixture(scope="module")
def pair(toy_inp, toy_corrupted):
    return toy_inp.select([0, 1, 2]), toy_corrupted.select([0, 1, 2])


def test_metric_fn_is_the_logit_difference_to_the_corrupted_answer_by_hand(toy, pair):
    """Answers 1 and 3; corrupted answers 2 and 0 are the foils; a corrupted answer equal to
    a clean one falls back to the best other token; any other metric gets the clean answer."""
    clean, corrupted = (dataclasses.replace(x.select([0, 1]), answer_ids=torch.tensor(a))
                        for x, a in ((pair[0], [1, 3]), (pair[1], [2, 0])))  # fmt: skip
    logits = torch.tensor([[0.0, 5.0, 2.0, 7.0], [4.0, 1.0, 3.0, 6.0]])
    np.testing.assert_allclose(metric_fn(toy, clean, corrupted, "logit_diff")(logits),
                               [5 - 2, 6 - 4])  # fmt: skip
    same = dataclasses.replace(corrupted, answer_ids=torch.tensor([2, 3]))
    np.testing.assert_allclose(metric_fn(toy, clean, same, "logit_diff")(logits),
                               [5 - 7, 6 - 4])  # fmt: skip
    none = dataclasses.replace(corrupted, answer_ids=None)
    np.testing.assert_allclose(metric_fn(toy, clean, none, "logit_diff")(logits), [5 - 7, 6 - 4])
    np.testing.assert_allclose(metric_fn(toy, clean, corrupted, "logit")(logits), [5, 6])
    np.testing.assert_allclose(metric_fn(toy, clean, corrupted, lambda x, a: x[:, 0] + a)(logits),
                               [0 + 1, 4 + 3])  # fmt: skip


def test_position_masks_and_config_checks(pair):
    clean = pair[0]
    m = position_masks(clean, ["all", "image", "final"])
    assert torch.equal(m["all"], clean.attention_mask.bool())
    assert m["image"][0].nonzero().flatten().tolist() == list(range(3, 39))
    assert m["final"][0].nonzero().flatten().tolist() == [55]
    assert list(m) == ["all", "image", "final"]
    mask = clean.attention_mask.clone()
    mask[1, :2] = 0  # as if example 1 were left-padded by two tokens
    padded = position_masks(dataclasses.replace(clean, attention_mask=mask), ["all"])["all"]
    assert padded[1].nonzero().flatten().tolist() == list(range(2, 56)) and padded[0].all()
    with pytest.raises(KeyError, match="unknown position group 'nope'"):
        position_masks(clean, ["nope"])
    with pytest.raises(ValueError, match=r"unknown component\(s\) \['attn'\]"):
        PatchingConfig(components=("resid", "attn"))
    assert PatchingConfig().components == ("resid", "heads", "mlp")
    assert PatchingConfig().groups == ("all", "image", "question", "final")


def final_metric(toy, clean, corrupted):
    fn = metric_fn(toy, clean, corrupted, "logit_diff")
    return lambda resid: fn(toy.unembed(toy.ln_final(resid[:, None]))[:, 0])


def after_mlp(toy, mid):
    """The last layer's residual after its MLP, from ``resid_mid`` at one position."""
    block = toy.blocks[LAST]
    return mid + block.mlp(block.ln2(mid[:, None]))[:, 0]


@pytest.fixture(scope="module")
def caches(toy, pair):
    names = lambda n: n.startswith(f"blocks.{LAST}.")  # noqa: E731
    with torch.no_grad():
        return [toy.run_with_cache(x, names_filter=names, return_cache_object=False)[1]
                for x in pair]  # fmt: skip


def test_activation_patching_by_hand(toy, pair, caches):
    clean, corrupted = pair
    cfg = PatchingConfig(
        components=("resid", "heads", "mlp"), groups=("image", "question", "final"), **FAST
    )
    f = activation_patching(toy, clean, corrupted, cfg).frame

    def node(comp: str, layer: int, head: int, group: str) -> pd.DataFrame:
        rows = f[(f.component == comp) & (f.layer == layer) & (f["head"] == head)
                 & (f.group == group)]  # fmt: skip
        assert rows.example.tolist() == [0, 1, 2]
        return rows

    np.testing.assert_allclose(node("resid", 0, -1, "image").restored, 1.0, atol=1e-5)
    np.testing.assert_allclose(node("resid", 0, -1, "question").delta, 0.0, atol=1e-6)
    c, k = caches
    fn = final_metric(toy, clean, corrupted)
    post = k[f"blocks.{LAST}.hook_resid_post"][:, -1]
    with torch.no_grad():
        m_corr, m_clean = fn(post), fn(c[f"blocks.{LAST}.hook_resid_post"][:, -1])
    np.testing.assert_allclose(node("resid", 0, -1, "image").total, m_clean - m_corr, rtol=1e-4)
    mlp = f"blocks.{LAST}.hook_mlp_out"
    with torch.no_grad():
        want = fn(post + c[mlp][:, -1] - k[mlp][:, -1]) - m_corr
    got = node("mlp", LAST, -1, "final")
    assert got.example.tolist() == [0, 1, 2]
    np.testing.assert_allclose(got.delta, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got.restored, want / (m_clean - m_corr), rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(node("mlp", LAST, -1, "question").delta, 0.0, atol=1e-6)
    z, w_o = f"blocks.{LAST}.attn.hook_z", toy.blocks[LAST].attn.W_O
    mid = k[f"blocks.{LAST}.hook_resid_mid"][:, -1]
    with torch.no_grad():
        torch.testing.assert_close(after_mlp(toy, mid), post, rtol=1e-5, atol=1e-5)
    for head in (0, 5):
        with torch.no_grad():
            part = (c[z][:, -1, head] - k[z][:, -1, head]) @ w_o[head]
            want = fn(after_mlp(toy, mid + part)) - m_corr
        np.testing.assert_allclose(node("heads", LAST, head, "final").delta, want, rtol=1e-4,
                                   atol=1e-5)  # fmt: skip
        np.testing.assert_allclose(node("heads", LAST, head, "image").delta, 0.0, atol=1e-6)
    heads = f[f.component == "heads"]
    assert set(heads.kind) == {"self"} and f[f.component != "heads"].kind.isna().all()
    assert sorted(set(heads["head"])) == list(range(8)) and set(
        f[f.component == "mlp"]["head"]
    ) == {-1}
    assert len(f) == (4 + 4 * 8 + 4) * 3 * 3


def test_attribution_patching_by_hand(toy, pair, caches):
    """Last layer: attribution = (clean - corrupted) · ∂m/∂resid_post at the final position
    (for a head: its z difference · W_O[head] ∂m/∂resid_mid); 0 at other positions, so the
    ``all`` group equals the ``final`` one."""
    clean, corrupted = pair
    cfg = PatchingConfig(components=("heads", "mlp"), groups=("all", "final", "question"),
                         **FAST)  # fmt: skip
    res = attribution_patching(toy, clean, corrupted, cfg)
    f = res.frame
    assert res.method == "attribution"
    c, k = caches
    fn = final_metric(toy, clean, corrupted)
    post = k[f"blocks.{LAST}.hook_resid_post"][:, -1].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(fn(post).sum(), post)
    np.testing.assert_allclose(res.corrupted, fn(post).detach(), rtol=1e-4, atol=1e-5)
    mlp = f"blocks.{LAST}.hook_mlp_out"
    want = ((c[mlp][:, -1] - k[mlp][:, -1]) * grad).sum(-1)
    for group in ("final", "all"):
        got = f[(f.component == "mlp") & (f.layer == LAST) & (f.group == group)]
        assert got.example.tolist() == [0, 1, 2]
        np.testing.assert_allclose(got.delta, want, rtol=1e-4, atol=1e-5)
    q = f[(f.component == "mlp") & (f.layer == LAST) & (f.group == "question")]
    assert len(q) == 3
    np.testing.assert_allclose(q.delta, 0.0, atol=1e-7)
    z, w_o = f"blocks.{LAST}.attn.hook_z", toy.blocks[LAST].attn.W_O
    mid = k[f"blocks.{LAST}.hook_resid_mid"][:, -1].clone().requires_grad_(True)
    (grad_mid,) = torch.autograd.grad(fn(after_mlp(toy, mid)).sum(), mid)
    for head in (2, 7):
        want = ((c[z][:, -1, head] - k[z][:, -1, head]) * (grad_mid @ w_o[head].T)).sum(-1)
        got = f[(f.component == "heads") & (f.layer == LAST) & (f["head"] == head)
                & (f.group == "final")]  # fmt: skip
        assert got.example.tolist() == [0, 1, 2]
        np.testing.assert_allclose(got.delta, want.detach(), rtol=1e-4, atol=1e-5)


def hand_result(deltas: list[list[float]], total=(2.0, 6.0)) -> PatchingResult:
    """Nodes (resid, 0), (resid, 1), (heads, 0, h0), (heads, 0, h1) at group ``all`` over two
    examples with clean - corrupted = ``total``."""
    nodes = [("resid", 0, -1), ("resid", 1, -1), ("heads", 0, 0), ("heads", 0, 1)]
    rows = [{"component": comp, "layer": layer, "head": head, "group": "all", "example": i,
             "delta": d[i], "total": total[i]}
            for (comp, layer, head), d in zip(nodes, deltas, strict=True)
            for i in range(2)]  # fmt: skip
    return PatchingResult(pd.DataFrame(rows), np.array(total) + 1, np.ones(2), "exact")


def test_summary_grid_and_agreement_by_hand():
    """Restored = ratio of sums over examples: (1 + 3) / (2 + 6) = 0.5, (2 + 6) / 8 = 1, ...;
    with two examples the band is the two one-example ratios (1/2 and 3/6 -> 0.5 to 0.5;
    0 / 2 and 6 / 6 -> 0 to 1). Agreement: per component, Spearman of the per-node means
    (the same order: 1, the reversed order: -1)."""
    res = hand_result([[1, 3], [2, 6], [0, 6], [1, 0]])
    s = res.summary()
    np.testing.assert_allclose(s.restored, [0.5, 1.0, 0.75, 0.125])
    np.testing.assert_allclose(s.low, [0.5, 1.0, 0.0, 0.0])
    np.testing.assert_allclose(s.high, [0.5, 1.0, 1.0, 0.5])
    assert s[["component", "layer", "head", "group"]].values.tolist() == [
        ["resid", 0, -1, "all"], ["resid", 1, -1, "all"], ["heads", 0, 0, "all"],
        ["heads", 0, 1, "all"]]  # fmt: skip
    np.testing.assert_allclose(res.grid("heads"), [[0.75, 0.125]])
    np.testing.assert_allclose(res.grid("resid"), [[0.5], [1.0]])
    two = res.frame.assign(group="image", delta=res.frame.delta * 2)  # restored doubled
    both = PatchingResult(pd.concat([two, res.frame]), res.clean, res.corrupted, "exact")
    np.testing.assert_allclose(both.grid("heads", "image"), [[1.5, 0.25]])
    np.testing.assert_allclose(both.grid("heads"), [[0.75, 0.125]])  # default group: all
    # layer x group, the groups in the frame's order (image first here)
    np.testing.assert_allclose(both.grid("resid"), [[1.0, 0.5], [2.0, 1.0]])
    other = hand_result([[5, 5], [9, 9], [3, 3], [1, 1]])  # same node order in both components
    rev = hand_result([[9, 9], [5, 5], [1, 1], [3, 3]])
    a = res.agreement(other, n_boot=50).set_index("component")
    assert a.index.tolist() == ["resid", "heads"]
    assert a.spearman.tolist() == pytest.approx([1.0, 1.0]) and a.nodes.tolist() == [2, 2]
    b = res.agreement(rev, n_boot=50).set_index("component")
    assert b.spearman.tolist() == pytest.approx([-1.0, -1.0]) and (b.n == 2).all()
    # nodes matched by name, not by row order
    shuffled = PatchingResult(other.frame.iloc[::-1].reset_index(drop=True), other.clean,
                              other.corrupted, "exact")  # fmt: skip
    assert res.agreement(shuffled, n_boot=50).spearman.tolist() == pytest.approx([1.0, 1.0])


def test_agreement_band_resamples_examples():
    """Example 0 ranks resid 0 above resid 1 in both results, example 1 ranks them the other
    way in one of them: a resample of example 0 alone agrees (1), of example 1 alone
    disagrees (-1), so the band spans -1 to 1; the value (means over both) is 1."""
    a = hand_result([[2, 0], [1, 3], [0, 0], [1, 1]])
    b = hand_result([[2, 5], [1, 0], [0, 0], [1, 1]])
    row = a.agreement(b, n_boot=400).set_index("component").loc["resid"]
    assert row.spearman == pytest.approx(-1.0)  # means: a (1, 2), b (3.5, 0.5)
    assert (row.low, row.high) == pytest.approx((-1.0, 1.0))
