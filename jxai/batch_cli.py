"""The ``jxai explain`` command: load a model, list the inputs, stream them through
`jxai.batch.explain_dataset`, write one file per input atomically, report progress and a summary.

    jxai explain MODEL INPUTS... --method NAME [--target ...] [--out DIR] [--batch-size N]
                 [--format npy|npz|png] [--resume]

See ``jxai explain --help`` and ``benchmarks/README_batch.md``. Exit status: 0 all explained,
1 some inputs failed, 2 usage error, 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import jax
import numpy as np

from jxai import io as jio
from jxai.batch import explain_dataset, image_preprocess_for
from jxai.progress import Progress

__all__ = ["load_model", "main"]


# -- loading a model by name -------------------------------------------------------------------
def load_model(spec: str):
    """A `jxai.Network` from a Keras file, a checkpoint folder or a model-zoo name: `jxai.load`."""
    from jxai.loading import load

    return load(spec)


# -- the command -------------------------------------------------------------------------------
def _show_autotune_choice() -> None:
    """Print the ``jxai.batch`` autotune report (an INFO log record) to stderr."""
    logger = logging.getLogger("jxai.batch")
    if not any(getattr(h, "_jxai_cli", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._jxai_cli = True
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # printed once, whatever the root logger is set up to do


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jxai explain",
        description="Explain a folder, glob or array of inputs in batches: one compiled program, "
                    "sharded over every local device, one output file per input (written "
                    "atomically).",
        epilog="examples:\n"
               "  jxai explain model.h5 scans/ --method lrp.epsilon --out relevance/\n"
               "  jxai explain unet 'tiles/**/*.tif' --method gradient --format png --resume\n"
               "  jxai explain ckpt/ x_test.npy --method integrated_gradients --param steps=32\n"
               "on a CPU the host is split into one XLA device per core (at most 8) and the batch\n"
               "is shared out between them; JAX_NUM_CPU_DEVICES=N sets the count (1: off)\n"
               "exit status: 0 all explained, 1 some inputs failed, 2 usage error, "
               "130 interrupted",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="Keras file (.h5/.keras), converted checkpoint folder, or a "
                                      "jxai.models name")
    parser.add_argument("inputs", nargs="+", help="folders of images, globs, image files, "
                                                  ".npy/.npz arrays (one item per row)")
    parser.add_argument("--method", required=True, help="explanation method, e.g. gradient, "
                        "lrp.epsilon, lrp.sequential_preset_a_flat, integrated_gradients")
    parser.add_argument("--target", default="max",
                        help="max (default), all (every output at once), a class index, "
                             "several 'i,j,k' (one result each), or a file of per-item classes "
                             "(.npy, or text with one integer a line)")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="method parameter, repeatable (e.g. --param steps=32)")
    parser.add_argument("--out", default="explanations", help="output folder (default: "
                                                              "./explanations)")
    parser.add_argument("--format", default="npy", choices=jio.FORMATS,
                        help="npy (default), npz (with name and method), png (heatmap)")
    parser.add_argument("--batch-size", type=int, default=32, help="items per step (default 32)")
    parser.add_argument("--resume", action="store_true",
                        help="skip inputs whose output file already exists")
    parser.add_argument("--preprocess", choices=jio.MODES, default=None,
                        help="image value mapping (default: 8-bit /255 and 16-bit /65535 to "
                             "[0, 1]; a model whose metadata names caffe, torch or tf gets that "
                             "mode on the 0-255 scale); .npy/.npz arrays: raw unless given")
    parser.add_argument("--size", default=None, metavar="HxW",
                        help="resize images (default: the model's input size)")
    parser.add_argument("--channels", type=int, choices=(1, 3), default=None,
                        help="convert images to 1 or 3 channels (default: the model's)")
    parser.add_argument("--array-key", default=None, help="member to read from .npz inputs")
    parser.add_argument("--keep-output-activation", action="store_true",
                        help="explain the softmax/sigmoid output instead of the logits")
    parser.add_argument("--seed", type=int, default=0, help="seed of stochastic methods")
    parser.add_argument("--workers", type=int, default=None, help="reader threads")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--autotune", action="store_true",
                        help="on CPU, time XLA's convolution back ends on the first batch and "
                             "keep the faster (see jxai.batch.CPU_VARIANTS)")
    return parser


def _parse_value(text: str):
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if "," in text:
        return tuple(_parse_value(part) for part in text.split(","))
    return text


def _parse_target(text: str):
    """(target, labels): a global target for jxai.explain, or per-item labels from a file."""
    if text in ("max", "all"):
        return text, None
    if os.path.isfile(text):
        if text.endswith(".npy"):
            labels = np.load(text, allow_pickle=False)
        else:
            labels = np.loadtxt(text, dtype=np.int64, ndmin=1)
        return "max", np.asarray(labels).astype(np.int64).reshape(-1)
    try:
        parts = [int(p) for p in text.split(",")]
    except ValueError:
        raise ValueError(f"--target {text!r}: expected max, all, an integer, 'i,j,k' or a "
                         "labels file that exists") from None
    return (parts[0] if len(parts) == 1 else tuple(parts)), None


def _parse_size(text: str | None):
    if text is None:
        return None
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size {text!r}: expected HEIGHTxWIDTH, e.g. 224x224") from None
    return height, width


def main(argv: list[str] | None = None) -> int:
    """``jxai explain``: see ``jxai explain --help``. Returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        target, labels = _parse_target(args.target)
        size = _parse_size(args.size)
        params = {}
        for pair in args.param:
            key, sep, value = pair.partition("=")
            if not sep or not key:
                raise ValueError(f"--param {pair!r}: expected KEY=VALUE, e.g. steps=32")
            params[key] = _parse_value(value)
        items = jio.list_inputs(args.inputs, array_key=args.array_key)
        if labels is not None and len(labels) != len(items):
            raise ValueError(f"--target {args.target}: {len(labels)} labels for {len(items)} "
                             "inputs; give one integer per input, in input order")
    except (ValueError, FileNotFoundError) as err:
        print(f"jxai explain: error: {err}", file=sys.stderr)
        return 2
    try:
        network = load_model(args.model)
    except (ValueError, OSError, ImportError, AttributeError) as err:
        print(f"jxai explain: error: cannot load the model {args.model!r}: {err}", file=sys.stderr)
        return 2
    for_images = image_preprocess_for(network, size=size, channels=args.channels,
                                      mode=args.preprocess)
    for_arrays = jio.Preprocess(size=size, channels=args.channels, mode=args.preprocess or "raw",
                                add_channel_axis=False)

    def prepare(raw, *, is_image):
        return (for_images if is_image else for_arrays)(raw, is_image=is_image)

    os.makedirs(args.out, exist_ok=True)
    jio.remove_stale_temporaries(args.out)
    destination = {item.name: jio.output_path(args.out, item.name, args.format) for item in items}
    mine = [item.name for i, item in enumerate(items)
            if i % jax.process_count() == jax.process_index()]
    finished = {name for name in mine if args.resume and destination[name].is_file()}
    if finished and not args.quiet:
        print(f"resuming: {len(finished)} of {len(mine)} outputs already in {args.out}",
              file=sys.stderr)
    summary = _Summary(len(mine), len(finished))
    progress = None if args.quiet else Progress(len(mine) - len(finished))
    writer = jio.BackgroundWriter(args.format, args.method)
    if args.autotune and not args.quiet:
        _show_autotune_choice()
    results = explain_dataset(
        network, items, args.method, target, labels=labels, batch_size=args.batch_size,
        preprocess=prepare, seed=args.seed, workers=args.workers,
        skip=(lambda name: name in finished) if finished else None,
        strip_output_activation=not args.keep_output_activation, autotune=args.autotune,
        **params)
    try:
        for result in results:
            if result.ok:
                writer.submit(destination[result.name], result.attribution, result.name)
            else:
                summary.fail(result.name, result.error)
                if progress:
                    progress.message(f"skipped {result.name}: {result.error}")
            summary.done += 1
            if progress:
                progress.update(summary.done, len(summary.failures))
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        results.close()
        writer.close()  # finish the complete results already computed, then stop
        for name, error in writer.errors():
            summary.fail(name, error)
        if progress:
            progress.update(summary.done, len(summary.failures))
            progress.close()
    summary.explained = writer.written
    summary.report(args.out)
    if summary.interrupted:
        return 130
    return 1 if summary.failures else 0


class _Summary:
    def __init__(self, total: int, resumed: int):
        self.total, self.resumed = total, resumed
        self.explained = self.done = 0
        self.failures: list[tuple[str, str]] = []
        self.interrupted = False
        self.start = time.perf_counter()

    def fail(self, name: str, error: str) -> None:
        self.failures.append((name, error))

    def report(self, out_dir: str) -> None:
        elapsed = time.perf_counter() - self.start
        rate = self.explained / elapsed if elapsed > 0 else 0.0
        lines = [
            "interrupted: only complete outputs were kept; rerun with --resume to finish"
            if self.interrupted else "done",
            f"  items       {self.total}",
            f"  explained   {self.explained}",
            f"  resumed     {self.resumed} (already present)",
            f"  failed      {len(self.failures)}",
            f"  time        {elapsed:.1f} s",
            f"  throughput  {rate:.1f} items/s (including model compilation)",
            f"  outputs     {out_dir}",
        ]
        if self.failures:
            report = os.path.join(out_dir, "failures.txt")
            text = "".join(f"{name}\t{error}\n" for name, error in self.failures)
            jio.atomic_write(report, lambda f: f.write(text.encode()))
            lines.append(f"  failures    listed in {report}")
            lines += [f"    {name}: {error}" for name, error in self.failures[:10]]
            if len(self.failures) > 10:
                lines.append(f"    ... and {len(self.failures) - 10} more")
        print("\n".join(lines), file=sys.stderr)
