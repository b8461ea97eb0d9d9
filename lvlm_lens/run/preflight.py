"""Checks made before any work starts: the device exists, the masks and metrics fit in
memory, every row's prompt holds its image placeholder."""

from __future__ import annotations

import os
from typing import Any

import torch

from lvlm_lens.attribution.chunked_fit import chunked_fit_memory
from lvlm_lens.attribution.regression import Method
from lvlm_lens.errors import OptionError
from lvlm_lens.model import HookedLVLM
from lvlm_lens.model.families import GENERIC_PLACEHOLDER


def check_device(device: str | None) -> None:
    """Refuse a device this machine does not have, naming what it has.

    Raises:
        OptionError: (field ``device``) unknown, absent or out-of-range device.
    """
    if device is None:
        return
    try:
        dev = torch.device(device)
    except RuntimeError:
        problem = f"{device!r} is not a device: use cpu, cuda or cuda:N"
        raise OptionError("device", problem) from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise OptionError("device", f"is {device} but this machine has no CUDA GPU: use cpu")
        if dev.index is not None and dev.index >= n:
            have = f"{n} CUDA GPU(s): cuda:0 to cuda:{n - 1}"
            raise OptionError("device", f"is {device} but this machine has {have}")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise OptionError("device", f"is {device} but MPS is not available here: use cpu")


def available_memory() -> int:
    """Bytes of memory available now (physical memory if the system does not say)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def mask_memory(n_masks: int, n_heads_total: int, n_examples: int, method: Method = "ridge",
                holdout: float = 0.2) -> int:
    """Bytes a run's masks need at their peak: the masks the result keeps (1 byte per head;
    they are drawn chunk by chunk, never as one float draw), the merged metrics (4 bytes per
    example) and the regression fit, accumulated over chunks of masks
    (:func:`~lvlm_lens.attribution.chunked_fit.chunked_fit_memory`)."""
    fit = chunked_fit_memory(n_masks, n_heads_total, max(n_examples, 1), method, holdout)
    return n_masks * (n_heads_total + 4 * max(n_examples, 1)) + fit


def check_mask_memory(
    n_masks: int,
    n_heads_total: int,
    n_examples: int,
    memory: int | None = None,
    method: Method = "ridge",
    holdout: float = 0.2,
) -> None:
    """Refuse a mask count whose :func:`mask_memory` exceeds half of the available memory,
    with the count that fits.

    Raises:
        OptionError: (field ``n_masks``) too many masks for this machine.
    """
    memory = available_memory() if memory is None else memory
    budget = memory // 2

    def need(n: int) -> int:
        return mask_memory(n, n_heads_total, n_examples, method, holdout)

    if need(n_masks) <= budget:
        return
    lo, hi = 0, min(n_masks, budget // n_heads_total + 1)  # need(hi) >= hi * heads > budget
    while hi - lo > 1:  # need grows with n: the largest n with need(n) <= budget
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if need(mid) <= budget else (lo, mid)
    raise OptionError(
        "n_masks",
        f"is {n_masks:,}: their masks and {method} fit need {need(n_masks) / 2**30:.1f} GiB "
        f"but {memory / 2**30:.1f} GiB is available; use at most {lo:,}",
    )


def check_prompts(model: HookedLVLM, records: list[Any]) -> None:
    """Refuse, before any compute, a row whose prompt does not hold exactly one image
    placeholder, naming the row (``data.csv row 3``).

    Raises:
        ValueError: The first such row.
    """
    it = model.image_text
    for i, rec in enumerate(records):
        text = rec.prompt
        if it.placeholder != GENERIC_PLACEHOLDER:
            text = text.replace(GENERIC_PLACEHOLDER, it.alias)
        n = text.count(it.placeholder)
        if n != 1:
            where = getattr(rec, "meta", {}).get("where") or f"example {i} (id {rec.id!r})"
            raise ValueError(
                f"{where}: the prompt holds {n} image placeholders; write "
                f"{GENERIC_PLACEHOLDER!r} once where the image goes, e.g. 'USER: "
                f"{GENERIC_PLACEHOLDER}\\nWhat is this? ASSISTANT:'"
            )
