"""The one place the run layer turns dataset records into model inputs."""

from __future__ import annotations

from typing import Any

from lvlm_lens.model import HookedLVLM
from lvlm_lens.model.inputs import LVLMInput


def prepare_record(model: HookedLVLM, record: Any, answer_rule: str = "single") -> LVLMInput:
    """One record (``image``, ``prompt``, ``answer``) as a one-example input with its answer."""
    return model.prepare(record.image, record.prompt, answers=record.answer,
                         answer_rule=answer_rule)  # fmt: skip


def prepare_records(
    model: HookedLVLM, records: list[Any], answer_rule: str = "single"
) -> list[LVLMInput]:
    """:func:`prepare_record` of every record, in order."""
    return [prepare_record(model, r, answer_rule) for r in records]
