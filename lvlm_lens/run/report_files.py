"""The files the report is drawn from: rankings, curves, example views, summary; ``lvlm-lens
report`` reads them back (a damaged one is named with what to rerun)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor

from lvlm_lens.attribution.curves import Curves, RandomBand
from lvlm_lens.attribution.results import META_FILE, TENSORS_FILE, AttributionResult
from lvlm_lens.files import atomic_json, atomic_save, atomic_write
from lvlm_lens.viz.attention_maps import load_view_image
from lvlm_lens.viz.figures import ExampleView
from lvlm_lens.viz.report import ReportData


# what the report shows -----------------------------------------------------------------------
def save_rankings(path: Path, rankings: dict[str, Tensor]) -> None:
    """Rankings as one safetensors file (names as keys, their order in the metadata)."""
    meta = {"names": json.dumps(list(rankings))}
    atomic_save({k: v.float() for k, v in rankings.items()}, path, meta)


def load_rankings(path: Path) -> dict[str, Tensor]:
    """Inverse of :func:`save_rankings`, in the order they were saved."""
    with safe_open(str(path), "pt") as f:
        names = json.loads((f.metadata() or {}).get("names", "[]")) or sorted(f.keys())
        return {n: f.get_tensor(n) for n in names}


CURVE_FIELDS = ("ks", "faithfulness", "completeness", "f_values", "g_values")
BAND_FIELDS = ("ks", "faithfulness", "completeness", "all_faithfulness", "all_completeness")


def save_curves(path: Path, curves: dict[str, Curves], band: RandomBand | None) -> None:
    """Curves of every ranking and the random band, exactly (tensors + metadata)."""
    tensors = {f"{n}/{f}": getattr(c, f) for n, c in curves.items() for f in CURVE_FIELDS}
    tensors |= {f"{n}/{f}": torch.tensor(float(getattr(c, f)), dtype=torch.float64)
                for n, c in curves.items() for f in ("clean", "ablated")}  # fmt: skip
    if band is not None:
        tensors |= {f"random band/{f}": getattr(band, f) for f in BAND_FIELDS}
    meta = {"names": json.dumps(list(curves))}
    meta |= {"quantiles": json.dumps(list(band.quantiles))} if band is not None else {}
    atomic_save({k: torch.as_tensor(v) for k, v in tensors.items()}, path, meta)


def load_curves(path: Path) -> tuple[dict[str, Curves], RandomBand | None]:
    """Inverse of :func:`save_curves`; no file: no curves."""
    if not path.exists():
        return {}, None
    with safe_open(str(path), "pt") as f:
        meta, t = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    curves = {
        n: Curves(*(t[f"{n}/{f}"] for f in CURVE_FIELDS),
                  float(t[f"{n}/clean"]), float(t[f"{n}/ablated"]))  # fmt: skip
        for n in json.loads(meta["names"])
    }
    band = None
    if "quantiles" in meta:
        q = tuple(json.loads(meta["quantiles"]))
        band = RandomBand(t["random band/ks"], q, *(t[f"random band/{f}"] for f in BAND_FIELDS[1:]))
    return curves, band


def save_views(folder: Path, views: list[ExampleView]) -> None:
    """Example views: images as PNG, attention grids and object patches as safetensors."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors, index = {}, []
    for i, v in enumerate(views):
        atomic_write(folder / f"{i:02d}.png", lambda p, im=v.image: im.save(p, format="PNG"))
        att = v.patch_attention.items()
        tensors |= {f"{i}/{h}": torch.from_numpy(np.asarray(a)) for h, a in att}
        if v.object_patches is not None:
            tensors[f"{i}/object"] = torch.from_numpy(np.asarray(v.object_patches, bool))
        index.append({"label": v.label, "prediction": v.prediction,
                      "heads": list(v.patch_attention)})  # fmt: skip
    atomic_save(tensors, folder / "views.safetensors")
    atomic_json(index, folder / "views.json")


def load_views(folder: Path) -> list[ExampleView]:
    """Inverse of :func:`save_views`; no folder: no views (a damaged file is named)."""
    if not (folder / "views.json").exists():
        return []
    try:
        index = json.loads((folder / "views.json").read_text())
    except Exception as err:  # truncated, not JSON
        raise _damaged(folder / "views.json", err) from err
    try:
        t = load_file(str(folder / "views.safetensors"))
    except Exception as err:  # truncated, not safetensors
        raise _damaged(folder / "views.safetensors", err) from err
    views = []
    for i, v in enumerate(index):
        image = load_view_image(folder / f"{i:02d}.png")  # names the file if damaged
        att = {h: t[f"{i}/{h}"].numpy() for h in v["heads"]}
        obj = t[f"{i}/object"].numpy() if f"{i}/object" in t else None
        views.append(ExampleView(image, v["label"], v["prediction"], att, obj))
    return views


def save_report_inputs(out: Path, data: ReportData) -> None:
    """Everything :func:`load_report_inputs` needs besides the attribution (saved by the runner)."""
    if data.rankings:
        save_rankings(out / "rankings.safetensors", data.rankings)
    save_curves(out / "curves.safetensors", data.curves, data.random_band)
    save_views(out / "views", data.examples)
    atomic_json(data.summary | {"notes": data.notes}, out / "summary.json")


def _damaged(path: Path, err: Exception) -> ValueError:
    why = str(err).splitlines()[0] if str(err) else type(err).__name__
    return ValueError(
        f"{path} is damaged ({why}): run the same `lvlm-lens attribute` command again to "
        "rewrite it (its finished chunks are kept)"
    )


def _load_attribution(folder: Path) -> AttributionResult:
    """:meth:`AttributionResult.load`, naming the file of the folder that is damaged."""
    try:
        json.loads((folder / META_FILE).read_text())
    except Exception as err:
        raise _damaged(folder / META_FILE, err) from err
    try:
        return AttributionResult.load(folder)
    except Exception as err:
        raise _damaged(folder / TENSORS_FILE, err) from err


def load_report_inputs(out: Path) -> ReportData:
    """What the report of the run in ``out`` shows, read from its files; a damaged file is
    named with what to rerun (:class:`ValueError`)."""
    if not (out / "summary.json").exists():
        raise ValueError(f"{out} has no summary.json: run `lvlm-lens attribute --out {out}` first")
    loads = {
        "summary.json": lambda p: json.loads(p.read_text()),
        "rankings.safetensors": lambda p: load_rankings(p) if p.exists() else {},
        "curves.safetensors": load_curves,
        "attribution": _load_attribution,
        "views": load_views,
    }
    got = {}
    for name, load in loads.items():
        try:
            got[name] = load(out / name)
        except ValueError as err:
            if " is damaged (" in str(err):
                raise
            raise _damaged(out / name, err) from err
        except Exception as err:  # truncated, not JSON / safetensors, missing keys
            raise _damaged(out / name, err) from err
    summary, (curves, band) = got["summary.json"], got["curves.safetensors"]
    return ReportData(got["attribution"], got["rankings.safetensors"], curves, band,
                      got["views"], summary, summary.get("notes", []))  # fmt: skip
