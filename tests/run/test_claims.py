"""The claims runner end to end on the science toy, with few examples and masks."""

from __future__ import annotations

import json

from lvlm_lens.run.claims import main


def test_claims_runner_writes_every_section(tmp_path):
    out = tmp_path / "claims"
    res = main(["--out", str(out), "--n-examples", "4", "--n-masks", "70",
                "--skip", "baselines", "semantics"])  # fmt: skip
    saved = json.loads((out / "claims.json").read_text())
    assert set(saved) >= {"args", "seconds", "rankings", "flow", "tokens"}
    assert saved["args"]["baseline"] == "blank"  # the CLI's default
    ranks = res["rankings"]
    assert ranks["n_examples"] == 4 and 0 < ranks["n_correct"] <= 4
    used = ranks["baseline_check"]["n_examples"] - ranks["baseline_check"]["n_flagged"]
    assert {row["n"] for row in ranks["paired"]} == {used}
    assert {row["other"] for row in ranks["paired"]} == {
        "single-head ablation", "attention weight", "attribution patching", "random"}  # fmt: skip
    assert sum(ranks["layers"]["k10"]["counts"]) == ranks["layers"]["k10"]["k"] * used
    assert set(res["flow"]["all_layers"]) == {"shape", "colour", "size", "background"}
    assert {"image\u2192final", "question\u2192final"} <= set(res["flow"]["effect_centre_of_mass"])
    regions = {row["region"] for row in res["tokens"]["colour"]}
    assert {"object", "background"} <= regions
    for name in ("paired.csv", "heads_needed.csv", "paired_k10.png", "layers_k10.png",
                 "curves.png", "flow.csv", "flow.png"):  # fmt: skip
        assert (out / name).is_file(), name
