"""Training recipes of the toy LVLMs: architecture, task and optimiser settings, and the presets.

Two presets ship:

- ``"bundled"``: the checkpoint in ``lvlm_lens/toy/checkpoint`` (4 layers x 8 heads, every
  question asks for the object's class);
- ``"science"``: the checkpoint in ``lvlm_lens/toy/science_checkpoint`` (8 layers x 8 heads,
  attention dropout 0.1, questions about the shape, colour, size or background of the same
  image, :mod:`lvlm_lens.data.questions`), built to test the paper's claims
  (``docs/claims.md``).

A task turns one step's seeded random stream into a batch of prompts and one-word answers
(:func:`sample_batch`);
:class:`TrainLog` keeps the running accuracy per question type between log lines.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from lvlm_lens.data import (
    CLASSES,
    IMAGE_QUESTIONS,
    TEXT_QUESTIONS,
    SyntheticExample,
    generate_from_rng,
)
from lvlm_lens.data.questions import (
    ATTRIBUTE_QUESTIONS,
    ATTRIBUTES,
    attribute_answer,
    attribute_image_prompt,
    attribute_text_prompt,
)

#: Training tasks: ``"shape"`` (name the object, the bundled toy) or ``"attributes"`` (its
#: shape, colour, size or background, the science toy).
TASKS = ("shape", "attributes")


@dataclass(frozen=True)
class ToyArchitecture:
    """The language model of a toy LVLM (the vision tower and projector are fixed).

    Attributes:
        layers: Decoder layers.
        heads: Attention heads per layer (no grouped-query attention).
        d_model: Residual width; the head dimension is ``d_model // heads``.
        d_mlp: SwiGLU MLP width.
        attention_dropout: Dropout on the attention probabilities while training (HF's
            ``attention_dropout``; inactive in eval mode, so inference is unchanged).
    """

    layers: int = 4
    heads: int = 8
    d_model: int = 128
    d_mlp: int = 256
    attention_dropout: float = 0.0

    def text_config(self) -> dict[str, Any]:
        """The ``LlamaConfig`` fields of this architecture (:func:`~lvlm_lens.toy.toy_config`)."""
        if min(self.layers, self.heads, self.d_model, self.d_mlp) < 1:
            raise ValueError(f"architecture sizes must be >= 1, got {self}")
        if self.d_model % self.heads:
            raise ValueError(f"d_model {self.d_model} is not a multiple of heads {self.heads}")
        if not 0.0 <= self.attention_dropout < 1.0:
            raise ValueError(f"attention_dropout must be in [0, 1), got {self.attention_dropout}")
        return dict(
            hidden_size=self.d_model,
            intermediate_size=self.d_mlp,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            num_key_value_heads=self.heads,
            head_dim=self.d_model // self.heads,
            attention_dropout=self.attention_dropout,
        )


@dataclass(frozen=True)
class ToyRecipe:
    """Everything that defines a toy training run except the seed and the output folder.

    Attributes:
        task: One of :data:`TASKS`.
        architecture: The language model's sizes.
        steps: Optimiser steps; each sees a fresh batch.
        batch_size: Examples per step, image and text prompts together.
        lr: Peak learning rate of the one-cycle schedule.
        text_fraction: Share of each batch asked as text-only prompts.
        weight_decay: AdamW weight decay (matrices only).
        warmup_frac: Share of the steps spent warming up (one-cycle ``pct_start``).
        sincos_positions: Start the vision position embeddings from a 2-D sine/cosine pattern.
        patch_init_std: Standard deviation of the initial patch embedding weights.
        attribute_weights: Probability of asking each of
            :data:`~lvlm_lens.data.questions.ATTRIBUTES` (``"attributes"`` task only).
        vision_init: ``None`` (train the vision tower from scratch) or the name of a shipped
            toy (``"bundled"``) whose vision tower and projector are the starting point, as
            LLaVA starts from a pretrained CLIP; everything stays trainable.
    """

    task: str = "shape"
    architecture: ToyArchitecture = field(default_factory=ToyArchitecture)
    steps: int = 1500
    batch_size: int = 64
    lr: float = 1e-3
    text_fraction: float = 0.25
    weight_decay: float = 0.01
    warmup_frac: float = 0.1
    sincos_positions: bool = True
    patch_init_std: float = 0.2
    attribute_weights: tuple[float, ...] = (0.25, 0.25, 0.25, 0.25)
    vision_init: str | None = None

    def __post_init__(self) -> None:
        weights = np.asarray(self.attribute_weights, dtype=float)
        if weights.shape != (len(ATTRIBUTES),) or weights.min() < 0 or weights.sum() <= 0:
            raise ValueError(
                f"attribute_weights must be {len(ATTRIBUTES)} non-negative weights "
                f"(for {ATTRIBUTES}), got {self.attribute_weights}"
            )
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; expected one of {TASKS}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if round(self.batch_size * self.text_fraction) >= self.batch_size:
            raise ValueError("text_fraction leaves no image prompts in the batch")

    def with_overrides(self, **overrides: Any) -> ToyRecipe:
        """A copy with the given fields replaced (``None`` values are ignored)."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


#: The recipes of the shipped checkpoints (``train_toy(preset=...)``, ``--preset``).
PRESETS: dict[str, ToyRecipe] = {
    "bundled": ToyRecipe(),
    "science": ToyRecipe(
        task="attributes",
        architecture=ToyArchitecture(layers=8, heads=8, d_model=128, attention_dropout=0.1),
        steps=2000,
        # the shape needs most of the vision learning; colour, size and background are easier
        attribute_weights=(0.4, 0.2, 0.2, 0.2),
        # from scratch, the shape of the image was still at 22 % after 600 steps (docs)
        vision_init="bundled",
    ),
}


@dataclass
class Batch:
    """One training step's prompts: image prompts first, then text-only prompts.

    Attributes:
        examples: The drawn examples (images of the first ``n_image``).
        prompts: Raw prompts (one ``<image>`` in each of the first ``n_image``).
        answers: One-word answers.
        kinds: ``"image:<attribute>"`` / ``"text:<attribute>"`` of each prompt (for logging).
    """

    examples: list[SyntheticExample]
    prompts: list[str]
    answers: list[str]
    kinds: list[str]


def sample_batch(
    recipe: ToyRecipe, rng: np.random.Generator, n: int, n_image: int, size: int
) -> Batch:
    """``n`` fresh examples and their prompts from ``rng``; the first ``n_image`` show the image.

    ``"shape"`` draws the examples, then one question template per example (the bundled
    toy's stream, unchanged); ``"attributes"`` then draws an attribute per example (with
    ``recipe.attribute_weights``) and a template, uniformly.
    """
    task = recipe.task
    examples = generate_from_rng(n, rng, size, CLASSES)
    if task == "shape":
        which = rng.integers(0, len(IMAGE_QUESTIONS), size=n).tolist()
        prompts = [
            IMAGE_QUESTIONS[w]
            if i < n_image
            else TEXT_QUESTIONS[w].format(description=ex.description)
            for i, (ex, w) in enumerate(zip(examples, which, strict=True))
        ]
        answers = [ex.label for ex in examples]
        attrs = ["shape"] * n
    elif task == "attributes":
        p = np.asarray(recipe.attribute_weights, dtype=float)
        attrs = [ATTRIBUTES[a] for a in rng.choice(len(ATTRIBUTES), size=n, p=p / p.sum())]
        templates = rng.integers(0, 1 << 16, size=n).tolist()
        prompts, answers = [], []
        for i, (ex, a, t) in enumerate(zip(examples, attrs, templates, strict=True)):
            t %= len(ATTRIBUTE_QUESTIONS[a])
            prompts.append(
                attribute_image_prompt(a, t) if i < n_image else attribute_text_prompt(ex, a, t)
            )
            answers.append(attribute_answer(ex, a))
    else:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    kinds = [("image:" if i < n_image else "text:") + a for i, a in enumerate(attrs)]
    return Batch(examples, prompts, answers, kinds)


class TrainLog:
    """Running loss and accuracy per prompt kind between two log lines of training."""

    def __init__(self) -> None:
        self.loss, self.steps = 0.0, 0
        self.hits: dict[str, list[int]] = {}

    def add(self, loss: float, kinds: list[str], hits: list[bool]) -> None:
        self.loss += loss
        self.steps += 1
        for kind, hit in zip(kinds, hits, strict=True):
            counts = self.hits.setdefault(kind, [0, 0])
            counts[0] += int(hit)
            counts[1] += 1

    def entry(self, step: int, lr: float, seconds: float, task: str) -> dict[str, Any]:
        def acc(prefix: str) -> float | None:
            got = [c for k, c in self.hits.items() if k.startswith(prefix)]
            total = sum(c[1] for c in got)
            return sum(c[0] for c in got) / total if total else None

        entry: dict[str, Any] = {
            "step": step,
            "loss": self.loss / self.steps,
            "train_image_acc": acc("image:"),
            "train_text_acc": acc("text:"),
        }
        if task != "shape":
            entry["train_acc"] = {k: c[0] / c[1] for k, c in sorted(self.hits.items())}
        entry |= {"lr": lr, "seconds": round(seconds, 1)}
        return entry


def log_line(entry: dict[str, Any]) -> str:
    """One printed line of a :class:`TrainLog` entry."""
    text = "-" if entry["train_text_acc"] is None else f"{entry['train_text_acc']:.3f}"
    line = (
        f"step {entry['step']:5d}  loss {entry['loss']:.4f}  train acc image "
        f"{entry['train_image_acc']:.3f} text {text}  lr {entry['lr']:.2e}  "
        f"{entry['seconds']:.0f}s"
    )
    if "train_acc" in entry:
        line += "  " + " ".join(f"{k} {v:.2f}" for k, v in entry["train_acc"].items())
    return line


@dataclass(frozen=True)
class TemplatedRecipe(ToyRecipe):
    """A :class:`ToyRecipe` whose prompts are written in a chat template of their own.

    Attributes:
        template: One of :data:`lvlm_lens.toy.templates.TEMPLATES`: every training prompt (and
            the checkpoint's chat template) takes that form (``"roles"``: four role tokens
            between the question and the final token).
    """

    template: str = "roles"

    def __post_init__(self) -> None:
        super().__post_init__()
        from lvlm_lens.toy.templates import TEMPLATES  # here: keeps recipe's imports as they were

        if self.template not in TEMPLATES:
            raise ValueError(
                f"unknown prompt template {self.template!r}; expected one of {TEMPLATES}"
            )
        if self.task == "shape" and self.template != "llava":
            raise ValueError("the shape task's prompts (lvlm_lens.data.prompts) are LLaVA only")


def recipe_template(recipe: ToyRecipe) -> str:
    """The prompt template of a recipe: its own (:class:`TemplatedRecipe`) or ``"llava"``."""
    return recipe.template if isinstance(recipe, TemplatedRecipe) else "llava"


#: The science toy v2 (``docs/toy_model.md``, "Science toy v2"): 12 layers x 16 heads (192
#: heads, so a small circuit can show), the science task and warm start, and the ``"roles"``
#: template (four role tokens between the question and the final token). Not shipped: trained
#: per seed by ``make seeds-v2``.
PRESETS["science_v2"] = TemplatedRecipe(
    task="attributes",
    architecture=ToyArchitecture(layers=12, heads=16, d_model=128, attention_dropout=0.1),
    steps=2000,
    attribute_weights=(0.4, 0.2, 0.2, 0.2),
    vision_init="bundled",
    template="roles",
)
