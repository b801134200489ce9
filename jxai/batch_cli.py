"""The ``jxai explain`` command: load a model, list the inputs, stream them through
`jxai.batch.explain_dataset`, write one file per input atomically, report progress and a summary.

    jxai explain MODEL INPUTS... --method NAME [--target ...] [--out DIR] [--batch-size N]
                 [--format npy|npz|png] [--resume]

See ``jxai explain --help`` and ``benchmarks/README_batch.md``. The command explains x only:
a token model's other inputs (``attention_mask``...) need the Python API,
``jxai.explain_dataset(net, {"input_ids": ids, "attention_mask": mask}, method)``. Exit status: 0 all explained,
1 some inputs failed (or, with several processes, another process stopped: `jxai.launch`),
2 usage error, 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import sys
import textwrap
import time
from typing import Any, NamedTuple

import jax
import numpy as np

from jxai import io as jio
from jxai import launch
from jxai.batch import explain_dataset, image_preprocess_for
from jxai.cli import ArgumentParser, parse_args, remove_if_empty, usage_error, writable_folder
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


def _listing(title: str, names: list[str], width: int = 78) -> str:
    """``title:`` and the names wrapped to ``width`` columns, for the help's epilog."""
    return "\n".join(textwrap.wrap(", ".join(names), width, initial_indent="  ",
                                   subsequent_indent="  ")).join((f"{title}:\n", "\n"))


def _zoo_names() -> list[str]:
    import jxai.models

    return list(jxai.models.NAMES)


def _method_names() -> list[str]:
    from jxai.contract import list_methods

    return list_methods()


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Explain a folder, glob or array of inputs in batches: one compiled program, "
                    "sharded over every local device, one output file per input (written "
                    "atomically).",
        epilog="examples:\n"
               "  jxai explain model.h5 scans/ --method lrp.epsilon --out relevance/\n"
               "  jxai explain unet 'tiles/**/*.tif' --method gradient --format png --resume\n"
               "  jxai explain ckpt/ x_test.npy --method integrated_gradients --param steps=32\n"
               + _listing("zoo models (MODEL)", _zoo_names())
               + _listing("methods (--method; jxai.list_methods())", _method_names())
               + "on a CPU the host is split into one XLA device per core (at most 8) and the batch\n"
               "is shared out between them; JAX_NUM_CPU_DEVICES=N sets the count (1: off)\n"
               "exit status: 0 all explained, 1 some inputs failed (or another process "
               "stopped),\n2 usage error (one line on stderr, found before the model is loaded "
               "or compiled),\n130 interrupted",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="Keras file (.h5/.keras), converted checkpoint folder, or a "
                                      "jxai.models name (listed below)")
    parser.add_argument("inputs", nargs="+", help="folders of images, globs, image files, "
                                                  ".npy/.npz arrays (one item per row)")
    parser.add_argument("--method", required=True, help="explanation method, e.g. gradient, "
                        "lrp.epsilon, lrp.sequential_preset_a_flat, integrated_gradients (all "
                        "of them: below)")
    parser.add_argument("--target", default="max",
                        help="max (default), all (every output at once), a class index, "
                             "several 'i,j,k' (one result each), or a file of per-item classes "
                             "(.npy, or text with one integer a line)")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="method parameter, repeatable (e.g. --param steps=32); checked "
                             "against the method's signature and typed by its default")
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
    launch.add_arguments(parser)  # --coordinator, --num-processes, --process-id
    return parser


# -- checking the arguments (before anything is loaded) ---------------------------------------
PROG = "jxai explain"
SEED_LIMIT = 2**32  # jax.random.PRNGKey wraps larger seeds around


class _Job(NamedTuple):
    """What the arguments ask for, checked: everything but the model."""

    params: dict
    target: Any
    labels: np.ndarray | None
    size: tuple[int, int] | None
    items: list


def _check_arguments(args) -> _Job:
    """Every check that needs no model: a one-line ValueError (or FileNotFoundError) naming the
    flag, the bad value and what is expected."""
    _positive("--batch-size", args.batch_size)
    if args.workers is not None:
        _positive("--workers", args.workers)
    if not 0 <= args.seed < SEED_LIMIT:
        raise ValueError(f"--seed {args.seed}: expected an integer in 0..{SEED_LIMIT - 1}")
    params = _parse_params(args.method, args.param)
    size = _parse_size(args.size)
    target, labels = _parse_target(args.target)
    items = jio.list_inputs(args.inputs, array_key=args.array_key)
    if labels is not None and len(labels) != len(items):
        raise ValueError(f"--target {args.target}: {len(labels)} labels for {len(items)} "
                         "inputs; give one integer per input, in input order")
    return _Job(params, target, labels, size, items)


def _positive(flag: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{flag} {value}: expected an integer >= 1")


def _parse_params(method: str, pairs: list[str]) -> dict:
    """``--param KEY=VALUE`` pairs as the method's keyword arguments: the method must exist, take
    every key and get its required ones; each value is typed by its parameter
    (`jxai._params.parse_param`)."""
    from jxai._params import check_method, check_params, missing_params, parse_param

    check_method(method)
    raw = dict(pair.partition("=")[::2] for pair in pairs)
    given = {"wrapped": raw["wrapped"]} if "wrapped" in raw else {}  # selects the inner method
    params = dict(parse_param(method, pair, given) for pair in pairs)
    try:
        check_params(method, params, "--param")
    except TypeError as err:
        raise ValueError(str(err)) from None
    taken = [key for key in params if key in _pipeline_keywords()]
    if taken:  # explain_dataset(**params) would get the name twice
        raise ValueError(f"--param {taken[0]}: jxai explain cannot pass {method}'s "
                         f"{taken[0]!r}: its pipeline (jxai.explain_dataset) takes a "
                         f"{taken[0]} of its own; leave it out to use the method's default")
    missing = missing_params(method, params)
    if missing:
        raise ValueError(f"{method} needs --param {'=... --param '.join(missing)}=...")
    return params


def _pipeline_keywords() -> set[str]:
    """The keyword names `explain_dataset` takes itself (``batch_size``, ``seed``...)."""
    from jxai import batch

    parameters = inspect.signature(batch.explain_dataset).parameters.values()
    return {p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _parse_target(text: str):
    """(target, labels): a global target for jxai.explain, or per-item labels from a file.

    Only the form is checked here; the range (``0..outputs - 1``) needs the model
    (`_check_target_range`)."""
    if text in ("max", "all"):
        return text, None
    if os.path.isfile(text):
        return "max", _read_labels(text)
    try:
        parts = [int(p) for p in text.split(",")]
    except ValueError:
        looks_like_a_file = os.sep in text or "." in os.path.basename(text)
        raise ValueError(f"--target {text}: no such labels file" if looks_like_a_file else
                         f"--target {text}: expected max, all, an integer, 'i,j,k' or a labels "
                         "file") from None
    return (parts[0] if len(parts) == 1 else tuple(parts)), None


def _read_labels(path: str) -> np.ndarray:
    """One integer class per input, from an ``.npy`` array or a text file (one a line)."""
    try:
        if path.endswith(".npy"):
            labels = np.asarray(np.load(path, allow_pickle=False)).reshape(-1)
        else:
            labels = np.loadtxt(path, dtype=np.float64, ndmin=1).reshape(-1)
    except (ValueError, OSError) as err:
        raise ValueError(f"--target {path}: not a labels file ({err}); expected an .npy "
                         "array or text with one integer a line") from None
    if labels.size and not (np.issubdtype(labels.dtype, np.number)
                            and np.all(np.isfinite(labels)) and np.all(labels == np.round(labels))):
        raise ValueError(f"--target {path}: labels must be integers (class indices), got "
                         f"{labels.dtype} values such as {labels[:3].tolist()}")
    return labels.astype(np.int64)


def _parse_size(text: str | None):
    if text is None:
        return None
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size {text}: expected HEIGHTxWIDTH, e.g. 224x224") from None
    if height < 1 or width < 1:
        raise ValueError(f"--size {text}: height and width must be >= 1")
    return height, width


def _check_target_range(network, job: _Job, flag: str) -> None:
    """Every class index (``--target i``, ``i,j,k`` or a labels file) is an output of
    ``network``: checked from one abstract trace (nothing compiled). Skipped when the model does
    not state its input shape; `jxai.explain` then checks while compiling."""
    from jxai._driver import output_size
    from jxai._targets import check_target_range

    if network.input_shape is None or (job.labels is None and isinstance(job.target, str)):
        return
    row = jax.ShapeDtypeStruct((1, *network.input_shape), np.float32)
    n_outputs = output_size(network, row)
    if job.labels is not None:
        check_target_range(job.labels, n_outputs, f"--target {flag}: label")
    else:
        check_target_range(job.target, n_outputs, "--target")


# -- the command -------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """``jxai explain``: see ``jxai explain --help``. Returns the exit status.

    Usage errors (exit 2, one line on stderr) are found in this order, each before anything
    costlier happens: the flags and the method's parameters; the inputs; the output folder
    (created, and a probe file written and removed); the model (loaded, never compiled) and the
    target classes against its output size. An error the method raises while the first batch
    is compiled (a CAM layer the network lacks) is also a usage error.
    """
    args = parse_args(_parser(), argv)
    if isinstance(args, int):
        return args
    try:
        job = _check_arguments(args)
        launch.join(args)  # several processes: jax.distributed, before anything uses a device
        created = writable_folder(args.out)
    except (ValueError, FileNotFoundError) as err:
        return usage_error(PROG, err)
    try:
        network = load_model(args.model)
    except (ValueError, OSError, KeyError, ImportError, AttributeError) as err:
        remove_if_empty(args.out, created)
        message = str(err) if args.model in str(err) else f"model {args.model}: {err}"
        return usage_error(PROG, message)
    try:
        _check_target_range(network, job, args.target)
    except ValueError as err:
        remove_if_empty(args.out, created)
        return usage_error(PROG, err)
    return _explain(args, job, network, created)


def _explain(args, job: _Job, network, created: str | None) -> int:
    """Run the checked job: stream the items through `explain_dataset`, write the outputs."""
    for_images = image_preprocess_for(network, size=job.size, channels=args.channels,
                                      mode=args.preprocess)
    for_arrays = jio.Preprocess(size=job.size, channels=args.channels,
                                mode=args.preprocess or "raw", add_channel_axis=False)

    def prepare(raw, *, is_image):
        return (for_images if is_image else for_arrays)(raw, is_image=is_image)

    items = job.items
    destination = {item.name: jio.output_path(args.out, item.name, args.format) for item in items}
    mine = [item.name for i, item in enumerate(items)
            if i % jax.process_count() == jax.process_index()]
    # processes sharing --out each remove only their own items' temporaries
    jio.remove_stale_temporaries(args.out, only=None if jax.process_count() == 1
                                 else [destination[name] for name in mine])
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
        network, items, args.method, job.target, labels=job.labels, batch_size=args.batch_size,
        preprocess=prepare, seed=args.seed, workers=args.workers,
        skip=(lambda name: name in finished) if finished else None,
        strip_output_activation=not args.keep_output_activation, autotune=args.autotune,
        **job.params)
    refused = None
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
    except ValueError as err:  # the method refused its arguments while the first step compiled
        if summary.done:
            raise
        refused = err
    finally:
        results.close()
        writer.close()  # finish the complete results already computed, then stop
        for name, error in writer.errors():
            summary.fail(name, error)
        if progress and refused is None:
            progress.update(summary.done, len(summary.failures))
            progress.close()
    if refused is not None:
        remove_if_empty(args.out, created)
        return usage_error(PROG, refused)
    summary.explained = writer.written
    summary.report(args.out)
    status = 130 if summary.interrupted else 1 if summary.failures else 0
    return launch.finish(status)  # several processes: wait for the others, report any stopped


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
