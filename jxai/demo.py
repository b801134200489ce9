"""``jxai demo``: find a Clever Hans predictor with LRP, end to end, on a laptop CPU.

    jxai demo [--out DIR] [--n-images N] [--retrain] [--methods all|m1,m2,...]
    jxai demo --transformer [...]   (the text twin: `jxai.demo_transformer`)

1. Loads the bias-detection CNN shipped in ``jxai/models/checkpoints/clever_hans_cnn`` (or trains
   it, ~1 minute, with ``--retrain`` or when the checkpoint is missing). It learned the synthetic
   Clever Hans images (`jxai.models.clever_hans`), where a corner marker predicts the class
   perfectly during training.
2. Measures accuracy on held-out images with the marker in its class's corner (biased) and in a
   random corner (unbiased): a model that took the shortcut drops to chance.
3. Explains held-out images with every registered method (`jxai.list_methods`); a method that
   cannot run on this network (CAM needs global average pooling...) is skipped with a note.
4. For each method, the share of positive relevance on the marker and on the object (ground-truth
   masks), and the enrichment (share / area share).
5. Writes into ``--out`` (default ``./demo_out``), each file atomically and with the permissions
   of a plain ``open()`` (0644 under the usual umask 022):

   * ``comparison.png``: a selection of methods from every family, side by side;
   * one figure per family: ``lrp_rules.png`` (one rule for every layer, deep Taylor),
     ``lrp_composites.png`` (different rules for different layers), ``gradients.png`` (gradient,
     input × gradient, IG, SmoothGrad, ..., guided backprop, PatternNet, occlusion), ``cam.png``
     (CAM, Grad-CAM, Grad-CAM++, LayerCAM, guided Grad-CAM, Score-CAM, SISE), ``shapley.png``
     (DeepLIFT, DeepSHAP, exact/kernel/sampled Shapley values, RISE); a family none of whose methods ran is
     left out. Rows are images, the input comes first with the marker and the object outlined;
     each map is divided by its Σ|R| and a row shares one symmetric colour scale
     (`jxai.plot.family_figure`), so the maps of one image are comparable across methods;
   * ``report.md``, ``report.json`` and ``attributions.npz`` (every map, the images and masks).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from jxai._reporting import why_skipped  # noqa: F401  (re-exported: jxai.demo.why_skipped)
from jxai.contract import FAMILIES as METHOD_FAMILIES
from jxai.contract import get_method

__all__ = ["main", "relevance_shares", "why_skipped"]

DEFAULT_OUT = "demo_out"
N_HELD_OUT = 400
# Seeds of the held-out images: the training recipe used seed 0 for training.
DATA_SEED = 0


def _checkpoint_path() -> Path:
    """The shipped checkpoint, inside the installed ``jxai.models`` package."""
    import jxai.models

    return Path(jxai.models.__file__).resolve().parent / "checkpoints" / "clever_hans_cnn"


def relevance_shares(attribution, marker_mask, object_mask) -> dict[str, np.ndarray]:
    """Per-image shares of positive relevance on the marker, on the object and elsewhere.

    ``share_region = Σ_{p ∈ region} max(R_p, 0) / Σ_p max(R_p, 0)`` with R summed over channels;
    an image whose map has no positive relevance gets shares of 0.

    Args:
      attribution: (B, H, W) or (B, H, W, C) relevance.
      marker_mask, object_mask: (B, H, W) bool ground-truth masks.

    Returns:
      ``{"marker": (B,), "object": (B,), "rest": (B,)}`` arrays.
    """
    relevance = np.asarray(attribution, np.float64)
    if relevance.ndim == 4:
        relevance = relevance.sum(-1)
    if relevance.shape != np.shape(marker_mask):
        raise ValueError(
            f"attribution of shape {np.shape(attribution)} does not match the masks "
            f"{np.shape(marker_mask)}; expected (B, H, W) or (B, H, W, C)"
        )
    positive = np.maximum(relevance, 0.0)
    total = positive.sum((1, 2))
    safe = np.where(total > 0, total, 1.0)
    marker = (positive * marker_mask).sum((1, 2)) / safe
    obj = (positive * object_mask).sum((1, 2)) / safe
    rest = np.where(total > 0, 1.0 - marker - obj, 0.0)
    return {"marker": marker, "object": obj, "rest": rest}


def _atomic(path: Path, write) -> None:
    """Write ``path`` atomically with `jxai.io.atomic_write`: ``write(binary file object)``.

    The temporary file is created with a plain ``open()``, so the result gets the umask's
    permissions (0644 under umask 022), not ``tempfile.mkstemp``'s 0600.
    """
    from jxai import io as jio

    jio.atomic_write(path, write)


def _parser() -> argparse.ArgumentParser:
    from jxai.cli import ArgumentParser  # one-line usage errors, like every jxai command

    parser = ArgumentParser(
        prog="jxai demo",
        description="Train or load the bias-detection CNN, explain held-out Clever Hans images "
        "with every method and report how much relevance each puts on the shortcut marker.",
    )
    parser.add_argument("--transformer", action="store_true",
                        help="the text twin instead: a tiny BERT trained on marker-token "
                        "sequences (see jxai demo --transformer --help)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="output folder (default ./demo_out)")
    parser.add_argument("--n-images", type=int, default=6,
                        help="held-out images to explain, half per class (default 6)")
    parser.add_argument("--retrain", action="store_true",
                        help="train the CNN instead of loading the shipped checkpoint")
    parser.add_argument("--methods", default="all",
                        help="'all' (every registered method) or a comma-separated list")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs (with --retrain)")
    parser.add_argument("--train-size", type=int, default=2000,
                        help="training images (with --retrain)")
    parser.add_argument("--checkpoint", default=None,
                        help="load this checkpoint instead of the shipped one")
    return parser


def _say(text: str) -> None:
    print(text, flush=True)


def _load_or_train(args, out: Path):
    from jxai.models import checkpoint, recipes

    path = Path(args.checkpoint) if args.checkpoint else _checkpoint_path()
    if not args.retrain and (path / "network.json").is_file():
        _say(f"[1/5] loading the bias-detection CNN from {path}")
        return checkpoint.load(path), {"source": str(path)}
    reason = "--retrain" if args.retrain else f"no checkpoint at {path}"
    _say(f"[1/5] training the bias-detection CNN ({reason}): {args.train_size} images, "
         f"{args.epochs} epochs")
    network, scores = recipes.clever_hans_cnn(
        epochs=args.epochs, n_train=args.train_size, seed=DATA_SEED,
        log=lambda line: _say("      " + line))
    saved = checkpoint.save(out / "checkpoint", network,
                            extra={"scores": {k: v for k, v in scores.items() if k != "history"}})
    _say(f"      saved the checkpoint to {saved}")
    return network, {"source": "trained", "checkpoint": str(saved)}


def _select(held_out, n: int):
    """``n`` held-out images, alternating the classes."""
    per_class = [np.flatnonzero(held_out.y == c) for c in (0, 1)]
    order = [per_class[i % 2][i // 2] for i in range(n)]
    return held_out.take(np.asarray(order))


def _method_params(train_images: np.ndarray, network=None) -> dict[str, dict[str, Any]]:
    """Parameters for the methods that need them, so that every registered method runs.

    The images lie in [0, 1] (the bounds of the box rules); the reference samples of expected
    gradients and gradient SHAP are training images; ``lrp.alpha_beta`` takes any α with
    α − β = 1 (1.5 sits between the α1β0 and α2β1 presets); ``lrp`` runs a user `Composite`:
    flat on the first layer, γ on the convolutions, ε on the dense layers. DeepSHAP averages
    over the same training images; exact Shapley values take a 3 × 3 grid of superpixels (512
    coalitions: the default 4 × 4 grid's 65,536 take a minute); PatternNet and
    PatternAttribution use patterns fitted on the training images (given ``network``).
    """
    import flax.linen as nn

    import jxai
    from jxai.rules import Epsilon, Flat, Gamma

    baselines = train_images[:16]
    params = {
        "deep_taylor.bounded": {"low": 0.0, "high": 1.0},
        "lrp.epsilon_gamma_box": {"low": 0.0, "high": 1.0},
        "lrp.alpha_beta": {"alpha": 1.5},
        "lrp": {"composite": jxai.Composite([(jxai.first_layer, Flat()), (nn.Conv, Gamma(0.25)),
                                             (nn.Dense, Epsilon(0.25))])},
        "expected_gradients": {"baselines": baselines},
        "gradient_shap": {"baselines": baselines},
        "deep_shap": {"background": baselines},
        "shapley_values": {"grid": (3, 3)},
    }
    if network is not None:
        patterns = jxai.patterns.fit(network, train_images)
        params["pattern.net"] = params["pattern.attribution"] = {"patterns": patterns}
    return params


# What `_method_params` passes, for the report.
PARAM_NOTES = {
    "deep_taylor.bounded": "low=0, high=1 (the images' range)",
    "lrp.epsilon_gamma_box": "low=0, high=1 (the images' range)",
    "lrp.alpha_beta": "alpha=1.5 (so beta=0.5)",
    "lrp": "composite=Composite([(first_layer, Flat()), (nn.Conv, Gamma(0.25)), "
           "(nn.Dense, Epsilon(0.25))])",
    "expected_gradients": "baselines=16 training images",
    "gradient_shap": "baselines=16 training images",
    "deep_shap": "background=16 training images",
    "shapley_values": "grid=(3, 3) superpixels (512 coalitions)",
    "pattern.net": "patterns fitted on the 16 training images (jxai.patterns.fit)",
    "pattern.attribution": "patterns fitted on the 16 training images (jxai.patterns.fit)",
}


def _methods(spec: str) -> list[str]:
    """The methods to run, LRP first (the point of the demo), each group alphabetical."""
    import jxai

    if spec.strip() == "all":
        names = list(jxai.list_methods())
        return sorted(names, key=lambda m: (not _is_lrp(m), m))
    return [m.strip() for m in spec.split(",") if m.strip()]


def _explain_all(network, batch, methods, params):
    import jax

    import jxai

    results, skipped = {}, {}
    key = jax.random.key(0)
    width = max(len(m) for m in methods)
    for i, method in enumerate(methods, start=1):
        start = time.perf_counter()
        try:
            attribution = np.asarray(jxai.explain(network, batch.x, method, key=key,
                                                  **params.get(method, {})))
            shares = relevance_shares(attribution, batch.marker_mask, batch.object_mask)
        except Exception as error:  # a method that does not apply to this network
            skipped[method] = why_skipped(error, method)
            _say(f"      [{i:>2}/{len(methods)}] {method:<{width}}  skipped: {skipped[method]}")
            continue
        seconds = time.perf_counter() - start
        results[method] = {"attribution": attribution, "shares": shares, "seconds": seconds}
        _say(f"      [{i:>2}/{len(methods)}] {method:<{width}}  {seconds:5.1f} s   "
             f"marker {shares['marker'].mean():6.1%}   object {shares['object'].mean():6.1%}")
    return results, skipped


def _is_lrp(method: str) -> bool:
    return get_method(method).family == "lrp"


# Column titles: short enough for a 1.45-inch cell, the registry name recoverable from the
# report. iNNvestigate's "_IB" (ignore bias) is spelled out.
LABELS = {
    "deep_taylor": "deep Taylor",
    "deep_taylor.bounded": "deep Taylor\nbounded [0, 1]",
    "lrp": "your Composite:\nflat, γ, ε",
    "lrp.z": "LRP-0 (z)",
    "lrp.epsilon": "LRP-ε",
    "lrp.w_square": "LRP-w²",
    "lrp.flat": "LRP-flat",
    "lrp.alpha_beta": "LRP-αβ\nα=1.5, β=0.5",
    "lrp.alpha_1_beta_0": "LRP-α1β0",
    "lrp.alpha_1_beta_0_IB": "LRP-α1β0\nno bias",
    "lrp.alpha_2_beta_1": "LRP-α2β1",
    "lrp.alpha_2_beta_1_IB": "LRP-α2β1\nno bias",
    "lrp.z_plus": "LRP-z⁺",
    "lrp.z_plus_fast": "LRP-z⁺ fast",
    "lrp.epsilon_plus": "ε + z⁺",
    "lrp.epsilon_plus_flat": "ε + z⁺ + flat",
    "lrp.epsilon_alpha2_beta1": "ε + α2β1",
    "lrp.epsilon_alpha2_beta1_flat": "ε + α2β1 + flat",
    "lrp.epsilon_gamma_box": "ε + γ + box",
    "lrp.excitation_backprop": "excitation\nbackprop",
    "lrp.sequential_preset_a": "preset A",
    "lrp.sequential_preset_a_flat": "preset A + flat",
    "lrp.sequential_preset_b": "preset B",
    "lrp.sequential_preset_b_flat": "preset B + flat",
    "gradient": "gradient",
    "input_t_gradient": "input × gradient",
    "integrated_gradients": "integrated\ngradients",
    "expected_gradients": "expected\ngradients",
    "gradient_shap": "gradient SHAP",
    "smoothgrad": "SmoothGrad",
    "smoothgrad_sq": "SmoothGrad²",
    "vargrad": "VarGrad",
    "guided_backprop": "guided\nbackprop",
    "deconvnet": "DeconvNet",
    "occlusion": "occlusion",
    "cam": "CAM",
    "grad_cam": "Grad-CAM",
    "grad_cam_pp": "Grad-CAM++",
    "layer_cam": "LayerCAM",
    "guided_grad_cam": "guided\nGrad-CAM",
    "score_cam": "Score-CAM",
    "sise": "SISE",
    "lrp.attn_lrp": "AttnLRP",
    "lrp.cp_lrp": "CP-LRP",
    "deeplift": "DeepLIFT",
    "deep_shap": "DeepSHAP",
    "shapley_values": "Shapley\n(exact, 3×3)",
    "kernel_shap": "KernelSHAP",
    "shapley_sampling": "Shapley\nsampling",
    "rise": "RISE",
    "pattern.net": "PatternNet",
    "pattern.attribution": "Pattern-\nAttribution",
}

# (file, title, methods in column order); a method in none of them goes to the figure of its
# registered family (`_family`, `FIGURE_OF_FAMILY`).
FAMILIES = (
    ("lrp_rules.png", "LRP with one rule for every layer, and deep Taylor",
     ["lrp.z", "lrp.epsilon", "lrp.alpha_beta", "lrp.alpha_1_beta_0", "lrp.alpha_1_beta_0_IB",
      "lrp.alpha_2_beta_1", "lrp.alpha_2_beta_1_IB", "lrp.z_plus", "lrp.z_plus_fast",
      "lrp.w_square", "lrp.flat", "deep_taylor", "deep_taylor.bounded"]),
    ("lrp_composites.png", "LRP composites: different rules for different layers",
     ["lrp.epsilon_plus", "lrp.epsilon_plus_flat", "lrp.epsilon_alpha2_beta1",
      "lrp.epsilon_alpha2_beta1_flat", "lrp.epsilon_gamma_box", "lrp.sequential_preset_a",
      "lrp.sequential_preset_a_flat", "lrp.sequential_preset_b", "lrp.sequential_preset_b_flat",
      "lrp.excitation_backprop", "lrp"]),
    ("gradients.png", "Gradients, path and noise averages, modified backprop, occlusion",
     ["gradient", "input_t_gradient", "integrated_gradients", "expected_gradients",
      "gradient_shap", "smoothgrad", "smoothgrad_sq", "vargrad", "guided_backprop", "deconvnet",
      "pattern.net", "pattern.attribution", "occlusion"]),
    ("cam.png", "Class activation maps",
     ["cam", "grad_cam", "grad_cam_pp", "layer_cam", "guided_grad_cam", "score_cam", "sise"]),
    ("shapley.png", "Shapley values, DeepLIFT and random masks",
     ["deeplift", "deep_shap", "shapley_values", "kernel_shap", "shapley_sampling", "rise"]),
)
# comparison.png: one or two of each family, the headline picture.
SELECTION = ("lrp.epsilon", "lrp.alpha_2_beta_1", "lrp.epsilon_plus_flat", "lrp.z_plus",
             "gradient", "integrated_gradients", "smoothgrad", "occlusion", "grad_cam")
CAPTION = ("Rows: held-out images, true class → predicted class (probability). Under each "
           "column: the share of positive relevance on the marker and on the object, mean over "
           "the images (as in report.md).")


# The figure of each registered family (`jxai.contract.FAMILIES`), for methods FAMILIES does not
# place: a user's composite or a method registered later.
FIGURE_OF_FAMILY = {"lrp": "lrp_composites.png", "cam": "cam.png", "shapley": "shapley.png",
                    "perturbation": "shapley.png", "gradient": "gradients.png",
                    "other": "gradients.png"}
assert set(FIGURE_OF_FAMILY) == set(METHOD_FAMILIES), "a registered family without a figure"


def _family(method: str) -> str:
    """The family figure a method appears in: its `FAMILIES` entry, else its registered
    family's (`jxai.get_method(method).family`)."""
    for file, _, members in FAMILIES:
        if method in members:
            return file
    return FIGURE_OF_FAMILY.get(get_method(method).family, "gradients.png")


def _figure_groups(methods: list[str]) -> dict[str, tuple[str, list[str]]]:
    """``{file: (title, methods)}`` for comparison.png and each family of which a method ran."""
    selection = [m for m in SELECTION if m in methods] or methods[: len(SELECTION)]
    groups = {"comparison.png": ("Where the relevance goes: a selection from every family",
                                 selection)}
    for file, title, members in FAMILIES:
        ran = [m for m in members if m in methods]
        ran += [m for m in methods if m not in members and _family(m) == file]
        if ran:
            groups[file] = (title, ran)
    return groups


def _write_figures(out: Path, results, skipped, batch, row_labels) -> dict[str, list[str]]:
    """One `jxai.plot.family_figure` per group, written atomically; ``{file: methods}``.

    A family's caption names its members that did not run (why: report.md).
    """
    from jxai import plot

    groups = _figure_groups(list(results))
    for file, (title, methods) in groups.items():
        missing = [LABELS.get(m, m).replace("\n", " ") for m in skipped if _family(m) == file]
        caption = CAPTION + (f" Not run on this network: {', '.join(missing)} (see report.md)."
                             if missing and file != "comparison.png" else "")
        shares = [results[m]["shares"] for m in methods]
        fig = plot.family_figure(
            {LABELS.get(m, m): results[m]["attribution"] for m in methods}, batch.x,
            row_labels=row_labels,
            regions={"marker (the shortcut)": batch.marker_mask, "object": batch.object_mask},
            column_notes=[f"marker {s['marker'].mean():.0%}\nobject {s['object'].mean():.0%}"
                          for s in shares],
            gamma=0.5, title=title, caption=caption)
        _atomic(out / file, lambda f, fig=fig: fig.savefig(f, format="png", dpi=100))
    return {file: methods for file, (_, methods) in groups.items()}


def _summary(results, batch) -> dict[str, Any]:
    area_marker = float(batch.marker_mask.mean())
    area_object = float(batch.object_mask.mean())
    methods = {}
    for name, result in results.items():
        shares = result["shares"]
        marker, obj = float(shares["marker"].mean()), float(shares["object"].mean())
        methods[name] = {
            "marker_share": marker,
            "object_share": obj,
            "rest_share": float(shares["rest"].mean()),
            "marker_enrichment": marker / area_marker,
            "object_enrichment": obj / area_object,
            "marker_dominant": marker > obj,
            "per_image_marker_share": [float(v) for v in shares["marker"]],
            "per_image_object_share": [float(v) for v in shares["object"]],
            "seconds": result["seconds"],
        }
    lrp = [m for m in methods if _is_lrp(m)]
    lrp_marker = float(np.median([methods[m]["marker_share"] for m in lrp])) if lrp else None
    lrp_object = float(np.median([methods[m]["object_share"] for m in lrp])) if lrp else None
    return {
        "area_share": {"marker": area_marker, "object": area_object},
        "methods": methods,
        "lrp": {
            "methods": lrp,
            "median_marker_share": lrp_marker,
            "median_object_share": lrp_object,
            "marker_dominant": [m for m in lrp if methods[m]["marker_dominant"]],
            "marker_enriched": [m for m in lrp if methods[m]["marker_enrichment"]
                                > methods[m]["object_enrichment"]],
            "median_marker_enrichment": float(np.median(
                [methods[m]["marker_enrichment"] for m in lrp])) if lrp else None,
            "median_object_enrichment": float(np.median(
                [methods[m]["object_enrichment"] for m in lrp])) if lrp else None,
            "exposes_shortcut": bool(lrp) and lrp_marker > lrp_object,
        },
    }


def _markdown(report: dict[str, Any]) -> str:
    acc = report["accuracy"]
    summary = report["summary"]
    area = summary["area_share"]
    lines = [
        "# jxai demo: a Clever Hans predictor under the microscope",
        "",
        f"Model: `{report['model']['name']}` ({report['model']['params']:,} parameters, "
        f"{report['model']['source']}).",
        "",
        "## Accuracy on held-out images",
        "",
        "| test set | accuracy |",
        "|---|---|",
        f"| marker in its class's corner (as in training) | {acc['biased']:.3f} |",
        f"| marker in a random corner | {acc['unbiased']:.3f} |",
        f"| predictions that follow the marker (random corner) | {acc['follows_marker']:.3f} |",
        "",
        f"## Where the positive relevance goes ({report['n_images']} images)",
        "",
        f"The marker covers {area['marker']:.1%} of the image, the object {area['object']:.1%}. "
        "Enrichment = share of positive relevance / share of area.",
        "",
        "| method | marker | object | elsewhere | marker enrichment | object enrichment | s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in summary["methods"].items():
        lines.append(
            f"| {name} | {m['marker_share']:.1%} | {m['object_share']:.1%} | "
            f"{m['rest_share']:.1%} | {m['marker_enrichment']:.1f}× | "
            f"{m['object_enrichment']:.1f}× | {m['seconds']:.1f} |"
        )
    given = [m for m in summary["methods"] if m in PARAM_NOTES]
    if given:
        lines += ["", "Parameters given to the methods that need them:", ""]
        lines += [f"- `{m}`: {PARAM_NOTES[m]}" for m in given]
    if report["skipped"]:
        lines += ["", "Not run on this network:", ""]
        lines += [f"- `{name}` {why}" if why.startswith("needs") else f"- `{name}`: {why}"
                  for name, why in report["skipped"].items()]
    if report.get("figures"):
        lines += ["", "## Figures", "",
                  "Rows are the images (input first, marker and object outlined), columns the "
                  "methods. Each map is divided by its total |relevance| and one symmetric colour "
                  "scale is shared along a row, so a darker cell holds more of that method's "
                  "relevance in fewer pixels; the colour intensity follows the square root of the "
                  "share, which keeps the weak relevance on the object visible next to the "
                  "marker's.", ""]
        lines += [f"- `{file}`: {', '.join(f'`{m}`' for m in methods)}"
                  for file, methods in report["figures"].items()]
    lines += ["", "## Verdict", "", report["verdict"], ""]
    return "\n".join(lines)


def _verdict(accuracy, summary) -> str:
    lrp = summary["lrp"]
    parts = [
        f"The CNN is right {accuracy['biased']:.0%} of the time when the marker sits in its "
        f"class's corner and {accuracy['unbiased']:.0%} when the marker is placed at random "
        f"({accuracy['follows_marker']:.0%} of those predictions follow the marker)."
    ]
    if lrp["methods"]:
        n_dom = len(lrp["marker_dominant"])
        if lrp["exposes_shortcut"]:
            parts.append(
                f"LRP exposes the shortcut: across {len(lrp['methods'])} LRP variants the median "
                f"share of positive relevance on the marker is {lrp['median_marker_share']:.0%} "
                f"against {lrp['median_object_share']:.0%} on the object, although the marker "
                f"covers only {summary['area_share']['marker']:.1%} of the image; {n_dom} of "
                f"{len(lrp['methods'])} variants put more relevance on the marker than on the "
                f"object, and {len(lrp['marker_enriched'])} of {len(lrp['methods'])} concentrate "
                f"it more densely there (median enrichment "
                f"{lrp['median_marker_enrichment']:.0f}× on the marker, "
                f"{lrp['median_object_enrichment']:.1f}× on the object)."
            )
        else:
            parts.append(
                f"LRP does not single out the marker here: median marker share "
                f"{lrp['median_marker_share']:.0%} vs object {lrp['median_object_share']:.0%}."
            )
    return " ".join(parts)


def _check_arguments(args) -> None:
    """The flags, before anything is loaded or trained: a one-line ValueError naming the flag."""
    from jxai._params import check_method

    for flag, value in (("--n-images", args.n_images), ("--epochs", args.epochs),
                        ("--train-size", args.train_size)):
        if value < 1:
            raise ValueError(f"{flag} {value}: expected an integer >= 1")
    if args.methods.strip() != "all":
        if not _methods(args.methods):
            raise ValueError(f"--methods {args.methods!r}: name at least one method, or all")
        for name in _methods(args.methods):
            check_method(name)
    if args.checkpoint and not args.retrain and not (Path(args.checkpoint) / "network.json"
                                                     ).is_file():
        raise ValueError(f"--checkpoint {args.checkpoint}: no network.json there; pass a "
                         "folder written by jxai.save_network, or --retrain")


def main(argv: list[str] | None = None) -> int:
    from jxai.cli import parse_args, usage_error, writable_folder

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--transformer" in argv:  # the text twin: `jxai.demo_transformer`, its own flags
        from jxai import demo_transformer

        return demo_transformer.main([a for a in argv if a != "--transformer"])
    args = parse_args(_parser(), argv)
    if isinstance(args, int):  # --help, or a flag argparse refused (one line printed)
        return args
    try:
        _check_arguments(args)
        writable_folder(args.out)
    except ValueError as err:
        return usage_error("jxai demo", err)
    start = time.perf_counter()
    out = Path(args.out)

    from jxai.models import data, train

    network, source = _load_or_train(args, out)

    _say(f"[2/5] measuring accuracy on {N_HELD_OUT} + {N_HELD_OUT} held-out images")
    train_set, biased, unbiased = data.clever_hans(n_train=16, n_test=N_HELD_OUT, seed=DATA_SEED)
    accuracy = {
        "biased": train.evaluate(network, biased.x, biased.y)["accuracy"],
        "unbiased": train.evaluate(network, unbiased.x, unbiased.y)["accuracy"],
    }
    predicted = train.predict(network, unbiased.x).argmax(-1)
    accuracy["follows_marker"] = float(np.mean(predicted == unbiased.marker_class))
    _say(f"      marker in its class's corner: {accuracy['biased']:.3f}   random corner: "
         f"{accuracy['unbiased']:.3f}   follows the marker: {accuracy['follows_marker']:.3f}")

    batch = _select(biased, args.n_images)
    methods = _methods(args.methods)
    _say(f"[3/5] explaining {len(batch)} held-out images with {len(methods)} methods")
    results, skipped = _explain_all(network, batch, methods, _method_params(train_set.x, network))
    if not results:
        _say("jxai demo: no method could explain the network; nothing to report")
        return 1

    _say("[4/5] scoring relevance on the marker and on the object")
    summary = _summary(results, batch)
    probabilities = train.predict(network, batch.x)
    classes = network.metadata.get("classes", ["ring", "cross"])
    row_labels = [
        f"{classes[y]}\n→ {classes[p.argmax()]} ({p.max():.2f})"
        for y, p in zip(batch.y, probabilities, strict=True)
    ]
    report = {
        "model": {"name": network.metadata.get("name"), "params": network.param_count(),
                  **source},
        "accuracy": accuracy,
        "n_images": len(batch),
        "images": {"labels": batch.y.tolist(), "marker_class": batch.marker_class.tolist(),
                   "predicted": probabilities.argmax(-1).tolist()},
        "summary": summary,
        "skipped": skipped,
    }
    report["verdict"] = _verdict(accuracy, summary)

    _say(f"[5/5] writing the figures and the report to {out}")
    figures = _write_figures(out, results, skipped, batch, row_labels)
    attributions = {name: r["attribution"] for name, r in results.items()}
    _atomic(out / "attributions.npz",
            lambda f: np.savez_compressed(f, images=batch.x, labels=batch.y,
                                          marker_mask=batch.marker_mask,
                                          object_mask=batch.object_mask,
                                          **attributions))
    report["seconds"] = round(time.perf_counter() - start, 1)
    report["figures"] = figures
    report["outputs"] = [*figures, "report.md", "report.json", "attributions.npz"]
    _atomic(out / "report.json",
            lambda f: f.write((json.dumps(report, indent=2) + "\n").encode()))
    _atomic(out / "report.md", lambda f: f.write(_markdown(report).encode()))
    _say("")
    _say(report["verdict"])
    _say(f"done in {report['seconds']:.0f} s: {out / 'report.md'}, figures "
         f"{', '.join(str(out / f) for f in figures)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
