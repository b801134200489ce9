"""``jxai convert MODEL OUTDIR``: convert a Keras file (or a Hugging Face/timm safetensors folder,
`jxai.load_pretrained`) once and save it as a jxai checkpoint.

Prints a layer table like Keras' ``model.summary()`` (name, type, output shape, parameter
count, total) and writes ``OUTDIR`` with `save_network`; restore it with
``jxai.load(OUTDIR)``. A bad argument or a file that cannot be converted is one line on
stderr and exit status 2, found before anything is written.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jxai.converters.keras.checkpoint import save_network
from jxai.converters.keras.loader import load_keras
from jxai.converters.keras.module import KerasModel
from jxai.converters.keras.spec import GraphSpec

from jxai.cli import ArgumentParser, parse_args, remove_if_empty, usage_error, writable_folder
from jxai.network import Network

__all__ = ["main", "summary"]


def _count(tree) -> int:
    return int(sum(np.size(leaf) for leaf in jax.tree.leaves(tree)))


def _layer_params(layer, params: dict, stats: dict) -> int:
    names = [layer.module, f"{layer.module}_depthwise"]
    return sum(_count(params.get(n, {})) + _count(stats.get(n, {})) for n in names)


def _output_shapes(network: Network) -> dict[str, list]:
    """Call id -> output shapes, from one abstract forward pass (no FLOPs)."""
    graph = network.module.graph
    shapes = network.metadata.get("input_shapes") or [list(s) for s in graph.input_shapes]
    if any(d is None for s in shapes for d in s):
        shapes = [[1 if d is None else d for d in s] for s in shapes]  # unknown sizes: shown as 1
    capturing = KerasModel(graph=graph, capture=True)
    inputs = [jax.ShapeDtypeStruct((1, *s), jnp.float32) for s in shapes]

    def run(*xs):
        return capturing.apply(network.variables, *xs, mutable=["keras_outputs"])[1]

    captured = jax.eval_shape(run, *inputs)
    return captured.get("keras_outputs", {})


def _rows(graph: GraphSpec, params, stats, captured, prefix: str, rows: list) -> None:
    for layer in graph.layers:
        name = prefix + layer.name
        if layer.kind == "Input":
            shape = [None, *next(s for c, s in zip(graph.inputs, graph.input_shapes, strict=True)
                                 if c == f"{layer.name}:0")]
            rows.append((name, layer.class_name, str(tuple(shape)), 0))
            continue
        # sow keeps a tuple per name; each entry is the call's list of outputs
        outs = [v[0] for k, v in captured.items() if ":" in k and k.rsplit(":", 1)[0] == layer.name]
        shape = ", ".join(str((None, *o.shape[1:])) for o in (outs[0] if outs else ())) or "-"
        count = (_count(params.get(layer.module, {})) + _count(stats.get(layer.module, {}))
                 if layer.kind == "Model" else _layer_params(layer, params, stats))
        rows.append((name, layer.class_name, shape, count))
        if layer.kind == "Model":
            _rows(layer.graph, params.get(layer.module, {}), stats.get(layer.module, {}),
                  captured.get(layer.module, {}), f"{name}/", rows)


def summary(network: Network) -> str:
    """A Keras-``summary()``-like table of a converted network (one line for a pretrained
    transformer: architecture and parameter count)."""
    if not isinstance(network.module, KerasModel):
        return (f"{network.metadata.get('architecture')} ({network.metadata.get('name')}): "
                f"{network.param_count():,} parameters")
    graph = network.module.graph
    params = network.variables.get("params", {})
    stats = network.variables.get("batch_stats", {})
    rows: list = []
    _rows(graph, params, stats, _output_shapes(network), "", rows)
    header = ("Layer", "Type", "Output shape", "Param #")
    widths = [max(len(header[i]), *(len(str(r[i])) for r in rows)) for i in range(4)]
    line = "  ".join(f"{{:<{w}}}" for w in widths[:3]) + f"  {{:>{widths[3]}}}"
    rule = "-" * (sum(widths) + 6)
    out = [f'Model: "{graph.name}"', rule, line.format(*header), rule]
    out += [line.format(*(str(c) for c in r)) for r in rows]
    total = _count(params) + _count(stats)
    out += [rule, f"Total params: {total:,} (parameters {_count(params):,}, "
            f"BatchNorm statistics {_count(stats):,})", rule]
    return "\n".join(out)


PROG = "jxai convert"


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Convert a Keras model (.h5 / .keras) to a jxai checkpoint, without "
        "TensorFlow. Restore it with jxai.load(OUTDIR).",
        epilog="exit status: 0 converted, 2 usage error (one line on stderr: a bad argument, "
        "an OUTDIR that exists or cannot be written, a file that is not a convertible Keras "
        "model)")
    parser.add_argument("model", help="Keras file (legacy .h5 or .keras archive), or a Hugging "
                        "Face/timm folder (config.json + model.safetensors)")
    parser.add_argument("outdir", help="directory to write the converted network to")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a checkpoint already in OUTDIR")
    parser.add_argument("--quiet", action="store_true", help="do not print the layer table")
    return parser


def _check_arguments(args) -> tuple[str, str | None]:
    """What needs no conversion: the model file exists, OUTDIR may be written (a one-line
    ValueError otherwise), so a bad OUTDIR is reported before the model is read. Returns
    OUTDIR's parent and the outermost folder created for it (`jxai.cli.writable_folder`)."""
    if not os.path.exists(args.model):
        raise ValueError(f"MODEL {args.model}: no such file")
    outdir = os.path.abspath(args.outdir)
    if os.path.exists(outdir):
        if not os.path.isdir(outdir):
            raise ValueError(f"OUTDIR {args.outdir}: exists and is not a folder")
        if os.path.isfile(os.path.join(outdir, "network.json")):
            if not args.overwrite:
                raise ValueError(f"OUTDIR {args.outdir}: already holds a converted network; pass "
                                 "--overwrite to replace it")
        elif os.listdir(outdir):
            raise ValueError(f"OUTDIR {args.outdir}: exists and is not a jxai checkpoint; "
                             "choose a new or empty folder")
    # the checkpoint is written beside OUTDIR under a temporary name, then renamed into place
    parent = os.path.dirname(outdir)
    return parent, writable_folder(parent, "OUTDIR's folder")


def main(argv: list[str] | None = None) -> int:
    """``jxai convert MODEL OUTDIR``; returns the exit status (0, or 2 with one line on stderr)."""
    args = parse_args(_parser(), sys.argv[1:] if argv is None else argv)
    if isinstance(args, int):
        return args
    try:
        parent, created = _check_arguments(args)
    except ValueError as exc:
        return usage_error(PROG, exc)
    try:
        from jxai.converters.safetensors import is_pretrained_folder, load_pretrained

        network = (load_pretrained(args.model) if is_pretrained_folder(args.model)
                   else load_keras(args.model))  # a HF/timm folder, or a Keras file
    except (ValueError, OSError) as exc:  # the converter's errors are ValueErrors
        remove_if_empty(parent, created)
        return usage_error(PROG, exc)
    if not args.quiet:
        print(summary(network))
    try:
        directory = save_network(network, args.outdir, overwrite=args.overwrite)
    except (ValueError, OSError) as exc:
        return usage_error(PROG, exc)
    print(f"saved {network.metadata.get('name')} to {directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
