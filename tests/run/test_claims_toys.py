"""Which toy the claims runner measures: inferred from the checkpoints, its testable claims, the
v2 primary rules of claims 5 and 6.1 (by hand on constructed per-seed dicts), its docs block."""

from __future__ import annotations

import json
import math

import pytest

from lvlm_lens.run.claims_toys import (
    TOYS,
    replace_toy_block,
    resolve_toy,
    toy_markers,
    toy_note,
    toy_table,
)
from lvlm_lens.run.seeds import PRIMARY, aggregate
from lvlm_lens.toy import toy_checkpoint_path


def _folder(tmp_path, name, preset):
    (tmp_path / name).mkdir()
    (tmp_path / name / "training.json").write_text(json.dumps({"seed": 1, "preset": preset}))
    return str(tmp_path / name)


def test_toy_is_inferred_from_the_checkpoints_and_conflicts_are_refused(tmp_path):
    v2a, v2b = _folder(tmp_path, "a", "science_v2"), _folder(tmp_path, "b", "science_v2")
    v1 = str(toy_checkpoint_path("science"))
    assert resolve_toy(None, []).name == "science"  # the shipped toy
    assert resolve_toy(None, [v1]).name == "science"
    assert resolve_toy(None, [v2a, v2b]).name == "science_v2"
    assert resolve_toy("science_v2", [v2a]).name == "science_v2"
    with pytest.raises(ValueError, match="different toys"):
        resolve_toy(None, [v1, v2a])
    with pytest.raises(ValueError, match="trained as another toy"):
        resolve_toy("science", [v2a])
    with pytest.raises(ValueError, match="no shipped checkpoint"):
        resolve_toy("science_v2", [])


def test_testable_claims_per_toy():
    assert TOYS["science"].testable == ["2a", "2b", "3", "4b", "6.2"]
    assert TOYS["science_v2"].testable == [p.claim for p in PRIMARY]
    assert "4a" in toy_note(TOYS["science"]) and "Every claim" in toy_note(TOYS["science_v2"])


def _seed(within_value, within_p, role, final):
    """A per-seed dict with only what claims 5 and 6.1 read; ``role``/``final``: (question,
    image) centres of mass, ``None`` for an edge without effect."""
    centres = {}
    for target, pair in (("role", role), ("final", final)):
        for src, c in zip(("question", "image"), pair, strict=True):
            centres[f"{src}\u2192{target}"] = math.nan if c is None else c
    return {
        "semantics": {"table": [{"kind": "same class - same appearance", "value": -1.0,
                                 "p_value": 1.0}],
                      "within_look": {"value": 9.0, "p_value": 0.0},  # the shape question
                      "shared_answer": {"within_look": {"value": within_value,
                                                        "p_value": within_p}}},
        "flow": {"effect_centre_of_mass": centres},
    }  # fmt: skip


def test_v2_rules_of_claims_5_and_6_1_by_hand():
    seeds = [_seed(0.2, 0.01, (1.0, 3.0), (0.5, 2.0)),  # both reproduced
             _seed(0.2, 0.2, (1.0, 0.5), (0.5, 2.0)),  # 5: p too large; 6.1: image first
             _seed(-0.1, 0.001, (None, 2.0), (0.5, 2.0)),  # 5: wrong sign; 6.1: no role edge
             _seed(0.3, 0.04, (1.0, 2.0), (2.0, 1.0))]  # 6.1: final has the image first
    names = ["s0", "s1", "s2", "s3"]
    table = toy_table(aggregate(names, seeds), TOYS["science_v2"], names, seeds)
    rows = {r["claim"]: r for r in table["primary"]}
    assert table["toy"] == "science_v2" and all(r["testable"] for r in table["primary"])
    five = rows["5"]
    assert "permuted within looks" in five["rule"]
    assert five["per_seed"] == {"s0": 0.2, "s1": 0.2, "s2": -0.1, "s3": 0.3}
    assert five["reproduced_per_seed"] == {"s0": True, "s1": False, "s2": False, "s3": True}
    six = rows["6.1"]
    assert six["per_seed"]["s0"] == 2.0 and six["per_seed"]["s1"] == -0.5
    assert math.isnan(six["per_seed"]["s2"])
    assert six["reproduced_per_seed"] == {"s0": True, "s1": False, "s2": False, "s3": False}
    assert six["verdict"] == "reproduced on 1 of 4 seeds"


def test_v1_table_keeps_its_rules_and_marks_what_it_cannot_test():
    seeds = [_seed(0.2, 0.01, (1.0, 3.0), (0.5, 2.0))]
    plain = aggregate(["s0"], seeds)
    table = toy_table(aggregate(["s0"], seeds), TOYS["science"], ["s0"], seeds)
    assert table["toy"] == "science" and table["testable"] == TOYS["science"].testable
    for before, after in zip(plain["primary"], table["primary"], strict=True):
        assert {k: v for k, v in after.items() if k != "testable"} == before
        assert after["testable"] == (after["claim"] not in ("4a", "5", "6.1"))
    five = next(r for r in table["primary"] if r["claim"] == "5")
    assert five["reproduced_on"] == 0  # v1's rule reads the sign-flip row (value -1)


def test_each_toy_has_its_own_docs_block():
    v1, v2 = TOYS["science"], TOYS["science_v2"]
    (b1, e1), (b2, e2) = toy_markers(v1), toy_markers(v2)
    assert len({b1, e1, b2, e2}) == 4
    text = f"a\n{b1}\nold1\n{e1}\nb\n{b2}\nold2\n{e2}\nc\n"
    text = replace_toy_block(text, "new2\n", v2)
    assert text == f"a\n{b1}\nold1\n{e1}\nb\n{b2}\nnew2\n{e2}\nc\n"
    text = replace_toy_block(text, "new1\n", v1)
    assert "old1" not in text and "new1" in text and "new2" in text
    with pytest.raises(ValueError, match="no seeds markers of science_v2"):
        replace_toy_block(f"{b1}\n{e1}\n", "x", v2)
