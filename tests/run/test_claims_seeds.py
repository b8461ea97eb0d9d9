"""The across-seeds claims table: primary statistics, t-intervals, verdict counts, Holm; the
command end to end gives byte-identical claims.json on a rerun."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from lvlm_lens.run.claims import main
from lvlm_lens.run.seeds import BEGIN, END, PRIMARY, T975, aggregate, holm, t_interval
from lvlm_lens.toy import toy_checkpoint_path


def _fake(x: float, *, semantics: bool = True) -> dict:
    """A per-seed claims dict whose primary values are known functions of ``x``."""
    paired = [
        {"curve": c, "fraction": f, "other": o, "mean_diff": x, "low": x - 0.1,
         "high": x + 0.1, "sign_p": p}
        for c, f, o, p in (
            ("faithfulness", 0.1, "single-head ablation", 0.5),
            ("faithfulness", 0.1, "attention weight", 0.01),
            ("completeness", 0.25, "attention weight", 0.02),
            ("completeness", 0.25, "random", 0.0),
        )
    ]  # fmt: skip
    res = {
        "rankings": {
            "n_heads": 64,
            "paired": paired,
            "heads_needed": [
                {"ranking": "head attribution", "curve": "faithfulness", "median_heads": 64 * x}
            ],  # fmt: skip
            "spread": {"sum_ratio": {"value": x, "high": x + 0.5}},
            "attention_vs_attribution": {"value": x, "high": x + 0.2},
            "layers": {"k10": {"later_half": {"value": x, "low": x - 0.05}}},
        },
        "flow": {"effect_centre_of_mass": {"image\u2192final": 2 + x, "question\u2192final": 2}},
        "tokens": {
            "shape": [
                {"region": "object", "mean": -x, "high": -x + 0.1},
                {"region": "background", "mean": 0.0, "low": -0.05},
            ]
        },  # fmt: skip
    }
    if semantics:
        res["semantics"] = {"table": [{"kind": "same class - same appearance", "value": x,
                                       "p_value": 0.01 if x > 0.2 else 0.3}]}  # fmt: skip
    return res


def test_primary_values_intervals_and_counts():
    xs = [0.1, 0.3, 0.5]
    table = aggregate(["s0", "s1", "s2"], [_fake(0.1), _fake(0.3), _fake(0.5, semantics=False)])
    rows = {r["claim"]: r for r in table["primary"]}
    assert set(rows) == {p.claim for p in PRIMARY}
    half = 4.303 * np.std(xs, ddof=1) / math.sqrt(3)  # t(0.975, 2 df) by hand
    three = rows["3"]
    assert three["per_seed"] == {"s0": 0.1, "s1": 0.3, "s2": 0.5}
    assert three["interval"] == pytest.approx([0.3 - half, 0.3 + half], abs=1e-6)
    # CI low x - 0.1 > 0: not on seed 0.1 (low exactly 0)
    assert three["reproduced_per_seed"] == {"s0": False, "s1": True, "s2": True}
    assert three["verdict"] == "reproduced on 2 of 3 seeds"
    # 2a: CI high x + 0.5 < 1 on seeds 0.1 and 0.3 only
    assert rows["2a"]["reproduced_per_seed"] == {"s0": True, "s1": True, "s2": False}
    assert rows["2a"]["verdict"] == "reproduced on 2 of 3 seeds"
    # 4a: 64 x heads of 64 -> share x; <= 0.2 only on seed 0.1
    assert rows["4a"]["per_seed"]["s1"] == pytest.approx(0.3) and rows["4a"]["reproduced_on"] == 1
    # 4b: low = x - 0.05 > 0.5 on no seed
    assert rows["4b"]["reproduced_on"] == 0
    # 5 was skipped on s2: counted over the 2 seeds that ran it, p < 0.05 only on s1
    assert rows["5"]["n_seeds"] == 2 and rows["5"]["verdict"] == "reproduced on 1 of 2 seeds"
    assert rows["6.1"]["per_seed"]["s2"] == pytest.approx(0.5)
    # 6.2: object high -x + 0.1 < background low -0.05 when x > 0.15
    assert rows["6.2"]["reproduced_per_seed"] == {"s0": False, "s1": True, "s2": True}


def test_secondary_rows_are_holm_corrected_within_each_seed():
    table = aggregate(["a", "b"], [_fake(0.2), _fake(-0.2)])
    rows = {r["row"]: r for r in table["secondary"]}
    # the primary row and the random rows are left out; two rows remain: p 0.01 and 0.02
    assert set(rows) == {"faithfulness k<=10% vs attention weight",
                         "completeness k<=25% vs attention weight"}  # fmt: skip
    assert rows["faithfulness k<=10% vs attention weight"]["holm_p"] == {"a": 0.02, "b": 0.02}
    assert rows["completeness k<=25% vs attention weight"]["holm_p"] == {"a": 0.02, "b": 0.02}
    # significant only where head attribution is ahead (mean difference > 0)
    assert rows["completeness k<=25% vs attention weight"]["significant_on"] == 1


def test_holm_by_hand():
    assert holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert holm([0.6, 0.6]) == [1.0, 1.0]


def test_t_quantiles_match_the_t_density():
    """Each tabulated quantile leaves 2.5 % above it (numerical integral of the density)."""
    for df, q in enumerate(T975, start=1):
        x = np.linspace(q, q + 4000.0, 2_000_001)
        logc = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
        dens = np.exp(logc - (df + 1) / 2 * np.log1p(x**2 / df))
        tail = np.trapezoid(dens, x)
        assert tail == pytest.approx(0.025, abs=2e-4), (df, tail)
    assert t_interval([1.0]) is None
    assert t_interval([1.0, 2.0, 3.0]) == pytest.approx((2 - 4.303 / math.sqrt(3),
                                                         2 + 4.303 / math.sqrt(3)))  # fmt: skip


def test_seeds_command_is_byte_identical_on_rerun(tmp_path):
    one = tmp_path / "one"
    shutil.copytree(toy_checkpoint_path("science"), one)
    record = json.loads((one / "training.json").read_text())
    (one / "training.json").write_text(json.dumps(record | {"seed": 1}))
    docs = tmp_path / "claims.md"
    docs.write_text(f"# Claims\n\n{BEGIN}\nold\n{END}\n\nafter\n")
    argv = ["--seeds", str(toy_checkpoint_path("science")), str(one), "--n-examples", "4",
            "--n-masks", "70", "--skip", "baselines", "semantics", "flow", "tokens",
            "--docs", str(docs)]  # fmt: skip
    main(argv + ["--out", str(tmp_path / "a")])
    main(argv + ["--out", str(tmp_path / "b")])
    first = (tmp_path / "a" / "claims.json").read_bytes()
    assert first == (tmp_path / "b" / "claims.json").read_bytes()
    table = json.loads(first)
    assert table["seeds"] == ["seed0", "seed1"]
    three = next(r for r in table["primary"] if r["claim"] == "3")
    # the same weights under two names: equal values, a zero-width interval
    assert three["per_seed"]["seed0"] == three["per_seed"]["seed1"]
    assert three["interval"] == [three["mean"], three["mean"]]
    assert next(r for r in table["primary"] if r["claim"] == "5")["verdict"] == "not run"
    text = docs.read_text()
    assert "old" not in text and text.endswith("after\n") and "| seed0 | seed1 |" in text
