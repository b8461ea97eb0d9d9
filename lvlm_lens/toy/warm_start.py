"""Where a toy's vision warm start comes from, per seed.

A recipe with ``vision_init`` (the science toy) starts its vision tower and projector from a
toy of another recipe (the bundled one). So that a seed varies the whole model, the tower is
the one of **that recipe trained with the same seed**: for seed 0 the shipped checkpoint
(trained with seed 0), for any other seed a folder ``<cache>/<recipe>_seed<N>`` that
:func:`~lvlm_lens.toy.train.train_toy` trains first when it is missing.
:func:`warm_start_vision_` copies such a tower; :func:`init_vision_` is the from-scratch start.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import LlavaForConditionalGeneration

from lvlm_lens.toy import toy_checkpoint_path

#: The seed the shipped checkpoints were trained with (their ``training.json["seed"]``).
SHIPPED_SEED = 0


def warm_start_folder(name: str, seed: int, cache_dir: str | Path) -> Path:
    """The checkpoint folder whose vision tower starts a run of ``seed``.

    Args:
        name: The recipe of the warm start (``ToyRecipe.vision_init``, e.g. ``"bundled"``).
        seed: The training run's seed.
        cache_dir: Where the towers of other seeds are kept (``<name>_seed<seed>``).
    """
    if seed == SHIPPED_SEED:
        shipped = toy_checkpoint_path(name)
        trained = json.loads((shipped / "training.json").read_text())["seed"]
        if trained != SHIPPED_SEED:
            raise ValueError(f"the shipped {name!r} toy was trained with seed {trained}, not 0")
        return shipped
    return Path(cache_dir) / f"{name}_seed{seed}"


def has_checkpoint(folder: Path) -> bool:
    """Whether ``folder`` holds a finished toy checkpoint (weights and training record)."""
    return (folder / "model.safetensors").is_file() and (folder / "training.json").is_file()


def init_vision_(
    model: LlavaForConditionalGeneration, patch_std: float = 0.2, sincos_positions: bool = True
) -> None:
    """Re-initialise the CLIP patch and position embeddings for training from scratch.

    Only initial values change (everything stays trainable). HF draws both from
    ``N(0, 0.02)``; a ViT trained from scratch on the synthetic set learns several times faster
    from a larger patch embedding (``N(0, patch_std)``) and 2-D sine/cosine position embeddings
    (frequencies ``100^(-k/q)``, amplitude 1; zeros for the CLS position).
    """
    emb = model.model.vision_tower.embeddings
    with torch.no_grad():
        emb.patch_embedding.weight.normal_(0.0, patch_std)
    if not sincos_positions:
        return
    dim = emb.position_embedding.weight.shape[1]
    grid = int(round(math.sqrt(emb.num_patches)))
    q = dim // 4
    steps = torch.arange(grid, dtype=torch.float32)
    y, x = torch.meshgrid(steps, steps, indexing="ij")
    omega = 1.0 / (100.0 ** (torch.arange(q, dtype=torch.float32) / q))
    x, y = x.flatten()[:, None] * omega, y.flatten()[:, None] * omega
    table = torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1)
    with torch.no_grad():
        w = emb.position_embedding.weight
        w.zero_()
        w[1:, : table.shape[1]] = table


def warm_start_vision_(model: LlavaForConditionalGeneration, folder: str | Path) -> None:
    """Copy the vision tower (and the projector, when its shapes match) of a toy checkpoint."""
    path = Path(folder) / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint to start the vision tower from at {path}")
    state = load_file(path)
    for part in ("vision_tower", "multi_modal_projector"):
        sub = {k[len(part) + 1 :]: v for k, v in state.items() if k.startswith(part + ".")}
        module = getattr(model.model, part)
        own = module.state_dict()
        if part == "multi_modal_projector" and any(
            k not in own or own[k].shape != v.shape for k, v in sub.items()
        ):
            continue  # another language width: the projector starts from scratch
        module.load_state_dict(sub)
