"""The options of a run: every field is an ``lvlm-lens`` flag, and what a resumed run must share."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from lvlm_lens.attribution.head_attribution import AttributionConfig
from lvlm_lens.errors import OptionError

#: The largest seed torch's generators take (an unsigned 64-bit integer).
MAX_SEED = 2**64 - 1


@dataclass
class RunOptions:
    """Options of ``lvlm-lens attribute`` (every field is a CLI flag).

    Attributes:
        out: Output folder.
        model: Checkpoint folder or hub id; ``None`` = the bundled toy LVLM.
        data: Folder with images + ``data.csv``/``data.jsonl``; ``None`` = a synthetic set.
        n_examples: Size of the synthetic set (or a cap on a real one; 0 = all).
        data_seed: Seed of the synthetic set.
        n_reference: Images averaged for ``baseline="mean"`` (synthetic: a set of another
            seed; real data: the first images of the dataset).
        baseline_image: Image file for ``baseline="image"``.
        keep_wrong: Keep examples the model answers wrongly (default: excluded, reported).
        answer_rule: ``single`` (refuse multi-token answers) or ``first`` (score the first).
        chunk_masks: Masks per chunk file (the unit a killed run can lose).
        device: ``cpu``/``cuda``/... (default: CUDA if available).
        dtype: ``float32``, ``bfloat16`` or ``float16``.
        rankings: Also compute the baseline rankings and faithfulness/completeness curves.
        n_random: Random rankings for the random band.
        attribution: Head-attribution options (baseline ``blank`` by default, as the
            library's: of the four baselines it leaves the fewest examples with a near-zero
            all-heads effect on both shipped toys, ``docs/claims.md``).
        threads: CPU threads of torch's intra-op pool; ``None`` picks them
            (:func:`lvlm_lens.run.threads.choose_threads`). Not part of the fingerprint: a run
            may resume with other threads.
    """

    out: str = "runs/attribute"
    model: str | None = None
    data: str | None = None
    n_examples: int = 24
    data_seed: int = 1000
    n_reference: int = 16
    baseline_image: str | None = None
    keep_wrong: bool = False
    answer_rule: str = "single"
    chunk_masks: int = 256
    device: str | None = None
    dtype: str = "float32"
    rankings: bool = True
    n_random: int = 10
    attribution: AttributionConfig = field(default_factory=AttributionConfig)
    threads: int | None = None

    def __post_init__(self) -> None:
        at_least = {"n_examples": 0, "data_seed": 0, "n_reference": 1, "chunk_masks": 1,
                    "n_random": 0}  # fmt: skip
        for name, low in at_least.items():
            if getattr(self, name) < low:
                raise OptionError(name, f"must be >= {low}, got {getattr(self, name)}")
        for name, seed in (("data_seed", self.data_seed), ("seed", self.attribution.seed)):
            if seed > MAX_SEED:
                raise OptionError(name, f"must be < 2**64 (a 64-bit seed), got {seed}")
        if self.threads is not None and self.threads < 1:
            raise OptionError("threads", f"must be >= 1, got {self.threads}")
        if self.data is None and self.n_examples == 0:
            raise OptionError(
                "n_examples",
                "is 0, which means 'every row' of a --data folder; the synthetic set needs "
                "a size: use >= 1 (or pass --data)",
            )

    def fingerprint(self) -> dict[str, Any]:
        """What must not change between a run and its resumption."""
        d = asdict(self)
        d.pop("out")
        d.pop("threads")
        return d
