"""Which toy the claims runner measures, and which claims it can test.

``python -m lvlm_lens.run.claims --toy science|science_v2``: the science toy (v1, shipped,
8 x 8 heads) or the science toy v2 (trained per seed, 12 x 16 heads, ``"roles"`` template,
``docs/toy_model.md``). The toy fixes the prompt template of every section, the claim-5 grid,
and which claims its table counts as testable: on v1, claims 4a, 5 and 6.1 are not (too few
heads for a small circuit to show, one image per class x look cell with looks that differ in
queried attributes, and ``ASSISTANT`` the only role token after the question). On v2 all are,
and claims 5 and 6.1 get the v2 primary statistics of :data:`V2_PRIMARY` (fixed here before any
v2 seed was trained; do not tune).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lvlm_lens.data.records import Record
from lvlm_lens.run.seeds import BEGIN, END, PRIMARY, Primary, _primary_row, replace_block
from lvlm_lens.toy.templates import apply_template


@dataclass(frozen=True)
class ClaimsToy:
    """A toy the claims are measured on.

    Attributes:
        name: Its preset (``training.json["preset"]`` of its checkpoints).
        template: Its prompt template (:mod:`lvlm_lens.toy.templates`).
        grid: The claim-5 grid: ``"v1"`` (one image per class x look, :data:`LOOKS` of
            ``run.claims``) or ``"v2"`` (:func:`~lvlm_lens.run.claims_semantics.semantic_grid`).
        shipped: Whether ``load_toy(name=name)`` has a checkpoint (else pass ``--model``).
        untestable: Claims of :data:`~lvlm_lens.run.seeds.PRIMARY` this toy cannot test, and why.
        primary: Primary statistics that replace those of ``PRIMARY`` on this toy.
    """

    name: str
    template: str
    grid: str
    shipped: bool
    untestable: dict[str, str] = field(default_factory=dict)
    primary: tuple[Primary, ...] = ()

    @property
    def testable(self) -> list[str]:
        """The claims of ``PRIMARY`` this toy can test, in table order."""
        return [p.claim for p in PRIMARY if p.claim not in self.untestable]

    def records(self, records: list[Record]) -> list[Record]:
        """``records`` with their raw LLaVA prompts in this toy's template."""
        return [replace(r, prompt=apply_template(r.prompt, self.template)) for r in records]


def _centre(res: dict[str, Any], edge: str) -> float:
    """Centre of mass (layer) of one knockout edge's effect; NaN when it has none."""
    value = res["flow"]["effect_centre_of_mass"].get(edge)
    return math.nan if value is None else float(value)


def _later(res: dict[str, Any], target: str) -> float:
    """How many layers after the question the image reaches ``target`` (NaN: no effect)."""
    return _centre(res, f"image\u2192{target}") - _centre(res, f"question\u2192{target}")


def _within(res: dict[str, Any]) -> dict[str, Any]:
    return res["semantics"]["shared_answer"]["within_look"]


#: Primary statistics of claims 5 and 6.1 on the science toy v2 (fixed before any v2 run).
#: Claim 5 reads the grid asked its **size** (every answer ``large``), not its shape: with the
#: class as the answer, the answer token alone makes same-class attribution vectors alike (a
#: 3-step, near-chance v2 gives same class - same look 0.99, p 1e-4, on the shape question and
#: 0.16 on the size question, ``tests/run/test_claims_v2.py``), so the shape question could
#: hardly come out the other way.
V2_PRIMARY: tuple[Primary, ...] = (
    Primary("5", "semantics", "centred cosine: same class - same look (mean over examples; "
            "v2 grid asked its size, one answer for all)",
            "above 0 with p < 0.05, classes of whole cells permuted within looks",
            lambda r: _within(r)["value"],
            lambda r: _within(r)["value"] > 0 and _within(r)["p_value"] < 0.05),
    Primary("6.1", "flow", "centre of mass (layer) of image->role minus question->role",
            "above 0, and image->final after question->final (NaN: no role edge matters)",
            lambda r: _later(r, "role"),
            lambda r: _later(r, "role") > 0 and _later(r, "final") > 0),
)  # fmt: skip

#: The toys of the claims runner, by preset name.
TOYS: dict[str, ClaimsToy] = {
    "science": ClaimsToy(
        "science", "llava", "v1", shipped=True,
        untestable={
            "4a": "64 heads: too few for a small circuit to show",
            "5": "one image per class x look cell; the looks differ in queried attributes",
            "6.1": "ASSISTANT is the only role token between the question and the final token",
        },
    ),
    "science_v2": ClaimsToy("science_v2", "roles", "v2", shipped=False, primary=V2_PRIMARY),
}  # fmt: skip


def trained_preset(folder: str | Path) -> str | None:
    """The preset a checkpoint folder was trained with (``None`` without a training record)."""
    record = Path(folder) / "training.json"
    if not record.is_file():
        return None
    return json.loads(record.read_text()).get("preset")


def resolve_toy(requested: str | None, folders: list[str]) -> ClaimsToy:
    """The toy of a run: ``requested`` (``--toy``), else the one the folders were trained as.

    Raises:
        ValueError: The folders were trained as different toys, or as another than
            ``requested``, or a toy without a shipped checkpoint is asked for without folders.
    """
    trained = {f: trained_preset(f) for f in folders}
    known = {f: p for f, p in trained.items() if p in TOYS}
    kinds = set(known.values())
    if len(kinds) > 1:
        raise ValueError(f"--seeds: the checkpoints are of different toys ({known}); "
                         "measure one toy per run")  # fmt: skip
    name = requested or (kinds.pop() if kinds else "science")
    if name not in TOYS:
        raise ValueError(f"--toy: unknown toy {name!r}; expected one of {tuple(TOYS)}")
    wrong = {f: p for f, p in known.items() if p != name}
    if wrong:
        raise ValueError(f"--toy {name}: {wrong} trained as another toy; drop --toy or the folder")
    if not folders and not TOYS[name].shipped:
        raise ValueError(f"--toy {name}: no shipped checkpoint; train one (make seeds-v2) and "
                         "pass it with --model or --seeds")  # fmt: skip
    return TOYS[name]


def toy_table(table: dict[str, Any], toy: ClaimsToy, names: list[str],
              results: list[dict[str, Any]]) -> dict[str, Any]:  # fmt: skip
    """The across-seeds table of ``run.seeds.aggregate`` for ``toy``: its own primary rows in
    place of the defaults, every row marked ``testable``, and the toy named."""
    own = {p.claim: p for p in toy.primary}
    rows = []
    for row in table["primary"]:
        if row["claim"] in own:
            row = _primary_row(own[row["claim"]], names, results)
        rows.append(row | {"testable": row["claim"] not in toy.untestable})
    return table | {"toy": toy.name, "testable": toy.testable, "primary": rows}


def toy_note(toy: ClaimsToy) -> str:
    """The line under the seeds table naming the toy and the claims it cannot test."""
    line = f"Toy: `{toy.name}`."
    if toy.untestable:
        why = "; ".join(f"{c}: {w}" for c, w in toy.untestable.items())
        line += f" Not testable on it (their rows are measured but say little): {why}."
    else:
        line += " Every claim of the table is testable on it."
    return line + "\n"


def toy_markers(toy: ClaimsToy) -> tuple[str, str]:
    """The markers of ``toy``'s seeds table in ``docs/claims.md`` (v1: ``run.seeds``')."""
    if toy.name == "science":
        return BEGIN, END
    return (BEGIN.replace("seeds table", f"seeds table {toy.name}"),
            END.replace("seeds table", f"seeds table {toy.name}"))  # fmt: skip


def replace_toy_block(text: str, block: str, toy: ClaimsToy) -> str:
    """``text`` with ``toy``'s seeds table (between :func:`toy_markers`) replaced by ``block``."""
    begin, end = toy_markers(toy)
    if begin not in text or end not in text:
        raise ValueError(f"docs: no seeds markers of {toy.name} ({begin!r} ... {end!r}); add them")
    if toy.name == "science":
        return replace_block(text, block)
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{block}{end}{tail}"
