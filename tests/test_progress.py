"""``progress=False`` silences every progress bar of a call, nested ones included."""

from __future__ import annotations

import io
import sys

import torch

from lvlm_lens import HookedLVLM
from lvlm_lens.attribution.comparison import compare_rankings, pooled_runner
from lvlm_lens.attribution.curves import evaluate_ranking, random_band
from lvlm_lens.attribution.head_attribution import AttributionConfig, head_attribution
from lvlm_lens.attribution.rankings import single_head_ablation
from lvlm_lens.interventions.ablation import HeadAblation, compute_baseline
from lvlm_lens.interventions.engine import AblationEngine, run_reference
from lvlm_lens.interventions.token_ablation import mean_image_token
from tests.helpers import PROMPTS, noise_image


class Terminal(io.StringIO):
    """A stderr that says it is a terminal, so that tqdm's automatic bars show too."""

    def isatty(self) -> bool:
        return True


def run_everything(model, inp, progress):
    refs = [noise_image(20, 20, 7), noise_image(20, 20, 8)]
    cfg = AttributionConfig(n_masks=40, method="lasso", batch_size=8,
                            ablation=HeadAblation(baseline="mean"))
    result = head_attribution(model, inp, cfg, reference_images=refs, progress=progress)
    base = compute_baseline(model, inp, cfg.ablation, reference_images=refs, progress=progress)
    engine = AblationEngine(model, inp, base, cfg.ablation, batch_size=8)
    masks = result.masks[:10]
    engine.run(masks, progress=progress)
    run_reference(model, inp, masks, base, cfg.ablation, progress=progress)
    single_head_ablation(engine, progress=progress)
    run, ranking = pooled_runner([engine]), result.importance[0]
    evaluate_ranking(run, ranking, [0, 1, 4], batch_size=2, progress=progress)
    random_band(run, *ranking.shape, [0, 1, 4], n_random=2, batch_size=2, progress=progress)
    compare_rankings(model, result, [inp], [base], cfg.ablation, "logit", n_random=2,
                     batch_size=8, progress=progress)
    mean_image_token(model, [inp, inp], progress=progress)


def test_progress_false_silences_every_bar(tiny_checkpoint, monkeypatch):
    torch.manual_seed(0)
    model = HookedLVLM.from_pretrained(tiny_checkpoint("llava-llama"))
    inp = model.prepare(noise_image(20, 20, 1), PROMPTS[0])
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    run_everything(model, inp, progress=False)
    assert terminal.getvalue() == ""
    run_everything(model, inp, progress=True)  # the same calls do draw bars on a terminal
    for bar in ("baseline K/V", "masked runs", "lasso path", "reference", "top-k masks",
                "random rankings", "mean image token"):
        assert bar in terminal.getvalue(), bar
