"""The engine's mask loop issues no operation that makes the host wait for the device."""

from __future__ import annotations

from torch.utils._python_dispatch import TorchDispatchMode

from lvlm_lens import HookedLVLM
from lvlm_lens.attribution.regression import sample_masks
from lvlm_lens.interventions.ablation import HeadAblation, compute_baseline
from lvlm_lens.interventions.engine import AblationEngine
from tests.helpers import PROMPTS, noise_image

# reading a device value on the host (item, bool, nonzero's size, equal) waits for the device
SYNCING = {"_local_scalar_dense", "nonzero", "equal", "is_nonzero", "allclose", "unique"}


class Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.__name__.split(".")[0])
        return func(*args, **(kwargs or {}))


def test_run_batch_has_no_host_device_sync(tiny_checkpoint):
    model = HookedLVLM.from_pretrained(tiny_checkpoint("llava-onevision-qwen2"))
    inp = model.prepare([noise_image(20, 20, 1), noise_image(20, 20, 2)], PROMPTS)
    cfg = HeadAblation(baseline="zero")
    engine = AblationEngine(model, inp, compute_baseline(model, inp, cfg), cfg)
    engine._example(1)  # the prefix, once per example, may read the device
    sparse = sample_masks(8, model.cfg.n_layers, model.cfg.n_heads, rate=0.1, seed=0)
    dense = sample_masks(8, model.cfg.n_layers, model.cfg.n_heads, rate=0.6, seed=0)
    for masks in (sparse, dense):
        with Ops() as ops:
            engine.run_batch(1, masks)
        assert "_scaled_dot_product_flash_attention_for_cpu" in ops.names  # the fused path ran
        assert not SYNCING & set(ops.names), sorted(SYNCING & set(ops.names))
