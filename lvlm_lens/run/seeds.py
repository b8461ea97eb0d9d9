"""Claims across training seeds: one primary statistic per claim, fixed here before any run.

``python -m lvlm_lens.run.claims --seeds DIR [DIR ...]`` measures every claim on each checkpoint
(one training seed each) and :func:`aggregate` turns the per-seed ``claims.json`` dicts into one
table: per claim its primary statistic on every seed, a t-interval over seeds, and the verdict
as a count ("reproduced on 4 of 5 seeds"). The other paired rows of claim 3 are secondary:
their sign-test p-values are Holm-corrected within each seed, and counted the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Two-sided 95 % quantiles of Student's t, by degrees of freedom (1-20).
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
        2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086)  # fmt: skip


def _paired(res: dict[str, Any], curve: str, fraction: float, other: str) -> dict[str, Any]:
    rows = res["rankings"]["paired"]
    key = (curve, fraction, other)
    return next(r for r in rows if (r["curve"], r["fraction"], r["other"]) == key)


def _heads_share(res: dict[str, Any]) -> float:
    rows = res["rankings"]["heads_needed"]
    row = next(
        r for r in rows if r["ranking"] == "head attribution" and r["curve"] == "faithfulness"
    )
    return row["median_heads"] / res["rankings"]["n_heads"]


def _semantic(res: dict[str, Any]) -> dict[str, Any]:
    rows = res["semantics"]["table"]
    return next(r for r in rows if r["kind"].startswith("same class - same"))


def _region(res: dict[str, Any], region: str) -> dict[str, Any]:
    return next(r for r in res["tokens"]["shape"] if r["region"] == region)


def _centre(res: dict[str, Any], edge: str) -> float:
    return res["flow"]["effect_centre_of_mass"][edge]


@dataclass(frozen=True)
class Primary:
    """The primary statistic of one claim and its rule for "reproduced" on one seed.

    Attributes:
        claim: The claim's number in ``docs/claims.md``.
        section: The ``claims.json`` section it reads (``None`` on a seed where it was skipped).
        statistic: What the value is.
        rule: When one seed counts as reproducing the claim.
        value: The value from one seed's ``claims.json`` dict.
        reproduced: The rule, on one seed's dict.
    """

    claim: str
    section: str
    statistic: str
    rule: str
    value: Callable[[dict[str, Any]], float]
    reproduced: Callable[[dict[str, Any]], bool]


#: One primary statistic per claim (fixed before any seed was run; do not tune).
PRIMARY: tuple[Primary, ...] = (
    Primary("2a", "rankings", "sum of single-head effects / all-heads effect (mean over examples)",
            "95 % CI over examples below 1 (heads compensate)",
            lambda r: r["rankings"]["spread"]["sum_ratio"]["value"],
            lambda r: r["rankings"]["spread"]["sum_ratio"]["high"] < 1),
    Primary("2b", "rankings", "Spearman of attention weight vs head attribution (mean)",
            "95 % CI over examples below 0.5 (a poor proxy)",
            lambda r: r["rankings"]["attention_vs_attribution"]["value"],
            lambda r: r["rankings"]["attention_vs_attribution"]["high"] < 0.5),
    Primary("3", "rankings",
            "faithfulness at k <= 10 %, head attribution - single-head ablation (mean paired)",
            "95 % CI over examples above 0",
            lambda r: _paired(r, "faithfulness", 0.1, "single-head ablation")["mean_diff"],
            lambda r: _paired(r, "faithfulness", 0.1, "single-head ablation")["low"] > 0),
    Primary("4a", "rankings", "share of heads for 80 % faithfulness (median over examples)",
            "at most 20 % of the heads (a small circuit)",
            _heads_share, lambda r: _heads_share(r) <= 0.2),
    Primary("4b", "rankings", "share of top-10 % heads in the later half of the layers",
            "95 % CI over examples above 50 %",
            lambda r: r["rankings"]["layers"]["k10"]["later_half"]["value"],
            lambda r: r["rankings"]["layers"]["k10"]["later_half"]["low"] > 0.5),
    Primary("5", "semantics", "centred cosine: same class - same look (mean over examples)",
            "above 0 with sign-flip p < 0.05",
            lambda r: _semantic(r)["value"],
            lambda r: _semantic(r)["value"] > 0 and _semantic(r)["p_value"] < 0.05),
    Primary("6.1", "flow", "centre of mass (layer) of image->final minus question->final",
            "above 0 (the image arrives after the question)",
            lambda r: _centre(r, "image\u2192final") - _centre(r, "question\u2192final"),
            lambda r: _centre(r, "image\u2192final") > _centre(r, "question\u2192final")),
    Primary("6.2", "tokens", "shape question: change of p(answer), object - as many background",
            "object's 95 % CI entirely below the background's",
            lambda r: _region(r, "object")["mean"] - _region(r, "background")["mean"],
            lambda r: _region(r, "object")["high"] < _region(r, "background")["low"]),
)  # fmt: skip


def t_interval(values: Sequence[float]) -> tuple[float, float] | None:
    """95 % t-interval of the mean over seeds; ``None`` for fewer than 2 seeds."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return None
    if len(x) - 1 > len(T975):
        raise ValueError(f"seeds: at most {len(T975) + 1} supported, got {len(x)}")
    half = T975[len(x) - 2] * x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean() - half), float(x.mean() + half)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given)."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p, kind="stable")
    adjusted = np.empty_like(p)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 6)


def _primary_row(spec: Primary, names: list[str], results: list[dict[str, Any]]) -> dict:
    measured = [(n, r) for n, r in zip(names, results, strict=True) if spec.section in r]
    values = [spec.value(r) for _, r in measured]
    hits = [bool(spec.reproduced(r)) for _, r in measured]
    interval = t_interval(values)
    return {
        "claim": spec.claim,
        "statistic": spec.statistic,
        "rule": spec.rule,
        "per_seed": {n: _round(v) for (n, _), v in zip(measured, values, strict=True)},
        "reproduced_per_seed": {n: h for (n, _), h in zip(measured, hits, strict=True)},
        "mean": _round(np.mean(values)) if values else None,
        "interval": None if interval is None else [_round(v) for v in interval],
        "reproduced_on": sum(hits),
        "n_seeds": len(measured),
        "verdict": f"reproduced on {sum(hits)} of {len(measured)} seeds" if measured else "not run",
    }


def _secondary(names: list[str], results: list[dict[str, Any]], alpha: float) -> list[dict]:
    rows: dict[str, dict[str, Any]] = {}
    for name, res in zip(names, results, strict=True):
        if "rankings" not in res:
            continue
        paired = [r for r in res["rankings"]["paired"] if r["other"] != "random"
                  and not (r["curve"] == "faithfulness" and r["fraction"] == 0.1
                           and r["other"] == "single-head ablation")]  # fmt: skip
        for r, p in zip(paired, holm([r["sign_p"] for r in paired]), strict=True):
            key = f"{r['curve']} k<={int(r['fraction'] * 100)}% vs {r['other']}"
            row = rows.setdefault(key, {"row": key, "per_seed": {}, "holm_p": {}})
            row["per_seed"][name] = _round(r["mean_diff"])
            row["holm_p"][name] = _round(p)
    for row in rows.values():
        sig = [n for n, p in row["holm_p"].items() if p < alpha and row["per_seed"][n] > 0]
        row["significant_on"] = len(sig)
        row["verdict"] = f"head attribution better on {len(sig)} of {len(row['holm_p'])} seeds"
    return list(rows.values())


def aggregate(
    names: Sequence[str], results: Sequence[dict[str, Any]], alpha: float = 0.05
) -> dict[str, Any]:
    """The across-seeds table from per-seed ``claims.json`` dicts (same order as ``names``).

    Returns:
        ``{"seeds", "primary", "secondary", "alpha"}``: ``primary`` has one row per claim of
        :data:`PRIMARY` (per-seed values, t-interval, verdict count); ``secondary`` the other
        paired rows of claim 3 (head attribution vs single-head ablation / attention weight /
        attribution patching; Holm within each seed over those rows).
    """
    names, results = list(names), list(results)
    if len(set(names)) != len(names):
        raise ValueError(f"seeds: names must be distinct, got {names}")
    return {
        "seeds": names,
        "alpha": alpha,
        "primary": [_primary_row(spec, names, results) for spec in PRIMARY],
        "secondary": _secondary(names, results, alpha),
    }


def markdown(table: dict[str, Any]) -> str:
    """The seeds table of ``docs/claims.md`` (between its ``seeds`` markers)."""
    names = table["seeds"]

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.3g}"

    lines = [
        f"| # | primary statistic | rule per seed | {' | '.join(names)} | between-seed 95 % "
        "t-interval | verdict |",
        "|---" * (5 + len(names)) + "|",
    ]
    for row in table["primary"]:
        cells = [fmt(row["per_seed"].get(n)) + ("*" if row["reproduced_per_seed"].get(n) else "")
                 for n in names]  # fmt: skip
        iv = row["interval"]
        interval = "-" if iv is None else f"[{fmt(iv[0])}, {fmt(iv[1])}]"
        lines.append(f"| {row['claim']} | {row['statistic']} | {row['rule']} | "
                     f"{' | '.join(cells)} | {interval} | {row['verdict']} |")  # fmt: skip
    lines += [
        "",
        "`*` = reproduced on that seed. Secondary (claim 3, the other paired rows, "
        f"Holm within each seed, alpha {table['alpha']}):",
        "",
        f"| row | {' | '.join(names)} | verdict |",
        "|---" * (2 + len(names)) + "|",
    ]
    for row in table["secondary"]:
        cells = [f"{fmt(row['per_seed'].get(n))} (p {fmt(row['holm_p'].get(n))})" for n in names]
        lines.append(f"| {row['row']} | {' | '.join(cells)} | {row['verdict']} |")
    return "\n".join(lines) + "\n"


#: Markers of the generated seeds table in ``docs/claims.md``.
BEGIN = "<!-- seeds table: generated by run.claims --seeds; do not edit -->"
END = "<!-- end seeds table -->"


def replace_block(text: str, block: str) -> str:
    """``text`` with the part between :data:`BEGIN` and :data:`END` replaced by ``block``."""
    if BEGIN not in text or END not in text:
        raise ValueError(f"docs: no seeds markers ({BEGIN!r} ... {END!r}); add them first")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{block}{END}{tail}"
