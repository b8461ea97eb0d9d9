"""Progress bars: tqdm, with one switch that silences every bar of a call.

A public function that takes ``progress`` runs its body inside :func:`show_progress`; every bar
it opens, directly or in the functions it calls, goes through :func:`progress_bar`, so
``progress=False`` silences them all (an inner call cannot turn them back on).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from tqdm.auto import tqdm

_ENABLED: ContextVar[bool] = ContextVar("lvlm_lens_progress", default=True)


@contextmanager
def show_progress(enabled: bool = True) -> Iterator[None]:
    """Inside the block, bars are shown only if ``enabled`` (and no enclosing block hid them)."""
    token = _ENABLED.set(_ENABLED.get() and bool(enabled))
    try:
        yield
    finally:
        _ENABLED.reset(token)


def progress_bar(
    iterable: Iterable[Any] | None = None, *, show: bool | None = True, **kwargs: Any
) -> tqdm:
    """A tqdm bar; hidden inside ``show_progress(False)``, or when ``show`` is false (``None``:
    shown only on a terminal)."""
    if not _ENABLED.get() or show is False:
        disable: bool | None = True
    else:
        disable = None if show is None else False
    return tqdm(iterable, disable=disable, **kwargs)
