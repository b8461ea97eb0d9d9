"""The claims runner end to end on the science toy, with few examples and masks."""

from __future__ import annotations

import json

from lvlm_lens.run.claims import main


def test_claims_runner_writes_every_section(tmp_path):
    out = tmp_path / "claims"
    res = main(["--out", str(out), "--n-examples", "4", "--n-masks", "70", "--n-random", "1",
                "--skip", "baselines", "semantics"])  # fmt: skip
    saved = json.loads((out / "claims.json").read_text())
    assert set(saved) >= {"args", "seconds", "rankings", "flow", "tokens"}
    ranks = res["rankings"]
    assert ranks["n_examples"] == 4 and 0 < ranks["n_correct"] <= 4
    used = ranks["baseline_check"]["n_examples"] - ranks["baseline_check"]["n_flagged"]
    assert {row["n"] for row in ranks["paired"]} == {used}
    assert {row["other"] for row in ranks["paired"]} == {
        "single-head ablation", "attention weight", "attribution patching"}  # fmt: skip
    assert sum(ranks["layers"]["k10"]["counts"]) == ranks["layers"]["k10"]["k"] * used
    assert set(res["flow"]["first_window_half_peak"]) >= {"question->final", "image->final"}
    assert set(res["tokens"]) == {"shape", "colour", "size", "background"}
    for name in ("paired.csv", "heads_needed.csv", "paired_k10.png", "layers_k10.png",
                 "flow.csv", "flow.png"):  # fmt: skip
        assert (out / name).is_file(), name
