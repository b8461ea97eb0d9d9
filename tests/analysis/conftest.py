"""Fixtures of the analysis tests: the bundled toy with a few synthetic examples, and image
pairs (clean / corrupted) of different classes."""

from __future__ import annotations

import pytest

from lvlm_lens import HookedLVLM, synthetic_records, toy_checkpoint_path


@pytest.fixture(scope="session")
def toy():
    return HookedLVLM.from_pretrained(toy_checkpoint_path())


@pytest.fixture(scope="session")
def toy_records():
    return synthetic_records(6, seed=3)


@pytest.fixture(scope="session")
def toy_inp(toy, toy_records):
    recs = toy_records
    return toy.prepare([r.image for r in recs], [r.prompt for r in recs], [r.answer for r in recs])


@pytest.fixture(scope="session")
def toy_corrupted(toy, toy_records):
    """The same prompts with images of other classes (answers = those classes)."""
    pool = synthetic_records(40, seed=11)
    used: list[int] = []
    for r in toy_records:
        j = next(j for j, o in enumerate(pool) if o.answer != r.answer and j not in used)
        used.append(j)
    others = [pool[j] for j in used]
    return toy.prepare([o.image for o in others], [r.prompt for r in toy_records],
                       [o.answer for o in others])
