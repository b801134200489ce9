"""`jxai.explain` and `make_explainer`: the entry points that run a method on a network.

`explain` checks the call (the input, the method and its parameters, the target), asks the
scheduler how to lay the batch out (`jxai._schedule`: one sample at a time on CPU, the CPU
cores), and calls the compiled explanation (`jxai._compile`, cached on everything static).
What a method is and receives is the contract in `jxai.contract`; the built-in methods are in
`jxai.methods`.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jxai import _compile, _schedule, _xla_cpu, cpu
from jxai._checks import memo
from jxai._engine import discover
from jxai._params import accepted_params, check_params, check_required, resolve_method
from jxai._targets import parse_target, takes_output_index, token_target
from jxai.contract import Backward, Context, get_method, list_methods, register_method
from jxai.network import Network, as_network, find_output_activation

__all__ = [
    "Backward",
    "Context",
    "check_not_empty",
    "check_params",
    "check_required",
    "explain",
    "list_methods",
    "make_explainer",
    "output_size",
    "register_method",
    "resolve_method",
]


def model_input_names(network: Network) -> tuple[tuple[str, ...], bool]:
    """The keyword inputs of the model's ``__call__`` after the explained one (``attention_mask``,
    ``token_type_ids``...), and whether it also takes any other (``**kwargs``). Read from the
    linen module's or NNX model's class; a plain function of a batch takes none."""
    module = network.module
    cls = getattr(getattr(module, "graphdef", None), "type", None)  # an NNX model's class
    cls = cls if isinstance(cls, type) else type(module)
    if isinstance(module, nn.Module) or cls is not type(module):
        try:
            parameters = list(inspect.signature(cls.__call__).parameters.values())[2:]
        except (TypeError, ValueError):
            return (), True
        names = tuple(p.name for p in parameters
                      if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
        return names, any(p.kind is p.VAR_KEYWORD for p in parameters)
    return (), False


def split_model_inputs(network: Network, method, params: dict, batch: int,
                       owner: str = "explain") -> tuple[dict, dict]:
    """``(model inputs, method parameters)``: the keywords the method does not take and the
    model's ``__call__`` does are inputs of the model (``attention_mask=mask``), one row per
    sample. Each must be an array with the batch size of ``x`` first (a ValueError otherwise);
    a keyword neither takes is a TypeError listing both (`check_params`)."""
    names, anything = model_input_names(network)
    if not params or not names and not anything:
        return {}, params
    if isinstance(method, str):
        accepted = accepted_params(method, params)
    else:
        spec = get_method(method)
        accepted = None if spec.params is None or spec.forwards else list(spec.params)
    inputs = {}
    for name, value in params.items():
        if accepted is not None and name in accepted:
            continue
        if name in names or anything and accepted is not None and _is_batch_array(value, batch):
            inputs[name] = _check_model_input(name, value, batch, owner)
    rest = {k: v for k, v in params.items() if k not in inputs}
    if isinstance(method, str):
        check_params(method, rest, owner, model_inputs=names)
    return inputs, rest


def _is_batch_array(value, batch: int) -> bool:
    return isinstance(value, jax.Array | np.ndarray) and value.ndim >= 1 and value.shape[0] == batch


def _check_model_input(name: str, value, batch: int, owner: str):
    if isinstance(value, list | tuple):
        value = np.asarray(value)
    if not isinstance(value, jax.Array | np.ndarray):
        raise TypeError(
            f"{owner}: model input {name}={value!r} is not an array: inputs passed by name are "
            f"per-sample arrays, batch first ({batch}, ...); set a fixed option of the model "
            "on the module itself (an attribute, or functools.partial of its __call__)")
    if value.ndim == 0 or value.shape[0] != batch:
        raise ValueError(
            f"{owner}: model input {name} has shape {tuple(value.shape)} but x has {batch} "
            f"sample{'' if batch == 1 else 's'}: it needs one row per sample, shape "
            f"({batch}, ...)")
    return value if isinstance(value, jax.core.Tracer) else jnp.asarray(value)


def _check_input(x, network: Network, inputs=None):
    if isinstance(x, list | tuple):
        x = np.asarray(x)
    if not isinstance(x, jax.Array | np.ndarray):
        raise TypeError(f"x must be an array (batch first), got {type(x).__name__}")
    if jnp.issubdtype(x.dtype, jnp.integer) and _reads_token_ids(network, x, inputs):
        return _check_token_ids(x, network)  # token ids: explained at their nn.Embed
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = jnp.asarray(x, jnp.float32)
    _check_not_token_model(x, network)
    expected = network.input_shape
    if expected is not None and tuple(x.shape[1:]) != tuple(expected):
        if tuple(x.shape) == tuple(expected):
            hint = "add a batch axis: x[None]"
        else:
            hint = f"reshape or resize the input to (batch, {', '.join(map(str, expected))})"
        raise ValueError(
            f"input of shape {tuple(x.shape)} does not fit {network!r}, which expects "
            f"(batch, {', '.join(map(str, expected))}); {hint}"
        )
    if x.ndim < 2:
        raise ValueError(f"x must have a batch axis first, got shape {tuple(x.shape)}")
    check_not_empty(x)
    if isinstance(x, jax.core.Tracer):  # inside the caller's jit: values are not known yet
        return x
    if bool(jnp.all(jnp.isfinite(x))):  # one boolean leaves the device, not the batch
        return jnp.asarray(x)
    finite = np.isfinite(np.asarray(x))
    bad = np.argwhere(~finite)[0]
    raise ValueError(
        f"input contains NaN or inf ({int((~finite).sum())} values, first at index "
        f"{tuple(int(i) for i in bad)}); clean or mask the input before explaining it"
    )


def _reads_token_ids(network: Network, x, inputs=None) -> bool:
    """Whether an ``nn.Embed`` of ``network`` reads the integer input ``x`` (one cached trace);
    other integer inputs are numbers, cast to float32 as before."""
    if x.ndim < 2 or x.shape[0] == 0:
        return False  # the float path's checks say what is wrong
    try:
        facts = discover(network, tuple(x.shape), x.dtype, inputs or {})
    except Exception:  # noqa: BLE001 - a model that cannot take ints: treat them as numbers
        return False
    return any(layer.kind == "embed" and layer.fed_by_input for layer in facts.layers)


def _check_token_ids(x, network: Network):
    """Integer ids stay integer (an ``nn.Embed`` reads them; no NaN check: ints have none)."""
    expected = network.input_shape
    if expected is not None and tuple(x.shape[1:]) != tuple(expected):
        if tuple(x.shape) == tuple(expected):
            raise ValueError(f"token ids of shape {tuple(x.shape)} have no batch axis; "
                             "add one: x[None]")
        if x.ndim != len(expected) + 1:  # another sequence length is fine, another rank is not
            raise ValueError(f"token ids of shape {tuple(x.shape)} do not fit {network!r}, which "
                             f"expects (batch, {', '.join(map(str, expected))})")
    if x.ndim < 2:
        raise ValueError(f"x must have a batch axis first, got shape {tuple(x.shape)}")
    check_not_empty(x)
    return x if isinstance(x, jax.core.Tracer) else jnp.asarray(x)


def _check_not_token_model(x, network: Network):
    """A float array given to a model whose metadata says it reads integer token ids."""
    dtype = (network.metadata or {}).get("input_dtype")
    if dtype is not None and jnp.issubdtype(jnp.dtype(dtype), jnp.integer):
        raise ValueError(
            f"{network!r} reads integer token ids (metadata input_dtype {dtype}), got a "
            f"{x.dtype} input: pass the ids as integers (x.astype(jnp.{dtype})); to explain "
            "embeddings, explain a module that takes them (inputs_embeds)"
        )


# and every LRP method (family "lrp"); the last four work in embedding space (at the Embed output)
TOKEN_METHODS = ("gradient", "input_t_gradient", "integrated_gradients", "smoothgrad",
                 "smoothgrad_sq", "vargrad", "attention_rollout")


def _check_token_method(method, spec) -> None:
    """Integer token ids are explained at their embedding by `TOKEN_METHODS` and LRP only: the
    other methods perturb or mask the input itself, meaningless for ids."""
    if not isinstance(method, str) or spec.family == "lrp" or method in TOKEN_METHODS:
        return
    raise ValueError(
        f"{method!r} cannot explain integer token ids: it interpolates, perturbs or masks the "
        f"input itself. On ids use {', '.join(TOKEN_METHODS)} or an LRP method (relevance per "
        f"token, at the nn.Embed output); for {method!r}, explain a module that takes the "
        "embeddings (inputs_embeds, float (B, T, D)) instead"
    )


def check_not_empty(x) -> None:
    """A ValueError for a batch without rows (JAX would fail deep inside with a division by
    zero): there is nothing to explain."""
    if x.shape[0] == 0:
        raise ValueError(
            f"empty batch: x has 0 rows (shape {tuple(x.shape)}); pass at least one sample, "
            "batch first (one sample: x[None])"
        )


def output_size(network: Network, x, inputs=None) -> int:
    """How many outputs ``network`` gives per sample on rows shaped like ``x``'s: the flattened
    output size, so the valid target indices are ``0..output_size - 1`` (cached; one abstract
    trace of one row, also when ``x`` is a tracer). ``inputs``: the model's other inputs."""
    return int(np.prod(sample_output_shape(network, x, inputs), dtype=np.int64))


def sample_output_shape(network: Network, x, inputs=None) -> tuple:
    """The shape of one sample's output (cached, as `output_size`)."""
    row = jax.ShapeDtypeStruct((1, *x.shape[1:]), x.dtype)
    extra = {name: jax.ShapeDtypeStruct((1, *jnp.shape(v)[1:]), jnp.result_type(v))
             for name, v in (inputs or {}).items()}
    specs = tuple(sorted((n, s.shape, jnp.dtype(s.dtype)) for n, s in extra.items()))
    key = (network.module_key, network.skip, row.shape, jnp.dtype(row.dtype), *specs)
    return memo(_OUTPUT_SHAPES, key,
                lambda: tuple(_schedule.output_shape(network, row, extra)[1:]))


_OUTPUT_SHAPES: dict = {}


def _is_sequence_output(network: Network, x, inputs) -> bool:
    """Token ids whose output has a position axis: ``(B, T, V)`` logits (a language model)."""
    if not jnp.issubdtype(x.dtype, jnp.integer) or x.ndim != 2:
        return False
    shape = sample_output_shape(network, x, inputs)
    return len(shape) == 2 and shape[0] == x.shape[1]


def resolve_target(network: Network, x, target, seed: str, position=None, inputs=None):
    """``(Target, multi)`` for ``explain(..., target=, position=)`` on ``x``: token targets
    (`jxai._targets.token_target`) for a sequence output on ids, else `parse_target`."""
    inputs = inputs or {}
    if _is_sequence_output(network, x, inputs):
        length, vocab = sample_output_shape(network, x, inputs)
        mask = inputs.get("attention_mask")
        if mask is not None and tuple(mask.shape) != tuple(x.shape):
            mask = None
        return token_target(target, position, x.shape[0], length, vocab, mask, seed)
    if position is not None:
        raise ValueError(
            "position= picks a token position of a model whose output has one per input token "
            "(a language model's (B, T, vocab) logits on integer ids); this model's output per "
            f"sample has shape {sample_output_shape(network, x, inputs)}: drop position=")
    n_outputs = output_size(network, x, inputs) if takes_output_index(target) else None
    return parse_target(target, x.shape[0], seed, n_outputs)


def explain(
    model,
    *args,
    method=None,
    target="max",
    key=None,
    seed: str = "logit",
    return_layers: bool = False,
    strip_output_activation: bool = True,
    micro_batch: int | str | None = "auto",
    position=None,
    **params,
):
    """Explain ``model``'s prediction on ``x`` with ``method``.

    Call as ``explain(network, x, method, ...)`` with a `jxai.Network`, or
    ``explain(module, variables, x, method, ...)`` with a Flax module, or
    ``explain(trees, x, "tree_shap")`` with a `jxai.trees.TreeEnsemble` (`jxai.trees.explain`).

    Args:
      method: a registered name (``jxai.list_methods()``), a `Composite`, or a callable
        ``fn(ctx, x, target, **params)``.
      target: what to explain, as an index into the flattened output of one sample:
        ``"max"`` (per-sample argmax); an int (every sample); a 1-D int array, list or tuple of
        length B (ALWAYS one index per sample, Captum's convention; another length is an error);
        several targets at once with ``jxai.several(i, j, ...)`` (the same T indices for every
        sample, a ``(T, 1)`` array) or a ``(T, B)`` int array, returning ``(T, B, ...)``;
        ``"all"`` (the sum of every output); a float array shaped like the output (the output
        cotangent, e.g. a segmentation mask); or a callable of the output. An index outside
        ``0..N-1`` (N outputs per sample) is a ValueError naming N; negative indices are errors
        too (they do not count from the end). Inside your own ``jit`` a traced index cannot be
        checked: out of range, it selects no output and explains zeros.
      key: a `jax.random` key for stochastic methods (default ``PRNGKey(0)``).
      seed: initial relevance: ``"logit"`` (the target logit; iNNvestigate, Captum) or ``"one"``.
      return_layers: LRP methods only: also return ``{module path: relevance at its output}``.
      strip_output_activation: explain a final softmax/sigmoid `jxai.layers.Activation` at its
        input, the logits (iNNvestigate's ``model_wo_softmax``, Captum's usual practice).
      micro_batch: explain the batch in groups of this many samples, one group after another
        inside the compiled call (``lax.map``); ``None``, or a size that does not divide the
        batch, explains it whole. ``"auto"`` (default) is 1 on CPU for a network with
        convolutions, and ``None`` on accelerators, for dense-only networks, sharded inputs,
        array parameters and callable targets (XLA:CPU's convolutions get slower per sample as
        the batch grows while one sample keeps both cores busy: ``benchmarks/README_batch.md``).
        Group ``g`` of a stochastic method draws from ``fold_in(key, g)``. When the host is split into
        several CPU devices (`jxai.use_cpu_cores`), the groups are spread over them, and so are
        the chunks of IG, SmoothGrad and the other wrappers (`jxai.cpu`).
      position: for a model whose output has one row per input token (a language model's
        ``(B, T, vocab)`` logits on integer ids): the position whose logit ``target`` names;
        ``target`` is then a token id ``0..vocab-1`` (or several, `jxai.several`; ``"max"``:
        the predicted token). Default: each sample's last real token (the last with
        ``attention_mask != 0``); ``p >= 0`` the position ``p``; ``p < 0`` counts back from the
        last real token (``-1`` is it); or a ``(B,)`` int array. Out of range: ValueError.
      **params: method parameters (``epsilon=0.1``, ``steps=64``, ``layer="block5_conv3"``...);
        numbers, strings and tuples are static, arrays are traced. A keyword the method does
        not take and the model's ``__call__`` does is an input of the model, per sample:
        ``explain(net, input_ids, "lrp.attn_lrp", attention_mask=mask, token_type_ids=types)``
        (arrays of ``x``'s batch size, cut with ``x`` into the scheduler's groups, traced: their
        shapes, never their values, key the compiled function). With ``attention_mask`` (its
        shape that of the ids), padded tokens (mask 0) get exactly zero relevance.

    Returns:
      The attribution, shaped like ``x`` (CAM methods: see their docs), as a `jax.Array`.

    Raises:
      ValueError: for an empty batch (``x`` with 0 rows: nothing to explain), an input that does
        not fit the network or holds NaN/inf, and a target out of range or of the wrong length.
    """
    from jxai.trees.explain import explain_if_trees  # a TreeEnsemble with tree_shap: jxai.trees

    done = explain_if_trees(model, args, method, target=target, key=key, seed=seed,
                            return_layers=return_layers, **params)
    if done is not NotImplemented:
        return done
    network, x, method = _parse_call(model, args, method)
    spec = get_method(method)  # an unknown name: a clear error, before compiling
    inputs, params = split_model_inputs(network, method, params, _batch_of(x))
    x = _check_input(x, network, inputs)
    if strip_output_activation:
        network = _logits_network(network, x, inputs)
    if jnp.issubdtype(x.dtype, jnp.integer):
        _check_token_method(method, spec)
    if isinstance(method, str):
        check_params(method, params)
        check_required(method, params)
    static, traced = _compile.split_params(params, spec.static_arrays)
    target_obj, multi = resolve_target(network, x, target, seed, position, inputs)
    if key is None:
        key = jax.random.PRNGKey(0)
    platform = _xla_cpu.platform_of(x)
    with _xla_cpu.running_on(platform):
        rows = _schedule.row_groups(micro_batch, method, x, traced, target_obj.kind, network)
    static_args = (
        network.module_key,
        network.skip,
        method,
        static,
        multi,
        return_layers,
        target_obj.kind,
        target_obj.seed,
        target_obj.fn,
        rows,
        platform,
    )
    args = (network.variables, x, target_obj.data, key, traced, inputs)
    mesh = cpu.mesh_for(x)  # several CPU devices: share samples / chunks out between them
    if mesh is not None and not _compile.shares_work(static_args, mesh, *args):
        mesh = None  # nothing to share: one device, not every device repeating the same work
    if mesh is not None:
        variables, rest = cpu.replicate(args[0], mesh), cpu.uncommitted(args[1:], mesh)
        args = (variables, *rest)
    kernels, rematerialised = None, False
    if platform == "cpu" and not isinstance(x, jax.core.Tracer):  # else the caller's jit decides
        kernels = _schedule.kernels_for(network, x)
        rematerialised = _rematerialised(network, x, inputs)
    return _compile.compiled(*static_args, mesh, kernels, rematerialised)(*args)


def _rematerialised(network: Network, x, inputs=None) -> bool:
    """Whether ``network`` runs ``jax.checkpoint`` blocks (``nn.remat``) on ``x``: then XLA:CPU
    compiles with `jxai._xla_cpu.REMAT_OPTIONS`. False when the discovery cannot trace it (the
    method reports that itself)."""
    try:
        return discover(network, tuple(x.shape), x.dtype, inputs or {}).rematerialised
    except (TypeError, ValueError):
        return False


def _logits_network(network: Network, x, inputs=None) -> Network:
    """The network without a final softmax/sigmoid module (found by tracing, so always current).

    The trace is the one the compiled explanation needs anyway (same input shape, dtype and
    model inputs: cached)."""
    path = find_output_activation(network, tuple(x.shape), x.dtype, inputs or ())
    if path is None:
        return network
    return Network(network.module, network.variables, network.metadata, network.skip | {path})


def make_explainer(model, method, *, target="max", seed: str = "logit", position=None,
                   **params) -> Callable:
    """A pure function ``f(variables, x, key=None, **inputs) -> attribution`` to use inside your
    own `jax.jit`, `jax.vmap` or training loop (rules compile together with your code).

    ``target`` is fixed here: ``"max"``, ``"all"``, an int or a callable of the output. An int
    is checked against the output size when ``f`` is traced; so is the batch (0 rows: a
    ValueError). ``inputs``: the model's other inputs by name, one row per sample
    (``f(variables, ids, attention_mask=mask)``; padded tokens get zero relevance), and
    ``position`` the token position of a language model's target, as in `jxai.explain`.

    Your ``jit`` chooses the compiler options: on CPU, for a model with ``nn.remat`` /
    ``jax.checkpoint`` blocks, pass ``compiler_options=jxai.cpu.compiler_options(None,
    rematerialised=True)`` (what `jxai.explain` does), or XLA:CPU merges the recomputation back
    into the forward pass and the blocks save no memory.
    """
    from jxai._compile import _mask_padding

    module = model.module if isinstance(model, Network) else model
    skip = model.skip if isinstance(model, Network) else frozenset()
    method_fn = get_method(method).fn
    names, anything = model_input_names(Network(module, {"params": {}}, skip=skip))

    def f(variables, x, key=None, **inputs):
        network = Network(module, variables, skip=skip)
        check_not_empty(x)
        unknown = [n for n in inputs if n not in names] if not anything else []
        if unknown:
            close = difflib.get_close_matches(unknown[0], names, n=1)
            raise TypeError(f"make_explainer: the model takes no input {unknown[0]!r}; "
                            + (f"did you mean {close[0]!r}? " if close else "")
                            + f"model inputs: {', '.join(names) or 'none'}")
        inputs = {n: _check_model_input(n, v, x.shape[0], "make_explainer")
                  for n, v in inputs.items()}
        target_obj, _ = resolve_target(network, x, target, seed, position, inputs)
        ctx = Context(network, tuple(x.shape), x.dtype,
                      jax.random.PRNGKey(0) if key is None else key, inputs)
        target_obj = target_obj.pinned(ctx.forward(x)[0]) if target_obj.kind == "max_at" else (
            target_obj)
        return _mask_padding(method_fn(ctx, x, target_obj, **params), x, inputs)

    return f


def _batch_of(x) -> int:
    """The batch size of ``x`` (before its checks; 0 when it has no leading axis)."""
    shape = np.shape(x) if not isinstance(x, jax.Array | np.ndarray) else x.shape
    return int(shape[0]) if len(shape) else 0


def _parse_call(model, args, method):
    args = list(args)
    if isinstance(model, Network):
        network = model
    elif callable(model) and not isinstance(model, nn.Module):  # a plain function of a batch
        network = as_network(model)
    else:
        if not args:
            raise TypeError("explain(module, variables, x, method): variables are missing")
        network = as_network(model, args.pop(0))
    if not args:
        raise TypeError("explain needs the input x")
    x = args.pop(0)
    if args:
        if method is not None:
            raise TypeError("method given both positionally and as a keyword")
        method = args.pop(0)
    if args:
        raise TypeError(f"explain got unexpected positional arguments: {args}")
    if method is None:
        raise TypeError("explain needs a method, e.g. explain(network, x, 'lrp.epsilon')")
    return network, x, method
