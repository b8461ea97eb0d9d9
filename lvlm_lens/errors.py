"""The error of a bad option value, raised with the option's field name.

The lowest layer: imports nothing from lvlm_lens. Options are dataclass fields (``n_masks``);
the command line knows them by their flags (``--num-masks``), so the error keeps the field and
the problem apart and the CLI words the message with its own flag.
"""

from __future__ import annotations


class OptionError(ValueError):
    """``{field} {problem}``: an option value that cannot work.

    Attributes:
        field: The dataclass field (``"n_masks"``).
        problem: What is wrong and what works, worded to follow the option's name
            (``"must be >= 13 ..., got 5"``).
    """

    def __init__(self, field: str, problem: str):
        self.field, self.problem = field, problem
        super().__init__(f"{field} {problem}")

    def named(self, name: str) -> str:
        """The message with the option called ``name`` (e.g. its CLI flag)."""
        return f"{name} {self.problem}"


class RunError(Exception):
    """A run that cannot go on as asked: one line naming the file or folder and what to do.

    Raised by the run's store (:mod:`lvlm_lens.run.store`) and lock instead of exiting, so a
    caller can catch it; ``lvlm-lens`` prints the message alone, as it does for bad input.
    """
