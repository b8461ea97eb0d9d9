"""Prompt templates of the toys: LLaVA-1.5's, and one with several role tokens (science toy v2).

- ``"llava"``: ``USER: <image>\\n{question} ASSISTANT:``, the bundled and science toys'. The only
  role token between the question and the final ``:`` is ``ASSISTANT``.
- ``"roles"``: ``USER: <image>\\n{question} <|im_end|>\\n<|im_start|> ASSISTANT:``, the science
  toy v2's: four role tokens (``<|im_end|>``, ``\\n``, ``<|im_start|>``, ``ASSISTANT``) between
  the question and the final ``:``, so claim 6.1 (text reaches the role tokens before the image
  does) has role tokens the model may or may not use. Every token is already in the toys'
  tokenizer; the toolkit's ``role`` group (:data:`lvlm_lens.model.prepare.ROLE_PATTERN`) finds
  them all.

Training prompts are written in ``"llava"`` form (:mod:`lvlm_lens.data.questions`) and turned
into a toy's template by :func:`apply_template`; :func:`chat_template` is the Jinja of the same
template for ``template="chat"`` prompts (saved with the checkpoint).
"""

from __future__ import annotations

from lvlm_lens.hf_parts import LLAVA_CHAT_TEMPLATE

#: The prompt templates a toy can be trained with.
TEMPLATES = ("llava", "roles")
#: How a ``"llava"`` prompt ends (the generation prompt of its chat template).
LLAVA_ENDING = " ASSISTANT:"
#: How a ``"roles"`` prompt ends: four role tokens, then the final ``:``.
ROLES_ENDING = " <|im_end|>\n<|im_start|> ASSISTANT:"

_GENERATION = "{{ 'ASSISTANT:' }}"


def _check(template: str) -> None:
    if template not in TEMPLATES:
        raise ValueError(f"unknown prompt template {template!r}; expected one of {TEMPLATES}")


def apply_template(prompt: str, template: str) -> str:
    """A raw ``"llava"`` prompt (ending ``" ASSISTANT:"``) in ``template``'s form."""
    _check(template)
    if template == "llava":
        return prompt
    if not prompt.endswith(LLAVA_ENDING):
        raise ValueError(
            f"template {template!r}: the prompt must end with {LLAVA_ENDING!r} (a raw LLaVA "
            f"prompt of lvlm_lens.data.questions), got ...{prompt[-30:]!r}"
        )
    return prompt[: -len(LLAVA_ENDING)] + ROLES_ENDING


def chat_template(template: str) -> str:
    """The Jinja chat template rendering a user turn the way :func:`apply_template` writes it."""
    _check(template)
    if template == "llava":
        return LLAVA_CHAT_TEMPLATE
    if _GENERATION not in LLAVA_CHAT_TEMPLATE:  # the LLaVA template changed under us
        raise RuntimeError("LLAVA_CHAT_TEMPLATE has no 'ASSISTANT:' generation prompt to extend")
    ending = ROLES_ENDING.lstrip().replace("\n", "\\n")
    return LLAVA_CHAT_TEMPLATE.replace(_GENERATION, "{{ '" + ending + "' }}")


def template_of(chat: str | None) -> str:
    """The template whose :func:`chat_template` is ``chat`` (a model's ``chat_template``);
    ``"llava"`` for any other."""
    return next((t for t in TEMPLATES if chat == chat_template(t)), "llava")
