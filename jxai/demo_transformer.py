"""``jxai demo --transformer``: the Clever Hans demo for transformers, text and images, offline,
in about a minute on a CPU.

    jxai demo --transformer [--out DIR] [--n-sequences N] [--train-size N] [--epochs N]
                            [--length T] [--vocab V] [--seed S]
                            [--n-images N] [--vit-train-size N] [--vit-epochs N] [--no-vit]

Text (a tiny BERT on marker tokens):

1. Generates marker sequences (`jxai.models.marker_tokens`): random filler tokens after a class
   token, and one marker token at a random position whose identity decides the label.
2. Trains the zoo's BERT (`jxai.models.get("bert", pretrained=False, ...)`, a tiny configuration:
   2 layers, hidden size 32, 2 heads) with optax (`jxai.models.train.fit`).
3. Measures its accuracy on held-out sequences and how often its prediction follows the marker
   when the marker is swapped for the other class's (the counterfactual).
4. Explains held-out sequences, for their true class, on the integer ids with AttnLRP
   (``lrp.attn_lrp``), gradient × input (``input_t_gradient``) and attention rollout
   (``attention_rollout``), and reports the share of each method's relevance on the marker
   (`marker_shares`), next to the share a uniform map would give (1/T), and the ABPC of
   removing tokens in each map's order (`jxai.metrics.token_perturbation`).

Images (a tiny ViT on the Clever Hans images, skipped with ``--no-vit``):

5. Trains the zoo's ViT (`jxai.models.clever_hans_vit`: 2 blocks, hidden size 32, 2 heads,
   8×8 patches on 64×64 images) on Clever Hans images whose corner tag predicts the class, and
   checks it took the shortcut: with the tag moved to the other class's corner (the same images
   otherwise) its prediction follows the tag.
6. Explains held-out images for their class with AttnLRP, gradient × input, attention rollout
   and Grad-CAM on the tokens entering the last block; reports the share of |relevance| on the
   tag (`region_shares`, the same definition as `marker_shares`) on the patch grid
   (`jxai.transformer.patch_relevance`) and per pixel, next to the uniform share (tag area /
   image area), and the ABPC of removing patches (`jxai.metrics.patch_perturbation`, a removed
   patch set to the image's mean).

Writes into ``--out`` (default ``./demo_transformer_out``), each file atomically:
``report.md``, ``report.json``, ``heatmaps.html`` (one row of coloured tokens per sequence and
method), ``heatmaps.png``, ``attributions.npz`` (the ids, labels, marker positions and every
map), ``vit_overlay.png`` (`jxai.plot.patch_overlay` of each method on the first images) and
``vit_attributions.npz`` (images, labels, tag masks, every ViT map per patch and per pixel).
"""

from __future__ import annotations

import html
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["METHODS", "VIT_METHODS", "main", "marker_shares", "region_shares", "token_names",
           "vit_faithfulness", "vit_maps"]

DEFAULT_OUT = "demo_transformer_out"
METHODS = ("lrp.attn_lrp", "input_t_gradient", "attention_rollout")
LABELS = {"lrp.attn_lrp": "AttnLRP", "input_t_gradient": "gradient × input",
          "attention_rollout": "attention rollout"}
N_HELD_OUT = 400
# The tiny BERT: enough to find one token among 16 in a few hundred optimiser steps.
BERT_CONFIG = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
               "intermediate_size": 64}
LEARNING_RATE = 3e-3
N_PICTURED = 4  # sequences in heatmaps.png (every explained sequence is in heatmaps.html)


def token_names(vocab: int) -> list[str]:
    """Display names of the ids: ``CLS``, ``M0``/``M1`` (the markers of class 0/1), fillers by
    number."""
    from jxai.models.marker_tokens import CLS, MARKERS

    special = {CLS: "CLS", MARKERS[0]: "M0", MARKERS[1]: "M1"}
    return [special.get(i, str(i)) for i in range(vocab)]


def marker_shares(relevance, marker_mask) -> dict[str, np.ndarray]:
    """Per-sequence shares of relevance on the marker token.

    ``abs = |R_m| / Σ_t |R_t|`` and ``positive = max(R_m, 0) / Σ_t max(R_t, 0)``, where ``m`` is
    the marker's position; a sequence whose map is 0 everywhere (or has no positive relevance)
    gets 0. A map spread evenly over T tokens gives 1/T for both.

    Args:
      relevance: (N, T) relevance per token.
      marker_mask: (N, T) bool, True at the marker (exactly one per row).

    Returns:
      ``{"abs": (N,), "positive": (N,)}`` float64 arrays.
    """
    mask = np.asarray(marker_mask, bool)
    if mask.ndim == 2 and not np.all(mask.sum(1) == 1):
        raise ValueError("marker_mask must mark exactly one token per sequence")
    return region_shares(relevance, mask)


def region_shares(relevance, region) -> dict[str, np.ndarray]:
    """`marker_shares` for a region of any size: per item, the share of relevance inside it.

    ``abs = Σ_{i ∈ region} |R_i| / Σ_i |R_i|`` and ``positive = Σ_{i ∈ region} max(R_i, 0) /
    Σ_i max(R_i, 0)`` over every position i of an item (tokens, patches or pixels: all axes
    after the first are flattened); an item whose map is 0 everywhere (or has no positive
    relevance) gets 0. A uniform map gives the region's fraction of the positions.

    Args:
      relevance: (N, ...) relevance.
      region: (N, ...) bool of the same shape, at least one True per item.

    Returns:
      ``{"abs": (N,), "positive": (N,)}`` float64 arrays.
    """
    relevance = np.asarray(relevance, np.float64)
    mask = np.asarray(region, bool)
    if relevance.ndim < 2 or relevance.shape != mask.shape:
        raise ValueError(f"relevance of shape {relevance.shape} does not match the marker mask "
                         f"{mask.shape}; expected (N, T) per-token (or (N, ...) per-position) "
                         "relevance")
    relevance, mask = relevance.reshape(len(relevance), -1), mask.reshape(len(mask), -1)
    if not np.all(mask.any(1)):
        raise ValueError("the region mask is empty for some item: mark at least one position")
    shares = {}
    for name, values in (("abs", np.abs(relevance)), ("positive", np.maximum(relevance, 0.0))):
        total = values.sum(1)
        shares[name] = np.where(total > 0, (values * mask).sum(1) / np.where(total > 0, total, 1),
                                0.0)
    return shares


# The ViT section: methods and their options (the patch-level methods return the 8×8 grid).
VIT_METHODS = ("lrp.attn_lrp", "input_t_gradient", "attention_rollout", "grad_cam")
VIT_OPTIONS = {"attention_rollout": {"resize": False},
               "grad_cam": {"layer": "vit/encoder/layer_0", "resize": False}}
# Grad-CAM reads the tokens entering the last block: the last block's own patch outputs never
# reach the classifier (it reads the class token only), so their gradient, and the map, is 0.
VIT_LABELS = {**LABELS, "grad_cam": "Grad-CAM (tokens entering the last block)"}
VIT_PICTURED = 3  # images in vit_overlay.png (every method's map of each)


def vit_maps(relevance, patch_size: int, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(patch, pixel)`` maps from a ViT explanation: pixel relevance (N, H, W[, C]) is summed
    over each patch (`jxai.transformer.patch_relevance`); a patch grid (N, H/p, W/p) is spread
    evenly over the patch's pixels (``R_pixel = R_patch / p²``, as `patch_perturbation` does), so
    both maps hold the same total."""
    from jxai.transformer import patch_relevance

    relevance = np.asarray(relevance, np.float64)
    grid = image_size // patch_size
    if relevance.ndim == 4:
        relevance = relevance.sum(-1)
    if relevance.shape[1:] == (image_size, image_size):
        return np.asarray(patch_relevance(relevance, patch_size), np.float64), relevance
    if relevance.shape[1:] == (grid, grid):
        pixel = np.repeat(np.repeat(relevance, patch_size, 1), patch_size, 2) / patch_size ** 2
        return relevance, pixel
    raise ValueError(f"a ViT map of shape {relevance.shape} is neither per pixel "
                     f"({image_size}×{image_size}) nor per patch ({grid}×{grid})")


def vit_faithfulness(network, x, y, patch_maps, patch_size: int) -> dict:
    """ABPC of each patch map (`jxai.metrics.patch_perturbation`), on the true class's logit,
    one patch per step; a removed patch becomes the image's mean (``baseline="mean"``, close to
    its background). Not 0: mid-gray is brighter than the background, and a mid-gray patch in
    the tag's corner still reads as a tag to the model (its logit barely moves)."""
    from jxai.metrics import patch_perturbation

    methods = {}
    for name, grid in patch_maps.items():
        curves = patch_perturbation(network, x, grid, target=y, patch_size=patch_size,
                                    baseline="mean")
        fraction = np.asarray(curves.fraction)
        morf = np.trapezoid(np.asarray(curves.morf), fraction, axis=-1)
        lerf = np.trapezoid(np.asarray(curves.lerf), fraction, axis=-1)
        methods[name] = {"abpc": float(np.mean(curves.abpc)), "auc_morf": float(morf.mean()),
                         "auc_lerf": float(lerf.mean()),
                         "per_image_abpc": [float(v) for v in np.asarray(curves.abpc)]}
    steps = int(np.asarray(curves.morf).shape[-1]) - 1
    return {"baseline": "mean", "steps": steps, "methods": methods}


def _vit_section(args, out: Path) -> dict[str, Any]:
    """Train the tiny ViT on the Clever Hans images, check it took the tag shortcut, explain
    held-out images, write ``vit_overlay.png`` and ``vit_attributions.npz``; the report's
    ``vit`` part."""
    import jax.numpy as jnp
    import matplotlib.pyplot as plt

    import jxai
    from jxai import plot
    from jxai._reporting import why_skipped
    from jxai.io import atomic_write as _atomic
    from jxai.models import clever_hans_vit as chv
    from jxai.models import train
    from jxai.models.clever_hans import CLASSES, SIZE, make_clever_hans

    began = time.perf_counter()
    patch = chv.VIT_CONFIG["patch_size"]
    _say(f"[ViT 1/3] training the zoo's ViT ({chv.tiny_vit().param_count():,} parameters) on "
         f"{args.vit_train_size} Clever Hans images (tag in its class's corner) for "
         f"{args.vit_epochs} epochs")
    trained_at = time.perf_counter()
    network, _ = chv.train_tiny_vit(args.vit_train_size, args.vit_epochs, seed=args.seed,
                                    log=lambda line: _say("      " + line))
    train_seconds = time.perf_counter() - trained_at
    held_seed = args.seed + 10_001
    held_out = make_clever_hans(N_HELD_OUT, seed=held_seed, bias=1.0)
    swapped = chv.counterfactual(N_HELD_OUT, seed=held_seed)
    predicted = np.asarray(train.predict(network, chv.standardize(held_out.x))).argmax(-1)
    predicted_swapped = np.asarray(train.predict(network, chv.standardize(swapped.x))).argmax(-1)
    accuracy = {"n": N_HELD_OUT, "held_out": float(np.mean(predicted == held_out.y)),
                "follows_swapped_tag": float(np.mean(predicted_swapped == swapped.marker_class)),
                "object_with_swapped_tag": float(np.mean(predicted_swapped == swapped.y))}
    _say(f"      held-out accuracy {accuracy['held_out']:.3f}; with the tag in the other corner "
         f"{accuracy['follows_swapped_tag']:.3f} of the predictions follow it")

    batch = held_out.take(np.arange(args.n_images))
    x = jnp.asarray(chv.standardize(batch.x))
    patches, pixels = chv.tag_patches(batch.marker_mask, patch), chv.tag_pixels(batch)
    uniform = {"patch": float(patches.mean()), "pixel": float(pixels.mean())}
    _say(f"[ViT 2/3] explaining {len(batch)} held-out images with {len(VIT_METHODS)} methods "
         f"(uniform share: patches {uniform['patch']:.1%}, pixels {uniform['pixel']:.1%})")
    patch_maps, pixel_maps, methods, skipped = {}, {}, {}, {}
    for method in VIT_METHODS:
        started = time.perf_counter()
        try:
            relevance = jxai.explain(network, x, method, target=batch.y,
                                     **VIT_OPTIONS.get(method, {}))
            grid, pixel = vit_maps(relevance, patch, SIZE)
        except Exception as error:  # a method that cannot run here: reported, not fatal
            skipped[method] = why_skipped(error, method)
            _say(f"      {method:<18} skipped: {skipped[method]}")
            continue
        seconds = time.perf_counter() - started
        on_patches, on_pixels = region_shares(grid, patches), region_shares(pixel, pixels)
        flat = np.abs(grid).reshape(len(grid), -1)
        top1 = patches.reshape(len(grid), -1)[np.arange(len(grid)), flat.argmax(1)]
        patch_maps[method], pixel_maps[method] = grid, pixel
        methods[method] = {
            "patch_abs_share": float(on_patches["abs"].mean()),
            "patch_positive_share": float(on_patches["positive"].mean()),
            "pixel_abs_share": float(on_pixels["abs"].mean()),
            "top1": float(top1.mean()),
            "per_image_patch_abs_share": [float(v) for v in on_patches["abs"]],
            "per_image_pixel_abs_share": [float(v) for v in on_pixels["abs"]],
            "seconds": seconds,
        }
        _say(f"      {method:<18} {seconds:5.1f} s   tag share |R| patches "
             f"{on_patches['abs'].mean():6.1%}   pixels {on_pixels['abs'].mean():6.1%}   "
             f"top-1 {top1.mean():6.1%}")
    if not patch_maps:
        raise RuntimeError("no method could explain the ViT: " + "; ".join(skipped.values()))

    _say(f"[ViT 3/3] patch faithfulness (MoRF/LeRF); writing vit_overlay.png to {out}")
    faithfulness = vit_faithfulness(network, x, batch.y, patch_maps, patch)
    shown = min(VIT_PICTURED, len(batch))
    logits = np.asarray(train.predict(network, np.asarray(x)))
    images = np.repeat(batch.x[:shown], len(patch_maps), 0)
    grids = np.stack([patch_maps[m][i] for i in range(shown) for m in patch_maps])
    short = {"lrp.attn_lrp": "AttnLRP", "input_t_gradient": "grad × input",
             "attention_rollout": "rollout", "grad_cam": "Grad-CAM"}
    titles = [f"#{i} {CLASSES[batch.y[i]]}: {short.get(m, m)}" for i in range(shown)
              for m in patch_maps]
    fig = plot.patch_overlay(images, grids, titles=titles, cell_size=2.2)
    _atomic(out / "vit_overlay.png", lambda f: fig.savefig(f, format="png", dpi=90))
    plt.close(fig)
    _atomic(out / "vit_attributions.npz",
            lambda f: np.savez_compressed(f, images=batch.x, labels=batch.y,
                                          tag_pixels=pixels, tag_patches=patches,
                                          **{f"{m}/patch": v for m, v in patch_maps.items()},
                                          **{f"{m}/pixel": v for m, v in pixel_maps.items()}))
    return {
        "data": {"image_size": SIZE, "train": args.vit_train_size, "seed": args.seed,
                 "held_out_seed": held_seed, "standardize": [chv.PIXEL_MEAN, chv.PIXEL_STD]},
        "model": {"name": "vit", "config": {**chv.VIT_CONFIG, "image_size": SIZE,
                                            "num_channels": 1, "num_labels": len(CLASSES)},
                  "params": network.param_count(), "epochs": args.vit_epochs,
                  "learning_rate": chv.LEARNING_RATE, "train_seconds": train_seconds},
        "accuracy": accuracy,
        "n_images": len(batch),
        "uniform_share": uniform,
        "images": {"labels": batch.y.tolist(), "predicted": logits.argmax(-1).tolist()},
        "methods": methods,
        "options": {m: VIT_OPTIONS[m] for m in methods if m in VIT_OPTIONS},
        "skipped": skipped,
        "faithfulness": faithfulness,
        "seconds": time.perf_counter() - began,
    }


def _vit_markdown(vit: dict[str, Any]) -> list[str]:
    acc, uniform, model = vit["accuracy"], vit["uniform_share"], vit["model"]
    config = ", ".join(f"{k}={v}" for k, v in model["config"].items())
    lines = [
        "", "# The image twin: a tiny ViT on the Clever Hans images", "",
        f"Data: 64×64 Clever Hans images (`jxai.models.clever_hans`): a ring or a cross decides "
        f"the class, a bright square tag in the class's top corner predicts it too (every "
        f"training image). {vit['data']['train']} training images, pixels standardised as "
        f"(x − {vit['data']['standardize'][0]}) / {vit['data']['standardize'][1]}.", "",
        f"Model: the zoo's ViT (`jxai.models.get('vit', pretrained=False, {config})`, "
        "`jxai.models.clever_hans_vit`), "
        f"{model['params']:,} parameters, {model['epochs']} epochs with Adam in "
        f"{model['train_seconds']:.0f} s.", "",
        "| test set | accuracy |", "|---|---|",
        f"| {acc['n']} held-out images, tag in its class's corner | {acc['held_out']:.3f} |",
        f"| the same images with the tag in the other corner: predictions that follow the tag | "
        f"{acc['follows_swapped_tag']:.3f} |",
        f"| the same: predictions that follow the object | {acc['object_with_swapped_tag']:.3f} |",
        "",
        f"## Relevance on the tag ({vit['n_images']} held-out images, true class)", "",
        "Share = |relevance| on the tag / |relevance| on the image, mean over the images "
        "(`region_shares`, the definition of the text demo's `marker_shares`), on the 8×8 patch "
        "grid (patches holding a tag pixel) and per pixel (the tag's pixels, dilated by one; a "
        f"patch method's relevance spread evenly over its patch's pixels). A uniform map gives "
        f"{uniform['patch']:.3f} on the patches and {uniform['pixel']:.3f} on the pixels. "
        "'top-1': how often the patch with the largest |relevance| holds the tag.", "",
        "| method | share on tag patches (abs) | (positive) | × uniform | share on tag pixels "
        "(abs) | × uniform | top-1 | s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m in vit["methods"].items():
        lines.append(
            f"| {VIT_LABELS.get(name, name)} (`{name}`) | {m['patch_abs_share']:.3f} | "
            f"{m['patch_positive_share']:.3f} | {m['patch_abs_share'] / uniform['patch']:.1f}× | "
            f"{m['pixel_abs_share']:.3f} | {m['pixel_abs_share'] / uniform['pixel']:.1f}× | "
            f"{m['top1']:.3f} | {m['seconds']:.1f} |")
    if vit["skipped"]:
        lines += ["", "Not run:", ""] + [f"- `{n}`: {why}" for n, why in vit["skipped"].items()]
    faith = vit["faithfulness"]
    lines += ["", "## ViT faithfulness: removing patches in the order of each explanation", "",
              "`jxai.metrics.patch_perturbation`: whole 8×8 patches are set to the image's "
              "mean (about its background; mid-gray would still read as a tag), most relevant "
              f"first (MoRF) or least relevant first (LeRF), {faith['steps']} steps; the score is "
              "the true class's logit; ABPC = AUC(LeRF) − AUC(MoRF), mean over the images: "
              "higher is more faithful.", "",
              "| method | ABPC | AUC MoRF | AUC LeRF |", "|---|---|---|---|"]
    lines += [f"| {VIT_LABELS.get(n, n)} | {m['abpc']:.3f} | {m['auc_morf']:.3f} | "
              f"{m['auc_lerf']:.3f} |" for n, m in faith["methods"].items()]
    for name, m in faith["methods"].items():
        shares = vit["methods"][name]
        if m["abpc"] < 0 and shares["patch_positive_share"] < shares["patch_abs_share"]:
            lines += ["", f"{VIT_LABELS.get(name, name)}: negative ABPC. Its relevance on the "
                      f"tag is mostly negative ({shares['patch_positive_share']:.0%} of the "
                      f"positive relevance but {shares['patch_abs_share']:.0%} of |R| there), so "
                      "it ranks the tag patches last and MoRF removes them at the end; the sign "
                      "is relative to the all-zero (mid-gray) input, which the model still reads "
                      "as a tag."]
    lines += ["", f"`vit_overlay.png`: the first {VIT_PICTURED} images, each method's patch map "
              "over the image (`jxai.plot.patch_overlay`, red positive, blue negative); "
              "`vit_attributions.npz`: images, labels, tag masks and every map (per patch and "
              f"per pixel). ViT section: {vit['seconds']:.1f} s.", ""]
    return lines


def bert_config(length: int, vocab: int) -> dict[str, int]:
    """The demo BERT's `jxai.models.get` arguments for sequences of ``length`` tokens."""
    return {**BERT_CONFIG, "vocab_size": vocab, "max_position_embeddings": length,
            "sequence_length": length}


def marker_bert(length: int = 16, vocab: int = 32, seed: int = 0):
    """The untrained demo BERT."""
    from jxai.models import get

    return get("bert", pretrained=False, key=seed, **bert_config(length, vocab))


def train_marker_bert(train_set, vocab: int = 32, epochs: int = 4, *, seed: int = 0, log=None):
    """The demo BERT trained with Adam on a `MarkerTokens` set (`jxai.models.train.fit`)."""
    from jxai.models import train

    network = marker_bert(train_set.x.shape[1], vocab, seed)
    network, _ = train.fit(network, train_set.x, train_set.y, epochs=epochs,
                           learning_rate=LEARNING_RATE, key=seed, log=log)
    return network


def token_faithfulness(network, batch, maps):
    """`_faithfulness` for callers outside the demo: ``(table, None)`` or ``(None, why)``."""
    return _faithfulness(network, batch, maps)


def _parser():
    from jxai.cli import ArgumentParser

    parser = ArgumentParser(
        prog="jxai demo --transformer",
        description="Train a tiny BERT on synthetic sequences whose label is decided by one "
        "marker token, explain held-out sequences with AttnLRP, gradient x input and attention "
        "rollout, and report how much relevance each puts on the marker; then the same for a "
        "tiny ViT trained on the Clever Hans images (the corner tag is the marker).")
    parser.add_argument("--out", default=DEFAULT_OUT,
                        help="output folder (default ./demo_transformer_out)")
    parser.add_argument("--n-sequences", type=int, default=32,
                        help="held-out sequences to explain (default 32)")
    parser.add_argument("--train-size", type=int, default=2000,
                        help="training sequences (default 2000)")
    parser.add_argument("--epochs", type=int, default=4, help="training epochs (default 4)")
    parser.add_argument("--length", type=int, default=16,
                        help="tokens per sequence, class token included (default 16)")
    parser.add_argument("--vocab", type=int, default=32, help="vocabulary size (default 32)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and the weights")
    parser.add_argument("--n-images", type=int, default=8,
                        help="held-out Clever Hans images the ViT explains (default 8)")
    parser.add_argument("--vit-train-size", type=int, default=2000,
                        help="training images of the ViT (default 2000)")
    parser.add_argument("--vit-epochs", type=int, default=4,
                        help="training epochs of the ViT (default 4)")
    parser.add_argument("--no-vit", action="store_true",
                        help="only the text demo, without the ViT on the Clever Hans images")
    return parser


def _check_arguments(args) -> None:
    from jxai.models.marker_tokens import FIRST_FILLER

    for flag, value, least in (("--n-sequences", args.n_sequences, 1),
                               ("--train-size", args.train_size, 2),
                               ("--epochs", args.epochs, 1), ("--length", args.length, 2),
                               ("--vocab", args.vocab, FIRST_FILLER + 1),
                               ("--seed", args.seed, 0), ("--n-images", args.n_images, 1),
                               ("--vit-train-size", args.vit_train_size, 2),
                               ("--vit-epochs", args.vit_epochs, 1)):
        if value < least:
            raise ValueError(f"{flag} {value}: expected an integer >= {least}")
    if args.n_images > N_HELD_OUT:
        raise ValueError(f"--n-images {args.n_images}: expected an integer <= {N_HELD_OUT}")


def _say(text: str) -> None:
    print(text, flush=True)


def _markdown(report: dict[str, Any]) -> str:
    data, acc = report["data"], report["accuracy"]
    lines = [
        "# jxai demo --transformer: which token does the transformer read?",
        "",
        f"Data: synthetic sequences of {data['length']} tokens (vocabulary {data['vocab']}): a "
        "class token, random fillers, and one marker token at a random position whose identity "
        "decides the label (`jxai.models.marker_tokens`, the text twin of the Clever Hans "
        f"images). {data['train']} training sequences, seed {data['seed']}.",
        "",
        f"Model: the zoo's BERT (`jxai.models.get(\"bert\", pretrained=False, "
        f"{', '.join(f'{k}={v}' for k, v in report['model']['config'].items())})`), "
        f"{report['model']['params']:,} parameters, trained "
        f"{report['model']['epochs']} epochs with Adam in {report['model']['train_seconds']:.0f} s.",
        "",
        "## Accuracy on held-out sequences",
        "",
        "| test set | accuracy |",
        "|---|---|",
        f"| {acc['n']} held-out sequences | {acc['held_out']:.3f} |",
        f"| the same with the other class's marker: predictions that follow the marker | "
        f"{acc['follows_swapped_marker']:.3f} |",
        "",
        f"## Relevance on the marker ({report['n_sequences']} held-out sequences)",
        "",
        f"Each sequence is explained for its true class on the integer ids. Share = relevance on "
        f"the marker / relevance on all {data['length']} tokens, mean over the sequences; a "
        f"uniform map gives {report['uniform_share']:.3f}. \"top-1\": how often the marker is "
        "the token with the largest |relevance|; \"class token\": the share of abs relevance on "
        "the class token at position 0.",
        "",
        "| method | share of abs relevance | share of positive relevance | top-1 | class token "
        "| s |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in report["methods"].items():
        lines.append(f"| {LABELS.get(name, name)} (`{name}`) | {m['abs_share']:.3f} | "
                     f"{m['positive_share']:.3f} | {m['top1']:.3f} | {m['class_token_share']:.3f} | "
                     f"{m['seconds']:.1f} |")
    if report["skipped"]:
        lines += ["", "Not run:", ""]
        lines += [f"- `{name}`: {why}" for name, why in report["skipped"].items()]
    lines += ["", "Attention rollout does not depend on the class (it follows the attention maps "
              "and counts the residual stream as identity), so part of its mass stays on the "
              "class token."]
    faith = report["faithfulness"]
    if faith:
        lines += ["", "## Faithfulness: removing tokens in the order of each explanation", "",
                  f"`jxai.metrics.token_perturbation`: the tokens after the class token are "
                  f"replaced by the filler id {faith['mask_token']} (which carries no class "
                  f"information), most relevant first (MoRF) or least relevant first (LeRF), "
                  f"{faith['steps']} steps; the score is the true class's logit. ABPC = AUC(LeRF) "
                  "− AUC(MoRF), mean over the sequences: higher is more faithful, a random order "
                  "gives 0.", "",
                  "| method | ABPC | AUC MoRF | AUC LeRF |", "|---|---|---|---|"]
        lines += [f"| {LABELS.get(name, name)} | {m['abpc']:.3f} | {m['auc_morf']:.3f} | "
                  f"{m['auc_lerf']:.3f} |" for name, m in faith["methods"].items()]
    else:
        lines += ["", "Token faithfulness (MoRF/LeRF) was not measured: "
                  f"{report.get('faithfulness_note', 'not available')}."]
    lines += ["", "## Files", "",
              "- `heatmaps.html`: the tokens of each sequence coloured by each method "
              "(`jxai.plot.text_html`: red positive, blue negative, each row scaled by its "
              "largest |relevance|; M0/M1 are the markers, CLS the class token);",
              f"- `heatmaps.png`: the same for the first {N_PICTURED} sequences "
              "(`jxai.plot.text_heatmap`);",
              "- `attributions.npz`: ids, labels, marker positions and every map;",
              "- `report.json`: the numbers of this page, per sequence too.",
              ""]
    if report.get("vit"):
        lines += _vit_markdown(report["vit"])
    lines += ["", f"Run time: {report['seconds']:.1f} s.", ""]
    return "\n".join(lines)


def _faithfulness(network, batch, maps) -> tuple[dict | None, str | None]:
    """ABPC of each map (`jxai.metrics.token_perturbation`): removed tokens become a filler id,
    the class token is kept; ``(None, why)`` when it cannot run."""
    from jxai.models.marker_tokens import CLS, FIRST_FILLER

    try:
        from jxai.metrics import token_perturbation
    except ImportError:
        return None, "jxai.metrics.token_perturbation is not available in this version"
    keep = batch.x == CLS
    methods = {}
    for name, relevance in maps.items():
        try:
            curves = token_perturbation(network, batch.x, relevance, target=batch.y,
                                        mask_token=FIRST_FILLER, keep=keep)
        except (ValueError, TypeError, NotImplementedError) as error:
            return None, f"token_perturbation failed on {name}: {error}"
        fraction = curves.fraction
        morf = np.trapezoid(np.asarray(curves.morf), fraction, axis=-1)
        lerf = np.trapezoid(np.asarray(curves.lerf), fraction, axis=-1)
        methods[name] = {"abpc": float(np.mean(curves.abpc)), "auc_morf": float(morf.mean()),
                         "auc_lerf": float(lerf.mean()),
                         "per_sequence_abpc": [float(v) for v in np.asarray(curves.abpc)]}
    steps = int(np.asarray(curves.morf).shape[-1]) - 1
    return {"mask_token": FIRST_FILLER, "steps": steps, "methods": methods}, None


def _write_heatmaps(out: Path, batch, maps, row_labels, vocab) -> None:
    """heatmaps.html (every sequence, every method) and heatmaps.png (the first `N_PICTURED`)."""
    import matplotlib.pyplot as plt

    from jxai import plot
    from jxai.io import atomic_write as _atomic

    sections = ["<h1>jxai demo --transformer: relevance per token</h1>",
                "<p>Red: positive relevance for the true class, blue: negative; each sequence "
                "scaled by its largest |relevance|. M0 and M1 are the markers of class 0 and 1, "
                "CLS the class token.</p>"]
    for i, label in enumerate(row_labels):
        sections.append(f"<h3>{html.escape(label)}</h3>")
        sections.append(plot.text_html(
            np.repeat(batch.x[i:i + 1], len(maps), 0), np.stack([r[i] for r in maps.values()]),
            vocab=vocab, row_labels=[LABELS.get(m, m) for m in maps]))
    page = ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>jxai demo "
            "--transformer</title></head><body>\n" + "\n".join(sections) + "\n</body></html>\n")
    _atomic(out / "heatmaps.html", lambda f: f.write(page.encode()))

    n = min(N_PICTURED, len(batch))
    ids = np.repeat(batch.x[:n], len(maps), 0)
    relevance = np.stack([maps[m][i] for i in range(n) for m in maps])
    labels = [f"#{i} {LABELS.get(m, m)}" for i in range(n) for m in maps]
    fig = plot.text_heatmap(ids, relevance, vocab=vocab, row_labels=labels, width=10.0,
                            title="Relevance per token for the true class (marker: M0 / M1)")
    _atomic(out / "heatmaps.png", lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from jxai.cli import parse_args, usage_error, writable_folder

    args = parse_args(_parser(), argv)
    if isinstance(args, int):
        return args
    try:
        _check_arguments(args)
        writable_folder(args.out)
    except ValueError as err:
        return usage_error("jxai demo --transformer", err)
    start = time.perf_counter()
    out = Path(args.out)

    import jax.numpy as jnp

    import jxai
    from jxai._reporting import why_skipped
    from jxai.io import atomic_write as _atomic
    from jxai.models import train
    from jxai.models.marker_tokens import make_marker_tokens

    length, vocab = args.length, args.vocab
    _say(f"[1/4] generating {args.train_size} + {N_HELD_OUT} marker sequences "
         f"(length {length}, vocabulary {vocab}, seed {args.seed})")
    train_set = make_marker_tokens(args.train_size, length=length, vocab=vocab, seed=args.seed)
    held_out = make_marker_tokens(N_HELD_OUT, length=length, vocab=vocab,
                                  seed=args.seed + 10_001)

    config = bert_config(length, vocab)
    _say(f"[2/4] training the zoo's BERT ({marker_bert(length, vocab).param_count():,} "
         f"parameters) for {args.epochs} epochs")
    trained_at = time.perf_counter()
    network = train_marker_bert(train_set, vocab, args.epochs, seed=args.seed,
                                log=lambda line: _say("      " + line))
    train_seconds = time.perf_counter() - trained_at
    accuracy = {"n": N_HELD_OUT,
                "held_out": train.evaluate(network, held_out.x, held_out.y)["accuracy"]}
    swapped = held_out.swapped()
    predicted = train.predict(network, swapped.x).argmax(-1)
    accuracy["follows_swapped_marker"] = float(np.mean(predicted == swapped.y))
    _say(f"      held-out accuracy {accuracy['held_out']:.3f}; with the marker swapped, "
         f"{accuracy['follows_swapped_marker']:.3f} of the predictions follow it")

    batch = held_out.take(slice(0, args.n_sequences))
    ids, mask = jnp.asarray(batch.x), batch.marker_mask
    _say(f"[3/4] explaining {len(batch)} held-out sequences with {len(METHODS)} methods")
    maps, methods, skipped = {}, {}, {}
    for method in METHODS:
        began = time.perf_counter()
        try:
            relevance = np.asarray(jxai.explain(network, ids, method, target=batch.y))
            shares = marker_shares(relevance, mask)
        except Exception as error:  # a method that cannot run here: reported, not fatal
            skipped[method] = why_skipped(error, method)
            _say(f"      {method:<18} skipped: {skipped[method]}")
            continue
        seconds = time.perf_counter() - began
        top1 = np.abs(relevance).argmax(1) == batch.marker_position
        maps[method] = relevance
        methods[method] = {
            "abs_share": float(shares["abs"].mean()),
            "positive_share": float(shares["positive"].mean()),
            "top1": float(top1.mean()),
            "class_token_share": float(np.mean(np.abs(relevance[:, 0]) / np.maximum(
                np.abs(relevance).sum(1), np.finfo(np.float64).tiny))),
            "per_sequence_abs_share": [float(v) for v in shares["abs"]],
            "per_sequence_positive_share": [float(v) for v in shares["positive"]],
            "seconds": seconds,
        }
        _say(f"      {method:<18} {seconds:5.1f} s   marker share |R| "
             f"{shares['abs'].mean():6.1%}   R+ {shares['positive'].mean():6.1%}   "
             f"top-1 {top1.mean():6.1%}")
    if not maps:
        _say("jxai demo --transformer: no method could explain the network; nothing to report")
        return 1

    _say(f"[4/4] token faithfulness (MoRF/LeRF); writing the report and the heatmaps to {out}")
    probabilities = np.asarray(train.predict(network, batch.x))
    report = {
        "data": {"length": length, "vocab": vocab, "train": args.train_size, "seed": args.seed},
        "model": {"name": "bert", "config": {k: v for k, v in config.items()
                                             if k != "sequence_length"},
                  "params": network.param_count(), "epochs": args.epochs,
                  "learning_rate": LEARNING_RATE, "train_seconds": train_seconds},
        "accuracy": accuracy,
        "n_sequences": len(batch),
        "uniform_share": 1.0 / length,
        "sequences": {"labels": batch.y.tolist(), "marker_position": batch.marker_position.tolist(),
                      "predicted": probabilities.argmax(-1).tolist()},
        "methods": methods,
        "skipped": skipped,
        "outputs": ["report.md", "report.json", "heatmaps.html", "heatmaps.png",
                    "attributions.npz"],
    }
    report["faithfulness"], report["faithfulness_note"] = _faithfulness(network, batch, maps)
    row_labels = [f"sequence {i}: class {y}, predicted {p.argmax()} ({p.max():.2f}), marker at "
                  f"position {m}" for i, (y, p, m) in
                  enumerate(zip(batch.y, probabilities, batch.marker_position, strict=True))]
    _write_heatmaps(out, batch, maps, row_labels, token_names(vocab))
    _atomic(out / "attributions.npz",
            lambda f: np.savez_compressed(f, ids=batch.x, labels=batch.y,
                                          marker_position=batch.marker_position, **maps))
    if not args.no_vit:
        report["vit"] = _vit_section(args, out)
        report["outputs"] += ["vit_overlay.png", "vit_attributions.npz"]
    report["seconds"] = round(time.perf_counter() - start, 1)
    _atomic(out / "report.json", lambda f: f.write((json.dumps(report, indent=2) + "\n").encode()))
    _atomic(out / "report.md", lambda f: f.write(_markdown(report).encode()))
    _say(f"done in {report['seconds']:.0f} s: {out / 'report.md'}, {out / 'heatmaps.html'}")
    return 0
