"""Survivors of ``make mutate`` read one by one and found equivalent or unobservable.

Each entry: (end of the mangled function name, text of a removed line, text of an added line,
verdict, why). ``tools.mutate`` matches a survivor on its function and change, not on the
mutant's number (which shifts when the function is edited). docs/testing.md sums them up.
"""

from __future__ import annotations

EQ, UN = "equivalent", "unobservable"
TEXT_SCOPE = 'query_scope treats every scope but "all" as "text"'
BATCHING = "batching changes no value (engine-vs-reference tests cover batch sizes)"
BAR = "progress bar default or label"
CACHE = "caching every hook (or a cache object) gives the same attention patterns"
TIES = "CPU sort of a few values keeps ties in order either way (ties are tested)"
CENTRED = "xc is centred within each example: Xcᵀ·(per-example constant) = 0, so yc ± ym gives " \
    "the same coefficients and λ_max; ym (not yc) makes the intercepts"
NO_ROWS = "minlength only adds groups without rows, which are never indexed"
SPLIT = "any within-example order is an equally random split (and the CPU sort keeps it)"
FISTA = "FISTA variant (momentum, warm-start order, check interval, iteration cap) that " \
    "reaches the same lasso minimum on the tested designs: speed only"
STEP = "ACCEPTABLE GAP: a step from the wrong eigenvalue converges on the tested designs; " \
    "an ill-conditioned design could diverge (not tested)"
ONE_ALPHA = "with one penalty the validation split is never used"
IMPORT = "a property factory that runs at import, before mutmut switches the mutant on"
MARKERS = "InternVL's tokenizer defines exactly these image markers (the fallbacks)"
F64 = "fit_pooled already made the targets float64 on the masks' device"


def _each(where: str, old: str, news: tuple[str, ...], verdict: str, why: str) -> list:
    return [(where, old, new, verdict, why) for new in news]


REVIEWED: list[tuple[str, str, str, str, str]] = [
    *_each("attention_weight", 'src, "text")', ("src, None)", 'src, "XXtextXX")', 'src, "TEXT")'),
           EQ, TEXT_SCOPE),
    *_each("attribution_patching", 'scope: str = "text"',
           ('scope: str = "XXtextXX"', 'scope: str = "TEXT"'), EQ, TEXT_SCOPE),
    *_each("attention_weight", "names_filter=names, return_cache_object=False",
           ("names_filter=None", "run_with_cache(inp, return_cache_object",
            "return_cache_object=None", "return_cache_object=True", "names_filter=names, )"),
           EQ, CACHE),
    ("attention_weight", "q.sum(-1, keepdim=True)", "q.sum(+1, keepdim=True)", EQ,
     "q is [batch, pos]: dim 1 is dim -1"),
    ("head_attribution", "config.batch_size)", ")", EQ, BATCHING),
    ("curves_given_endpoints", "batch_size, desc)", "None, desc)", EQ, BATCHING),
    ("head_attribution", "progress: bool = True", "progress: bool = False", UN, BAR),
    ("head_attribution", "show_progress(progress)", "show_progress(None)", UN, BAR),
    ("single_head_ablation", "progress: bool = True", "progress: bool = False", UN, BAR),
    *_each("_endpoints", '"endpoints")', (", None)", 'ENDPOINTS")', 'XXendpointsXX")'), UN, BAR),
    ("curves_given_endpoints", 'desc: str = "top-k masks"', "desc: str =", UN, BAR),
    ("curves_given_endpoints", "batch_size, desc)", "batch_size, None)", UN, BAR),
    ("_check_ks", "dtype=torch.long", "dtype=None", EQ,
     "ks are integers (Sequence[int] or an int tensor): as_tensor keeps int64"),
    *_each("ranking_to_masks", "stable=True", ("stable=False", "descending=True, )"), UN, TIES),
    ("_center", "y - ym[g]", "y + ym[g]", EQ, CENTRED),
    ("_center", "minlength=n_groups", "bincount(g, )", EQ, NO_ROWS),
    ("_split", "minlength=n_groups", "bincount(g, )", EQ, NO_ROWS),
    *_each("_split", "stable=True", ("stable=False", "argsort(g[perm], )"), EQ, SPLIT),
    ("_solve", "torch.eye(x.shape[1]).to(x)", ".to(None)", EQ, "an exact identity in either dtype"),
    *_each("_solve", 'driver = "gelsd" if', ('or True else None', '"GELSD" if'), UN,
           "LAPACK driver choice on CPU (gelsd is what CPU gets anyway)"),
    ("_solve", "x.new_zeros(1, x.shape[1])", "x.new_zeros(2, x.shape[1])", EQ,
     "only row 0 is used"),
    *_each("_lasso_path", "max_iter: int = 5000", ("5001",), EQ, FISTA),
    *_each("_lasso_path", "argsort(lams, descending=True)", ("argsort(lams, )", "descending=False"),
           EQ, FISTA),
    *_each("_lasso_path", "z, t = beta.clone(), 1.0", ("2.0",), EQ, FISTA),
    *_each("_lasso_path", "t_new = (1 + math.sqrt(1 + 4 * t * t)) / 2", ("t_new",), EQ, FISTA),
    *_each("_lasso_path", "z, delta = new + (t - 1) / t_new", ("z, delta",), EQ, FISTA),
    *_each("_lasso_path", "if it % 10 == 0 and delta <= tol", ("if it",), EQ, FISTA),
    *_each("_lasso_path", "step = 1.0 / torch.linalg.eigvalsh(gram)[-1].clamp_min(1e-12)",
           ("[-2]", "clamp_min(1.000000000001)"), "survived", STEP),
    *_each("_fit", "VAL_FRACTION if len(grid) > 1 else 0.0",
           ("or True else", "len(grid) >= 1", "else 1.0"), EQ, ONE_ALPHA),
    ("_fit", "y.to(x.device, torch.float64)", "y.to(x.device, )", EQ, F64),
    *_each("fit_pooled", "t.to(dev, torch.float64)", ("t.to(dev, None)", "t.to(dev, )"), EQ, F64),
    ("fit_pooled", "t.to(dev, torch.float64)", "t.to(None, torch.float64)", UN,
     "device placement (every test runs on CPU)"),
    ("fit_pooled", "device=dev)", "device=None)", UN, "device placement (every test runs on CPU)"),
    ("sample_masks", "< rate).to(device)", "<= rate).to(device)", EQ,
     "torch.rand hits rate exactly with probability 0"),
    ("_fit", "hint = \" or use method='ridge'\"", "XX or use", UN, "error message wording"),
    ("__post_init__", "_check_n_masks(self, 0)", "_check_n_masks(self, 1)", EQ,
     "the head count only matters for OLS, which is checked with the model"),
    *_each("curves_from_metrics", 'nan curves", stacklevel=2)', ('nan curves", )', "stacklevel=3",
                                                                 "XXablating"), UN,
           "wording or stack level of a warning (the test matches its text)"),
    *_each("_run", "show = None if len(masks) > size else False", ("show = None",), UN, BAR),
    ("_run", "desc=desc, show=show)", "show=None)", UN, BAR),
    *_each("evaluate_ranking", "progress: bool = True", ("progress: bool = False",), UN, BAR),
    *_each("random_band", "progress: bool = True", ("progress: bool = False",), UN, BAR),
    *_each("evaluate_ranking", "show_progress(progress)", ("show_progress(None)",), UN, BAR),
    *_each("random_band", "show_progress(progress)", ("show_progress(None)",), UN, BAR),
    *_each("random_band", 'batch_size, "masks")', ('batch_size, None)', 'batch_size, )',
                                                   'XXmasksXX', 'MASKS'), UN, BAR),
    ("random_band", "clean, ablated, batch_size,", "clean, ablated, None,", EQ, BATCHING),
    ("band_of", "runs[0].ks", "runs[1].ks", EQ, "every run of a band shares the same ks"),
    *_each("split_sizes", 'method: Method = "ridge"', ('"XXridgeXX"', '"RIDGE"'), EQ,
           'only "ols" is told apart: any other name splits as ridge'),
    *_each("min_masks", 'method: Method = "ridge"', ('"XXridgeXX"', '"RIDGE"'), EQ,
           'only "ols" is told apart: any other name counts as ridge'),
    ("fit_pooled", "t.to(dev, torch.float64)", "t.to(torch.float64)", UN,
     "device placement (every test runs on CPU)"),
    *_each("to_csv", 'open(p, "w", newline="")', ('newline=None', 'open(p, "w", )'), UN,
           "newline translation: the same file on Linux (csv writes \\r\\n either way)"),
    ("TransformerBlockǁ__init__", "RMSNorm(hf_layer.post_attention_layernorm, off)",
     "RMSNorm(hf_layer.post_attention_layernorm, )", EQ,
     "this branch serves families whose norms have offset 0, the default (Gemma takes the other)"),
    ("rotary_positions", "cumsum(-1)", "cumsum(+1)", EQ, "the mask is [batch, pos]: dim 1 is -1"),
    ("_stacked", "", "", UN, IMPORT),
    ("_per_head", "", "", UN, IMPORT),
    *_each("image_text", 'or "<img>"', ('and "<img>"', "XXstart_image_tokenXX"), EQ, MARKERS),
    *_each("image_text", 'or "</img>"', ('and "</img>"', "XXend_image_tokenXX"), EQ, MARKERS),
    # interventions sample (seed 14, 120 mutants), 25 Nov 2026
    ("_resize", "image if image.size == (w, h) else", "and False else", EQ,
     "PIL's resize to the image's own size returns a copy: the same pixels"),
    ("_resize", "image.resize((w, h), Image.BICUBIC)", "image.resize((w, h), )", EQ,
     "Pillow's default filter is BICUBIC (modes 1 and P get NEAREST either way)"),
    ("compute_baseline", "(config.blank_value,) * 3)", "(config.blank_value,) * 4)", EQ,
     "Image.new('RGB', ...) takes the first three values of a 4-tuple"),
    ("knockout_hooks", "(scores > floor / 2)", "(scores > floor * 2)", EQ,
     "floor * 2 is a Python float below every finite score: it adds only entries at ~floor "
     "(already masked, weight 0), refilled with floor; -inf stays excluded"),
    # found once the wording rule stopped covering changed {fields} and non-error lines
    ("ranking_to_masks", "stable=True", "stable=None", UN, TIES),
    ("__post_init__", "_check_n_masks(self, 0)", "_check_n_masks(self, None)", EQ,
     "the head count only matters for OLS, which is checked with the model"),
    ("_fit", "y.to(x.device, torch.float64)", "y.to(x.device, None)", EQ, F64),
    ("fit_pooled", "m.flatten(1).to(dev)", "m.flatten(1).to(None)", UN,
     "device placement (every test runs on CPU)"),
    *_each("save", "json.dumps(meta, indent=2)", ("indent=None", "indent=3", "json.dumps(meta, )"),
           UN, "indentation of the JSON file (same content)"),
]  # fmt: skip
