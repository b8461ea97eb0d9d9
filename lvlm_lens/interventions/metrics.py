"""Answer metrics on final-position logits, shared by every analysis.

Every metric takes final-position logits ``[batch, d_vocab]`` (full ``[batch, pos, d_vocab]``
logits are accepted too; their last position is used, which is the final real token under
left padding) and the answer token id per example, and returns one value per example.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lvlm_lens.model.inputs import LVLMInput

Metric = Callable[[Tensor, Tensor], Tensor]


def final_logits(
    logits: Float[Tensor, "batch pos d_vocab"], inp: LVLMInput | None = None
) -> Float[Tensor, "batch d_vocab"]:
    """Logits at the final real token of each example (column -1 under left padding).

    Args:
        logits: Full model logits.
        inp: The input the logits came from; if given, checks that its last column is real.
    """
    if logits.ndim != 3:
        raise ValueError(f"expected logits [batch, pos, d_vocab], got shape {tuple(logits.shape)}")
    if inp is not None and not bool((inp.attention_mask[:, -1] > 0).all()):
        raise ValueError("the last column holds padding: inputs must be left-padded")
    return logits[:, -1]


def _final(logits: Tensor) -> Float[Tensor, "batch d_vocab"]:
    return logits[:, -1] if logits.ndim == 3 else logits


def _rows(logits: Tensor, ids: Tensor | int) -> Tensor:
    ids = torch.as_tensor(ids, device=logits.device).long()
    ids = ids.expand(logits.shape[0]) if ids.ndim == 0 else ids
    return logits.gather(-1, ids[:, None])[:, 0]


def answer_logit(
    logits: Float[Tensor, "batch d_vocab"], answer_ids: Int[Tensor, " batch"]
) -> Float[Tensor, " batch"]:
    """The answer token's logit."""
    return _rows(_final(logits), answer_ids)


def logit_diff(
    logits: Float[Tensor, "batch d_vocab"],
    answer_ids: Int[Tensor, " batch"],
    foil_ids: Int[Tensor, " batch"] | int | None = None,
) -> Float[Tensor, " batch"]:
    """Answer logit minus foil logit.

    Args:
        logits: Final-position logits.
        answer_ids: Answer token per example.
        foil_ids: Foil token per example; ``None`` uses the highest-scoring non-answer token.
    """
    logits = _final(logits)
    answer = _rows(logits, answer_ids)
    if foil_ids is None:
        ids = torch.as_tensor(answer_ids, device=logits.device).long().expand(logits.shape[0])
        others = logits.scatter(-1, ids[:, None], float("-inf"))
        return answer - others.max(-1).values
    return answer - _rows(logits, foil_ids)


def answer_logprob(
    logits: Float[Tensor, "batch d_vocab"], answer_ids: Int[Tensor, " batch"]
) -> Float[Tensor, " batch"]:
    """Log-probability of the answer token (computed in fp32)."""
    return _rows(_final(logits).float().log_softmax(-1), answer_ids)


def answer_prob(
    logits: Float[Tensor, "batch d_vocab"], answer_ids: Int[Tensor, " batch"]
) -> Float[Tensor, " batch"]:
    """Probability of the answer token (computed in fp32)."""
    return answer_logprob(logits, answer_ids).exp()


def relative_prob_change(
    new_logits: Float[Tensor, "batch d_vocab"],
    clean_logits: Float[Tensor, "batch d_vocab"],
    answer_ids: Int[Tensor, " batch"],
) -> Float[Tensor, " batch"]:
    """``(p_new - p_clean) / p_clean`` of the answer token (Zhang et al.'s knockout metric)."""
    p_new, p_clean = answer_prob(new_logits, answer_ids), answer_prob(clean_logits, answer_ids)
    return (p_new - p_clean) / p_clean


def metric_change(
    new_logits: Float[Tensor, "batch d_vocab"],
    clean_logits: Float[Tensor, "batch d_vocab"],
    answer_ids: Int[Tensor, " batch"],
    metric: str | Metric = "prob",
    relative: bool | None = None,
) -> Float[Tensor, " batch"]:
    """Change of an answer metric from a clean to an intervened run.

    ``(new - clean) / clean`` if ``relative``, else ``new - clean``; by default relative for
    ``"prob"`` (Zhang et al.'s relative probability change) and absolute otherwise.
    """
    if metric == "prob" and relative in (None, True):
        return relative_prob_change(new_logits, clean_logits, answer_ids)
    fn = get_metric(metric)
    m_new, m_clean = fn(new_logits, answer_ids), fn(clean_logits, answer_ids)
    return (m_new - m_clean) / m_clean if relative else m_new - m_clean


#: Metrics by name; each maps ``(logits, answer_ids)`` to a ``[batch]`` tensor.
METRICS: dict[str, Metric] = {
    "logit": answer_logit,
    "logit_diff": logit_diff,
    "logprob": answer_logprob,
    "prob": answer_prob,
}


def get_metric(name: str | Metric) -> Metric:
    """Look up a metric in :data:`METRICS` (a callable is returned unchanged).

    Raises:
        KeyError: The name is not registered; the message lists the known names.
    """
    if callable(name):
        return name
    if name not in METRICS:
        raise KeyError(f"unknown metric {name!r}; known metrics: {sorted(METRICS)}")
    return METRICS[name]
