"""Is a head-ablation baseline class-neutral? What the model answers with every head ablated.

Faithfulness and completeness (:mod:`lvlm_lens.attribution.curves`) divide by the *all-heads
effect*, ``metric(clean) - metric(every head ablated)``. If the baseline itself carries an
answer (e.g. the mean image reads as one class), the model with every head ablated gives that
answer, the all-heads effect of the examples of that class is near zero (or negative) and their
normalised curves blow up. :func:`check_baseline` reports, per example, the all-heads-ablated
answer and effect, and flags the examples whose effect is too small to normalise by.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from lvlm_lens.files import Checkpoints, cached
from lvlm_lens.interventions.engine import AblationEngine
from lvlm_lens.model.hooked_lvlm import HookedLVLM

#: An example is flagged when its all-heads effect is below this fraction of the median effect.
MIN_EFFECT_FRACTION = 0.1


@dataclass
class BaselineCheck:
    """All-heads ablation of a set of examples under one baseline.

    Attributes:
        answers: Per example, the token the model answers with every head ablated.
        answer_ids: Their token ids.
        clean: The metric with nothing ablated.
        ablated: The metric with every head ablated.
        effect: ``clean - ablated`` (the denominator of the normalised curves).
        flagged: ``effect < min_effect_fraction * median(effect)``: excluded from normalised
            curves.
        min_effect_fraction: The threshold used.
    """

    answers: list[str]
    answer_ids: Int[Tensor, " n"]
    clean: Float[Tensor, " n"]
    ablated: Float[Tensor, " n"]
    effect: Float[Tensor, " n"]
    flagged: Bool[Tensor, " n"]
    min_effect_fraction: float = MIN_EFFECT_FRACTION

    @property
    def kept(self) -> list[int]:
        """Indices of the examples whose all-heads effect is large enough to normalise by."""
        return (~self.flagged).nonzero().flatten().tolist()

    def answer_shares(self) -> dict[str, float]:
        """Share of the examples given each all-heads-ablated answer, most common first."""
        counts = Counter(self.answers)
        return {a: c / len(self.answers) for a, c in counts.most_common()}

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary: the answer shares, the effects and how many are flagged."""
        shares = self.answer_shares()
        return {
            "ablated_answers": shares,
            "most_common_answer": next(iter(shares), None),
            "most_common_share": next(iter(shares.values()), None),
            "median_effect": float(self.effect.median()) if len(self.effect) else None,
            "n_flagged": int(self.flagged.sum()),
            "n_examples": len(self.answers),
            "min_effect_fraction": self.min_effect_fraction,
        }

    def to_frame(self) -> Any:
        """One row per example: all-heads answer, clean / ablated metric, effect, flagged."""
        import pandas as pd

        return pd.DataFrame(
            {
                "ablated_answer": self.answers,
                "clean": self.clean.tolist(),
                "ablated": self.ablated.tolist(),
                "effect": self.effect.tolist(),
                "flagged": self.flagged.tolist(),
            }
        )


def flag_small_effects(
    effect: Float[Tensor, " n"], min_effect_fraction: float = MIN_EFFECT_FRACTION
) -> Bool[Tensor, " n"]:
    """Effects below ``min_effect_fraction`` times the median effect (negative ones included).

    A non-positive median flags every example: no example can then be normalised.
    """
    if not len(effect):
        return torch.zeros(0, dtype=torch.bool)
    median = float(effect.median())
    if median <= 0:
        return torch.ones(len(effect), dtype=torch.bool)
    return effect < min_effect_fraction * median


@torch.no_grad()
def check_baseline(
    model: HookedLVLM,
    engines: list[AblationEngine],
    min_effect_fraction: float = MIN_EFFECT_FRACTION,
    checkpoints: Checkpoints | None = None,
    keys: list[str] | None = None,
) -> BaselineCheck:
    """What the model answers, and how much the metric moves, when every head is ablated.

    Args:
        model: The :class:`~lvlm_lens.HookedLVLM`.
        engines: One engine per example, each on a one-example input, built with the baseline
            and the metric of the normalised curves
            (:func:`~lvlm_lens.attribution.head_attribution.build_engine`); their prefix caches
            are reused.
        min_effect_fraction: See :func:`flag_small_effects`.
        checkpoints: Where each example's all-heads result is kept (and read from on a rerun).
        keys: An identifier per engine for its checkpoint (default: its position).

    Returns:
        Per-example answers, metrics and flags.
    """
    cfg = model.cfg
    ends = torch.zeros(2, cfg.n_layers, cfg.n_heads, dtype=torch.bool)
    ends[1] = True
    keys = keys or [str(i) for i in range(len(engines))]
    if len(keys) != len(engines):
        raise ValueError(f"got {len(keys)} keys for {len(engines)} engines")
    answer_ids, clean, ablated = [], [], []
    for engine, key in zip(engines, keys, strict=True):
        if len(engine.inp) != 1:
            raise ValueError(f"check_baseline takes one-example engines, got an engine on a batch "
                             f"of {len(engine.inp)}: build one engine per example")

        def run(engine: AblationEngine = engine) -> dict[str, Tensor]:
            values = engine.run(ends, progress=False)[0]
            argmax = engine.with_metric(_argmax).run(ends[1:], progress=False)[0]
            return {"values": values, "argmax": argmax}

        got = cached(checkpoints, f"baseline check/{key}", run)
        clean.append(float(got["values"][0]))
        ablated.append(float(got["values"][1]))
        answer_ids.append(int(got["argmax"][0]))
    clean_t = torch.tensor(clean, dtype=torch.float64)
    ablated_t = torch.tensor(ablated, dtype=torch.float64)
    effect = clean_t - ablated_t
    return BaselineCheck(
        answers=model.tokenizer.convert_ids_to_tokens(answer_ids),
        answer_ids=torch.tensor(answer_ids, dtype=torch.long),
        clean=clean_t,
        ablated=ablated_t,
        effect=effect,
        flagged=flag_small_effects(effect, min_effect_fraction),
        min_effect_fraction=min_effect_fraction,
    )


def _argmax(logits: Tensor, answers: Tensor) -> Tensor:
    """A "metric" that is the predicted token (exact in float32 for any vocabulary < 2^24)."""
    return logits.argmax(-1).float()


def baseline_note(check: BaselineCheck, baseline: str) -> str:
    """One plain-language line for a run's report: the all-heads answer and what was excluded."""
    s = check.summary()
    share = s["most_common_share"] or 0.0
    neutral = (
        f"not class-neutral: with every head ablated the model answers {s['most_common_answer']!r} "
        f"for {share:.0%} of the examples"
        if share >= 0.5
        else f"with every head ablated the most common answer is {s['most_common_answer']!r} "
        f"({share:.0%} of the examples)"
    )
    return (
        f"Baseline {baseline!r}: {neutral}. {s['n_flagged']} of {s['n_examples']} example(s) "
        f"have an all-heads effect below {check.min_effect_fraction:.0%} of the median and are "
        "left out of the faithfulness / completeness curves."
    )
