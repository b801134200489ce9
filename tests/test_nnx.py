"""Flax NNX models (`jxai.adapters.nnx`): the same relevance as their linen twins, unmutated.

Each NNX model here has a linen twin whose module names are the NNX attribute paths, so that
`jxai.adapters.nnx.linen_variables(model)` are the twin's variables. Every LRP preset and every
method of the gradient family must give the twin's result (relative difference <= 1e-6; where
the twin refuses a method, NNX refuses with the same message), in graph mode and in tree mode.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from lrp_fixtures import covering_presets

import jxai
from jxai.adapters import nnx as nnx_adapter
from jxai.rules import Epsilon, Flat, ZPlus

# --------------------------------------------------------------------------------------------
# Twins
# --------------------------------------------------------------------------------------------


class MLP(nnx.Module):
    def __init__(self, rngs):
        self.fc1 = nnx.Linear(6, 8, rngs=rngs)
        self.bn = nnx.BatchNorm(8, use_running_average=True, rngs=rngs)
        self.layers = nnx.List([nnx.Linear(8, 8, rngs=rngs), nnx.Linear(8, 3, rngs=rngs)])

    def __call__(self, x):
        x = nnx.relu(self.bn(self.fc1(x)))
        x = nnx.relu(self.layers[0](x))
        return self.layers[1](x)


class MLPTwin(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.BatchNorm(use_running_average=True, name="bn")(nn.Dense(8, name="fc1")(x)))
        x = nn.relu(nn.Dense(8, name="layers_0")(x))
        return nn.Dense(3, name="layers_1")(x)


class CNN(nnx.Module):
    def __init__(self, rngs):
        self.conv1 = nnx.Conv(1, 4, (3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(4, 4, (3, 3), rngs=rngs)
        self.fc = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x):
        x = nnx.avg_pool(nnx.relu(self.conv1(x)), (2, 2), (2, 2))
        x = nnx.max_pool(nnx.relu(self.conv2(x)), (2, 2), (2, 2))
        return self.fc(x.reshape((x.shape[0], -1)))


class CNNTwin(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.avg_pool(nn.relu(nn.Conv(4, (3, 3), name="conv1")(x)), (2, 2), (2, 2))
        x = nn.max_pool(nn.relu(nn.Conv(4, (3, 3), name="conv2")(x)), (2, 2), (2, 2))
        return nn.Dense(3, name="fc")(x.reshape((x.shape[0], -1)))


class UNet(nnx.Module):
    def __init__(self, rngs):
        self.down = nnx.Conv(1, 4, (3, 3), rngs=rngs)
        self.bottom = nnx.Conv(4, 8, (3, 3), rngs=rngs)
        self.up = nnx.ConvTranspose(8, 4, (2, 2), strides=(2, 2), rngs=rngs)
        self.out = nnx.Conv(8, 1, (1, 1), rngs=rngs)

    def __call__(self, x):
        skip = nnx.relu(self.down(x))
        x = nnx.relu(self.bottom(nnx.max_pool(skip, (2, 2), (2, 2))))
        x = jnp.concatenate([nnx.relu(self.up(x)), skip], axis=-1)
        return self.out(x).reshape((x.shape[0], -1))


class UNetTwin(nn.Module):
    @nn.compact
    def __call__(self, x):
        skip = nn.relu(nn.Conv(4, (3, 3), name="down")(x))
        x = nn.relu(nn.Conv(8, (3, 3), name="bottom")(nn.max_pool(skip, (2, 2), (2, 2))))
        x = nn.ConvTranspose(4, (2, 2), strides=(2, 2), name="up")(x)
        x = jnp.concatenate([nn.relu(x), skip], axis=-1)
        return nn.Conv(1, (1, 1), name="out")(x).reshape((x.shape[0], -1))


def linen_variables(model):
    return nnx_adapter.linen_variables(model, join="_")  # layers/0 is linen's layers_0


def perturbed(model):
    """Non-trivial BatchNorm statistics and biases (fresh ones are 0 and 1)."""
    variables = linen_variables(model)
    key = jax.random.PRNGKey(7)
    variables = jax.tree.map(
        lambda v: v + 0.2 * jax.random.normal(jax.random.fold_in(key, v.size), v.shape), variables
    )
    if "batch_stats" in variables:
        variables["batch_stats"] = jax.tree.map(jnp.abs, variables["batch_stats"])
    nnx_adapter.nnx_state_from_linen(model, variables, join="_")
    return model


TWINS = {
    "mlp": (lambda: perturbed(MLP(nnx.Rngs(0))), MLPTwin, (6,)),
    "cnn": (lambda: perturbed(CNN(nnx.Rngs(1))), CNNTwin, (8, 8, 1)),
    "unet": (lambda: perturbed(UNet(nnx.Rngs(2))), UNetTwin, (8, 8, 1)),
}

PARAMS = {
    "deep_taylor.bounded": dict(low=-4.0, high=4.0),
    "lrp.epsilon_gamma_box": dict(low=-4.0, high=4.0),
    "lrp.alpha_beta": dict(alpha=2.0),
    "lrp": dict(composite=jxai.Composite([(jxai.first_layer, Flat()), (nn.Conv, ZPlus()),
                                          (nn.Dense, Epsilon(0.1))])),
    "integrated_gradients": dict(steps=4),
    "expected_gradients": dict(n=4),
    "gradient_shap": dict(n=4),
    "smoothgrad": dict(n=3),
    "smoothgrad_sq": dict(n=3),
    "vargrad": dict(n=3),
}
METHODS = jxai.list_methods(family="lrp") + jxai.list_methods(family="gradient")


def explain_both(name, method, **params):
    make, twin, shape = TWINS[name]
    model = make()
    x = jax.random.normal(jax.random.PRNGKey(3), (2, *shape))
    params = {**PARAMS.get(method, {}), **params}
    try:
        expected = jxai.explain(twin(), linen_variables(model), x, method, **params)
    except (TypeError, ValueError) as error:
        with pytest.raises(type(error)) as raised:
            jxai.explain(model, x, method, **params)
        assert str(raised.value) == str(error)
        return None, None
    return np.asarray(jxai.explain(model, x, method, **params)), np.asarray(expected)


def assert_same(actual, expected, method):
    if actual is None:
        return
    scale = max(float(np.abs(expected).max()), 1e-30)
    assert float(np.abs(actual - expected).max()) / scale <= 1e-6, method


# --------------------------------------------------------------------------------------------
# Every method, every twin
# --------------------------------------------------------------------------------------------


@pytest.mark.slow  # ~17 methods compiled twice per twin
@pytest.mark.parametrize("name", sorted(TWINS))
def test_every_lrp_rule_and_gradient_method_equals_the_linen_twin(name):
    """Every gradient method, and the LRP presets that together assign every rule class of
    every preset (`covering_presets`; ``JXAI_EVERY_PRESET=1``: all 26)."""
    for method in covering_presets(METHODS, PARAMS):
        assert_same(*explain_both(name, method), method)


def test_cam_on_a_named_layer_equals_the_linen_twin():
    for method in jxai.list_methods(family="cam"):
        if method == "cam":  # needs global average pooling, which CNN has not: same refusal
            actual, expected = explain_both("cnn", method)
            assert actual is None
            continue
        assert_same(*explain_both("cnn", method, layer="conv2"), method)


def test_tree_mode_models_equal_the_linen_twin():
    x = jax.random.normal(jax.random.PRNGKey(3), (2, 8, 8, 1))
    with nnx.set_graph_mode(False):
        model = perturbed(CNN(nnx.Rngs(1)))
        for method in ("lrp.epsilon_plus_flat", "deep_taylor", "guided_backprop"):
            expected = jxai.explain(CNNTwin(), linen_variables(model), x, method)
            assert_same(np.asarray(jxai.explain(model, x, method)), np.asarray(expected), method)


def test_batch_pipeline_takes_an_nnx_model():
    model = perturbed(CNN(nnx.Rngs(1)))
    x = jax.random.normal(jax.random.PRNGKey(3), (5, 8, 8, 1))
    results = list(jxai.explain_dataset(jxai.as_network(model), x, "lrp.epsilon", batch_size=2))
    expected = jxai.explain(CNNTwin(), linen_variables(model), x, "lrp.epsilon")
    assert_same(np.stack([np.asarray(r.attribution) for r in results]), np.asarray(expected),
                "explain_dataset")


# --------------------------------------------------------------------------------------------
# The user's model is never mutated, nothing stays patched
# --------------------------------------------------------------------------------------------


def test_the_model_is_not_mutated_and_no_patch_outlives_the_call():
    model = perturbed(MLP(nnx.Rngs(0)))
    before = jax.tree.map(np.asarray, linen_variables(model))
    kernel = model.fc1.kernel
    calls = {cls: cls.__dict__.get("__call__") for cls in (MLP, nnx.Linear, nnx.BatchNorm)}
    x = jax.random.normal(jax.random.PRNGKey(3), (2, 6))
    jxai.explain(model, x, "lrp.epsilon_plus_flat")
    assert model.fc1.kernel is kernel
    jax.tree.map(np.testing.assert_array_equal, linen_variables(model), before)
    assert {cls: cls.__dict__.get("__call__") for cls in calls} == calls
    assert "__call__" not in nnx.Linear.__dict__ or calls[nnx.Linear] is not None

    class Broken(nnx.Module):
        def __init__(self, rngs):
            self.fc1 = nnx.Linear(6, 3, rngs=rngs)
            self.fc2 = nnx.Linear(3, 3, rngs=rngs)

        def __call__(self, x):  # sin is unknown to the relevance mode: lrp.flat refuses
            return self.fc2(jnp.sin(self.fc1(x)))

    class Raising(nnx.Module):
        def __init__(self, rngs):
            self.fc = nnx.Linear(6, 3, rngs=rngs)

        def __call__(self, x):
            self.fc(x)
            raise ValueError("this model fails in its forward pass")

    broken = Broken(nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"cannot place the operation\(s\) sin"):
        jxai.explain(broken, x, "lrp.flat")
    with pytest.raises(ValueError, match="this model fails in its forward pass"):
        jxai.explain(Raising(nnx.Rngs(0)), x, "lrp.epsilon")
    assert "__call__" in Raising.__dict__ and not hasattr(Raising.__call__, "__jxai_original__")
    assert {cls: cls.__dict__.get("__call__") for cls in calls} == calls
    assert "__call__" in Broken.__dict__ and Broken.__call__.__name__ == "__call__"
    assert not hasattr(Broken.__call__, "__jxai_original__")


def test_variables_are_passed_with_a_linen_module_only():
    model = MLP(nnx.Rngs(0))
    with pytest.raises(TypeError, match="MLP is an nnx.Module: it holds its variables"):
        jxai.as_network(model, {"params": {}})
    network = jxai.as_network(model)
    assert network.param_count() == sum(int(np.size(p)) for p in jax.tree.leaves(
        nnx.state(model, nnx.Param)))


# --------------------------------------------------------------------------------------------
# A small transformer: nnx.LayerNorm, nnx.MultiHeadAttention (its attention_fn placed)
# --------------------------------------------------------------------------------------------


class Block(nnx.Module):
    """Pre-norm: LayerNorm → MultiHeadAttention → residual → LayerNorm → Linear-GELU-Linear →
    residual (tests/test_transformer_rules.py's linen block, with NNX layers)."""

    def __init__(self, dim, heads, rngs, **options):
        self.ln1 = nnx.LayerNorm(dim, rngs=rngs, param_dtype=options["param_dtype"])
        self.attn = nnx.MultiHeadAttention(heads, dim, decode=False, keep_rngs=False, rngs=rngs,
                                           **options)
        self.ln2 = nnx.LayerNorm(dim, rngs=rngs, param_dtype=options["param_dtype"])
        self.fc1 = nnx.Linear(dim, 2 * dim, rngs=rngs, param_dtype=options["param_dtype"])
        self.fc2 = nnx.Linear(2 * dim, dim, rngs=rngs, param_dtype=options["param_dtype"])

    def __call__(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(nnx.gelu(self.fc1(self.ln2(x))))


class Transformer(nnx.Module):
    """Token embedding Linear, 2 blocks, mean pooling over tokens, Linear head."""

    def __init__(self, rngs, features=8, dim=16, heads=2, depth=2, classes=3, **options):
        dtype = options.setdefault("param_dtype", jnp.float32)
        self.embed = nnx.Linear(features, dim, rngs=rngs, param_dtype=dtype)
        self.blocks = nnx.List([Block(dim, heads, rngs, **options) for _ in range(depth)])
        self.head = nnx.Linear(dim, classes, rngs=rngs, param_dtype=dtype)

    def __call__(self, x):  # (batch, tokens, features)
        x = self.embed(x)
        for block in self.blocks:
            x = block(x)
        return self.head(jnp.mean(x, axis=1))


class BlockTwin(nn.Module):
    dim: int
    heads: int

    @nn.compact
    def __call__(self, x):
        x = x + nn.MultiHeadDotProductAttention(self.heads, name="attn")(nn.LayerNorm(name="ln1")(x))
        y = nn.gelu(nn.Dense(2 * self.dim, name="fc1")(nn.LayerNorm(name="ln2")(x)))
        return x + nn.Dense(self.dim, name="fc2")(y)


class TransformerTwin(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Dense(16, name="embed")(x)
        for i in range(2):
            x = BlockTwin(16, 2, name=f"blocks_{i}")(x)
        return nn.Dense(3, name="head")(jnp.mean(x, axis=1))


def linen_attention(query, key, value, is_causal=False, **kwargs):
    """``nn.dot_product_attention`` as an ``nnx.MultiHeadAttention.attention_fn``."""
    return nn.dot_product_attention(query, key, value, **kwargs)


def explain_transformer_twins(dtype, methods, **options):
    """NNX and linen relevances of the transformer twins; checks the layer kinds and that the
    NNX model (its variables, its attention_fn) and the NNX classes are left as they were."""
    model = perturbed(Transformer(nnx.Rngs(4), param_dtype=dtype, **options))  # biases != 0
    x = jax.random.normal(jax.random.PRNGKey(5), (2, 6, 8), dtype)
    variables = linen_variables(model)
    twin_params = TransformerTwin().init(jax.random.PRNGKey(0), x)["params"]
    assert jax.tree.map(jnp.shape, twin_params) == jax.tree.map(jnp.shape, variables["params"])
    context = jxai.Context(jxai.as_network(model), x.shape, x.dtype, None)
    kinds = {layer.path: layer.kind for layer in context.layers}
    assert {kinds[f"blocks/0/{name}"] for name in ("ln1", "ln2")} == {"layer_norm"}
    assert {kinds[f"blocks/1/attn/{name}"] for name in ("query", "key", "value", "out")} == {
        "dense_general"}
    assert kinds["blocks/1/attn/dot_product_attention_0"] == "attention"

    before = jax.tree.map(np.asarray, variables)
    scale, attention_fn = model.blocks[0].ln1.scale, model.blocks[0].attn.attention_fn
    calls = {cls: cls.__dict__.get("__call__") for cls in (nnx.MultiHeadAttention, nnx.LayerNorm)}
    for method in methods:
        actual = np.asarray(jxai.explain(model, x, method))
        expected = np.asarray(jxai.explain(TransformerTwin(), variables, x, method))
        assert actual.dtype == dtype
        assert float(np.abs(expected).max()) > 1e-3  # not a vacuous comparison
        yield method, actual, expected
    assert model.blocks[0].ln1.scale is scale
    assert model.blocks[0].attn.attention_fn is attention_fn
    assert {cls: cls.__dict__.get("__call__") for cls in calls} == calls
    jax.tree.map(np.testing.assert_array_equal, linen_variables(model), before)


def test_transformer_equals_the_linen_twin_and_is_not_mutated():
    """Stock nnx.MultiHeadAttention runs ``nnx.dot_product_attention``, which is
    ``jax.nn.dot_product_attention`` (its XLA path: softmax in float32, another order of
    operations) where linen runs its own: the forward passes differ by ~1e-7 relative in float32,
    which AttnLRP's ε amplifies to ~6e-5, so the stock model is compared in float64 (7e-8). With
    linen's attention function in the NNX model the float32 results are the same bit for bit."""
    with jax.enable_x64(True):
        methods = ("lrp.attn_lrp", "lrp.cp_lrp", "lrp.epsilon", "gradient")
        for method, actual, expected in explain_transformer_twins(jnp.float64, methods):
            assert_same(actual, expected, method)
    for method, actual, expected in explain_transformer_twins(
        jnp.float32, ("lrp.attn_lrp",), attention_fn=linen_attention
    ):
        np.testing.assert_array_equal(actual, expected, err_msg=method)


class FunctionalAttention(nnx.Module):
    def __init__(self, rngs):
        self.qkv = nnx.Linear(8, 8, rngs=rngs)
        self.head = nnx.Linear(8, 2, rngs=rngs)

    def __call__(self, x):  # (batch, tokens, 8): 2 heads of 4
        h = self.qkv(x).reshape(*x.shape[:2], 2, 4)
        return self.head(jnp.mean(nnx.dot_product_attention(h, h, h).reshape(x.shape), axis=1))


class FunctionalAttentionTwin(nn.Module):
    """``jax.nn.dot_product_attention``: what ``nnx.dot_product_attention`` runs without dropout."""

    @nn.compact
    def __call__(self, x):
        h = nn.Dense(8, name="qkv")(x).reshape(*x.shape[:2], 2, 4)
        h = jax.nn.dot_product_attention(h, h, h).reshape(x.shape)
        return nn.Dense(2, name="head")(jnp.mean(h, axis=1))


def test_functional_nnx_dot_product_attention_is_an_attention_layer():
    model = perturbed(FunctionalAttention(nnx.Rngs(0)))
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 8))
    context = jxai.Context(jxai.as_network(model), x.shape, x.dtype, None)
    assert {layer.path: layer.kind for layer in context.layers} == {
        "qkv": "dense", "dot_product_attention_0": "attention", "mean_0": "global_avg_pool",
        "head": "dense"}
    for method in ("lrp.attn_lrp", "lrp.cp_lrp"):
        expected = jxai.explain(FunctionalAttentionTwin(), linen_variables(model), x, method)
        assert_same(np.asarray(jxai.explain(model, x, method)), np.asarray(expected), method)


class Norms(nnx.Module):
    def __init__(self, rngs):
        self.proj = nnx.Linear(6, 8, rngs=rngs)
        self.rms = nnx.RMSNorm(8, rngs=rngs)
        self.gn = nnx.GroupNorm(8, num_groups=2, rngs=rngs)
        self.head = nnx.Linear(8, 2, rngs=rngs)

    def __call__(self, x):  # (batch, tokens, 6)
        x = self.gn(nnx.silu(self.rms(self.proj(x))))
        return self.head(jnp.mean(x, axis=1))


class NormsTwin(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.silu(nn.RMSNorm(name="rms")(nn.Dense(8, name="proj")(x)))
        x = nn.GroupNorm(num_groups=2, name="gn")(x)
        return nn.Dense(2, name="head")(jnp.mean(x, axis=1))


def test_rmsnorm_and_groupnorm_equal_the_linen_twin():
    model = perturbed(Norms(nnx.Rngs(0)))
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 4, 6))
    context = jxai.Context(jxai.as_network(model), x.shape, x.dtype, None)
    assert {layer.path: layer.kind for layer in context.layers if layer.path in ("rms", "gn")} == {
        "rms": "rms_norm", "gn": "group_norm"}
    for method in ("lrp.attn_lrp", "lrp.epsilon", "gradient"):
        expected = jxai.explain(NormsTwin(), linen_variables(model), x, method)
        assert_same(np.asarray(jxai.explain(model, x, method)), np.asarray(expected), method)


# --------------------------------------------------------------------------------------------
# Token models: nnx.Embed reads integer ids (relevance per token), as linen's nn.Embed does
# --------------------------------------------------------------------------------------------


class TokenModel(nnx.Module):
    """nnx.Embed → a transformer block → mean over tokens → Linear head."""

    def __init__(self, rngs, vocab=20, dim=8, **options):
        dtype = options.setdefault("param_dtype", jnp.float32)
        self.embed = nnx.Embed(vocab, dim, rngs=rngs, param_dtype=dtype)
        self.blocks = nnx.List([Block(dim, 2, rngs, **options)])
        self.head = nnx.Linear(dim, 3, rngs=rngs, param_dtype=dtype)

    def __call__(self, ids):  # (batch, tokens) integer
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x)
        return self.head(jnp.mean(x, axis=1))


class TokenModelTwin(nn.Module):
    @nn.compact
    def __call__(self, ids):
        x = nn.Embed(20, 8, name="embed")(ids)
        x = BlockTwin(8, 2, name="blocks_0")(x)
        return nn.Dense(3, name="head")(jnp.mean(x, axis=1))


# jxai.explain's defaults, as a user calls it: the search for a final softmax traces the ids as
# integers (an Embed, linen's and NNX's alike, refuses float input).
TOKENS: dict = {}


def token_twins(dtype, **options):
    model = perturbed(TokenModel(nnx.Rngs(3), param_dtype=dtype, **options))
    ids = jax.random.randint(jax.random.PRNGKey(4), (2, 4), 0, 20)
    return model, ids, linen_variables(model)


def test_nnx_embed_reads_integer_ids_like_the_linen_twin():
    """Stock nnx attention in float64: every relevance per token equals the linen twin's."""
    with jax.enable_x64(True):
        model, ids, variables = token_twins(jnp.float64)
        context = jxai.Context(jxai.as_network(model), ids.shape, ids.dtype, None)
        embed = [layer for layer in context.layers if layer.path == "embed"]
        assert embed[0].kind == "embed" and embed[0].fed_by_input
        for method in ("input_t_gradient", "gradient", "lrp.attn_lrp", "lrp.cp_lrp"):
            actual = np.asarray(jxai.explain(model, ids, method, **TOKENS))
            expected = np.asarray(jxai.explain(TokenModelTwin(), variables, ids, method, **TOKENS))
            assert actual.shape == ids.shape and actual.dtype == np.float64, method
            assert np.abs(expected).min() > 0, method  # every token counts
            assert_same(actual, expected, method)


@pytest.mark.slow  # the covering presets compiled twice
def test_every_lrp_rule_on_token_ids_equals_the_linen_twin():
    """With linen's attention function in the NNX model the float32 forward passes are the same
    bit for bit, so every preset (or its refusal, if one refuses ids) is too: the presets that
    assign every rule class (`covering_presets`; ``JXAI_EVERY_PRESET=1``: all of them)."""
    model, ids, variables = token_twins(jnp.float32, attention_fn=linen_attention)
    compared = 0
    methods = covering_presets(jxai.list_methods(family="lrp"), PARAMS)
    for method in methods:
        params = {**PARAMS.get(method, {}), **TOKENS}
        try:
            expected = jxai.explain(TokenModelTwin(), variables, ids, method, **params)
        except (TypeError, ValueError) as error:
            with pytest.raises(type(error)) as raised:
                jxai.explain(model, ids, method, **params)
            assert str(raised.value) == str(error), method
            continue
        actual = np.asarray(jxai.explain(model, ids, method, **params))
        assert actual.shape == ids.shape, method
        np.testing.assert_array_equal(actual, np.asarray(expected), err_msg=method)
        compared += 1
    assert compared == len(methods)  # every preset runs on ids (a refusal must be the twin's)


# --------------------------------------------------------------------------------------------
# nnx.Einsum: a linear layer (kind "einsum", as linen's nn.Einsum)
# --------------------------------------------------------------------------------------------


class EinsumNet(nnx.Module):
    """nnx.Einsum (6 → 2 heads × 3, bias per head and unit) → flatten → Linear."""

    def __init__(self, rngs, at_call=False):
        self.at_call = at_call  # then the call's equation overrides another one given here
        self.proj = nnx.Einsum("bd,dhk->bkh" if at_call else "bd,dhk->bhk", (6, 2, 3), (2, 3),
                               rngs=rngs, param_dtype=jnp.float64)
        self.head = nnx.Linear(6, 3, rngs=rngs, param_dtype=jnp.float64)

    def __call__(self, x):
        h = self.proj(x, einsum_str="bd,dhk->bhk") if self.at_call else self.proj(x)
        return self.head(h.reshape(x.shape[0], -1))


class EinsumTwin(nn.Module):
    at_call: bool = False

    @nn.compact
    def __call__(self, x):
        if self.at_call:
            h = nn.Einsum((6, 2, 3), name="proj", param_dtype=jnp.float64)(x, "bd,dhk->bhk")
        else:
            h = nn.Einsum((6, 2, 3), "bd,dhk->bhk", name="proj", param_dtype=jnp.float64)(x)
        return nn.Dense(3, name="head", param_dtype=jnp.float64)(h.reshape(x.shape[0], -1))


def _oracle(x, layers, target, rule):
    """float64 NumPy LRP through affine layers ``[(W (in, out), b)]`` for one target logit:
    ε (``R_i = Σ_j x_i w_ij / (z_j + ε·sign z_j) · R_j``, sign(0) = +1) or z⁺ without bias
    (``R_i = Σ_j (x_i w_ij)⁺ / (Σ_i (x_i w_ij)⁺ + 1e-6) · R_j``, `ZPlus`'s stabiliser)."""
    activations = [x]
    for w, b in layers:
        activations.append(activations[-1] @ w + b)
    relevance = np.zeros_like(activations[-1])
    relevance[:, target] = activations[-1][:, target]
    for (w, b), a in zip(reversed(layers), reversed(activations[:-1]), strict=True):
        if rule == "epsilon":
            z = a @ w + b
            s = relevance / (z + 0.1 * np.where(z >= 0, 1.0, -1.0))
            relevance = a * (s @ w.T)
        else:
            contributions = np.maximum(a[:, :, None] * w[None], 0.0)  # (batch, in, out)
            total = contributions.sum(1, keepdims=True)
            relevance = (contributions / (total + 1e-6) * relevance[:, None, :]).sum(-1)
    return relevance


@pytest.mark.parametrize("at_call", [False, True])
def test_nnx_einsum_is_a_linear_layer_equal_to_the_oracle_and_the_linen_twin(at_call):
    """Both twins with the equation on the module, and both with it given at call time."""
    with jax.enable_x64(True):
        model = perturbed(EinsumNet(nnx.Rngs(0), at_call=at_call))
        x = jax.random.normal(jax.random.PRNGKey(1), (3, 6), jnp.float64)
        context = jxai.Context(jxai.as_network(model), x.shape, x.dtype, None)
        assert {layer.path: layer.kind for layer in context.layers} == {
            "proj": "einsum", "head": "dense"}
        params = linen_variables(model)["params"]
        layers = [(np.asarray(params["proj"]["kernel"]).reshape(6, 6),
                   np.asarray(params["proj"]["bias"]).reshape(6)),
                  (np.asarray(params["head"]["kernel"]), np.asarray(params["head"]["bias"]))]
        for name, rule in (("epsilon", Epsilon(0.1)), ("z_plus", ZPlus())):
            composite = jxai.Composite([(jxai.kinds.LINEAR, rule)])
            actual = np.asarray(jxai.explain(model, x, "lrp", composite=composite, target=1))
            expected = _oracle(np.asarray(x), layers, 1, name)
            np.testing.assert_allclose(actual, expected, rtol=1e-10, atol=1e-12, err_msg=name)
            twin = jxai.explain(EinsumTwin(at_call), linen_variables(model), x, "lrp",
                                composite=composite, target=1)
            assert_same(actual, np.asarray(twin), name)
        assert model.proj.einsum_str == ("bd,dhk->bkh" if at_call else "bd,dhk->bhk")


class Positions(nnx.Module):
    """A learned ``(1, T, D)`` position embedding added as an ``nnx.Param`` (a bias at batch 1,
    not a residual branch), then a true residual."""

    def __init__(self, rngs):
        self.proj = nnx.Linear(4, 4, rngs=rngs)
        self.pos = nnx.Param(jax.random.normal(jax.random.PRNGKey(0), (1, 3, 4)))
        self.mlp = nnx.Linear(4, 4, rngs=rngs)
        self.head = nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x):
        h = nnx.relu(self.pos[...] + self.proj(x))
        h = h + nnx.relu(self.mlp(h))
        return self.head(jnp.mean(h, axis=1))


def test_adding_an_nnx_param_is_not_a_residual_sum():
    network = jxai.as_network(Positions(nnx.Rngs(0)))
    for batch in (1, 2):
        context = jxai.Context(network, (batch, 3, 4), jnp.float32, None)
        assert [layer.kind for layer in context.layers] == [
            "dense", "activation", "dense", "activation", "sum", "global_avg_pool", "dense"], batch


# --------------------------------------------------------------------------------------------
# nnx.bridge.ToNNX: the zoo's linen transformers as NNX modules
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["llama", "bert"])
def test_zoo_transformer_wrapped_with_to_nnx_is_explained_as_its_linen_self(name):
    """The documented conversion of the zoo's linen models to NNX (``nnx.bridge.ToNNX`` +
    ``lazy_init`` + the linen parameters): explained as the linen module it runs."""
    import jxai.models as zoo

    config = dict(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                  sequence_length=6)
    if name == "llama":
        config.update(num_attention_heads=2, num_key_value_heads=1)
    net = zoo.get(name, pretrained=False, key=1, **config)
    ids = jax.random.randint(jax.random.PRNGKey(0), (2, 6), 0, 50)
    model = nnx.bridge.ToNNX(net.module, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="no parameters yet: call nnx.bridge.lazy_init"):
        jxai.explain(model, ids, "gradient", target=1)
    nnx.bridge.lazy_init(model, ids)
    nnx.update(model, net.variables["params"])
    np.testing.assert_allclose(model(ids), net.module.apply(net.variables, ids), rtol=1e-6)
    kwargs = {"target": 7, "position": 5} if name == "llama" else {"target": 1}
    for method in ("gradient", "lrp.attn_lrp"):
        np.testing.assert_array_equal(np.asarray(jxai.explain(model, ids, method, **kwargs)),
                                      np.asarray(jxai.explain(net, ids, method, **kwargs)),
                                      err_msg=method)
