"""AttnLRP / CP-LRP rules against float64 numpy oracles of their paper formulas, conservation
properties, and a small stock-linen transformer explained with every LRP preset.

Formulas (R_out = z ⊙ g in the gradient × input convention, R_in = a ⊙ c):
LayerNorm with σ held constant (AttnLRP Prop. 3.4, Ali et al. 2022): R_j = Σ_k x_j J̃_kj g_k,
J̃ = diag(γ/σ)(I − 11ᵀ/N); identity rule (AttnLRP Eq. 9): R_in = R_out; uniform rule (Prop. 3.2/3.3):
R_a = R_b = R/2, R_A = A ⊙ ((R/2Z) Bᵀ); softmax (Prop. 3.1): R_in = x ⊙ (R − s ΣR);
attention: the chain of those; CP-LRP: A constant, R_v = v ⊙ Aᵀ(R/z).
"""

from __future__ import annotations

import contextlib
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from lrp_fixtures import covering_presets

import jxai
from jxai import rules, transformer
from jxai.rules import Layer

RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _float64(request):
    """Rule tests run in float64; the model tests (``test_model_*``) in float32."""
    with jax.enable_x64(not request.node.name.startswith("test_model_")):
        yield


def _layer(fn, params, a):
    return Layer(fn, params, fn(params, a))


def _randn(*shape):
    return RNG.standard_normal(shape)


# --------------------------------------------------------------------------------------------
# Normalisation: the normaliser held constant
# --------------------------------------------------------------------------------------------


def _ln_jacobian(x, gamma, eps):
    """J̃ = diag(γ/σ)(I − 11ᵀ/N) of one row (σ held constant)."""
    n = x.size
    sigma = np.sqrt(np.mean((x - x.mean()) ** 2) + eps)
    return np.diag(gamma / sigma) @ (np.eye(n) - np.ones((n, n)) / n)


def _bound_norm(module, x):
    variables = module.init(jax.random.PRNGKey(1), x)
    variables = jax.tree.map(lambda v: v + jnp.asarray(_randn(*v.shape)), variables)
    return module.bind(variables), variables


def test_layernorm_rule_matches_the_constant_sigma_formula():
    x = _randn(3, 7)
    module, variables = _bound_norm(nn.LayerNorm(epsilon=1e-3, param_dtype=jnp.float64), x)
    fn, params = transformer.norm_view(module)
    layer = _layer(fn, params, jnp.asarray(x))
    # the view's forward is the layer's forward
    np.testing.assert_allclose(layer.output, nn.LayerNorm(epsilon=1e-3).apply(variables, x), 1e-12)
    g = _randn(3, 7)
    c = np.asarray(rules.FrozenNorm().backward(layer, jnp.asarray(x), jnp.asarray(g)))
    gamma = np.asarray(params["kernel"])
    for i in range(3):
        J = _ln_jacobian(x[i], gamma, 1e-3)
        np.testing.assert_allclose(x[i] * c[i], x[i] * (J.T @ g[i]), rtol=1e-10, atol=1e-12)
    # relevance mode: R_j = Σ_k x_j J̃_kj / z_k · R_k
    R = _randn(3, 7)
    got = np.asarray(rules.FrozenNorm().relevance(layer, jnp.asarray(x), jnp.asarray(R)))
    z = np.asarray(layer.output)
    for i in range(3):
        J = _ln_jacobian(x[i], gamma, 1e-3)
        np.testing.assert_allclose(got[i], x[i] * (J.T @ (R[i] / z[i])), rtol=1e-9, atol=1e-12)


def test_layernorm_rule_conserves_without_bias_and_loses_exactly_the_bias_share():
    x = _randn(4, 9)
    module, _ = _bound_norm(nn.LayerNorm(param_dtype=jnp.float64), x)
    fn, params = transformer.norm_view(module)
    g = _randn(4, 9)
    for with_bias in (False, True):
        p = params if with_bias else {"kernel": params["kernel"]}
        layer = _layer(fn, p, jnp.asarray(x))
        r_in = x * np.asarray(rules.FrozenNorm().backward(layer, jnp.asarray(x), jnp.asarray(g)))
        r_out = np.asarray(layer.output) * g
        bias_share = (np.asarray(params["bias"]) * g).sum(-1) if with_bias else 0.0
        np.testing.assert_allclose(r_in.sum(-1), r_out.sum(-1) - bias_share, rtol=1e-10)
    # and it is not the plain gradient (σ really is held constant)
    plain = jax.vjp(lambda a: module(a), jnp.asarray(x))[1](jnp.asarray(g))[0]
    assert np.abs(np.asarray(plain) * x - r_in).max() > 1e-3


def test_rmsnorm_rule_is_the_identity_and_groupnorm_is_layernorm_per_group():
    x = _randn(2, 8)
    module, _ = _bound_norm(nn.RMSNorm(param_dtype=jnp.float64), x)
    fn, params = transformer.norm_view(module)
    layer = _layer(fn, params, jnp.asarray(x))
    g = _randn(2, 8)
    c = rules.FrozenNorm().backward(layer, jnp.asarray(x), jnp.asarray(g))
    np.testing.assert_allclose(x * np.asarray(c), np.asarray(layer.output) * g, rtol=1e-10)

    x = _randn(2, 3, 8)  # (batch, spatial, channels), 2 groups of 4 channels
    module, variables = _bound_norm(nn.GroupNorm(num_groups=2, param_dtype=jnp.float64), x)
    fn, params = transformer.norm_view(module)
    layer = _layer(fn, params, jnp.asarray(x))
    np.testing.assert_allclose(layer.output, nn.GroupNorm(num_groups=2).apply(variables, x),
                               rtol=1e-10, atol=1e-12)
    g = _randn(2, 3, 8)
    c = np.asarray(rules.FrozenNorm().backward(layer, jnp.asarray(x), jnp.asarray(g)))
    gamma = np.asarray(params["kernel"])
    for b in range(2):
        for grp in range(2):
            cols = slice(4 * grp, 4 * grp + 4)
            xs = x[b, :, cols].ravel()  # the group's 12 values share one σ
            J = _ln_jacobian(xs, np.tile(gamma[cols], 3), 1e-6)
            np.testing.assert_allclose(c[b, :, cols].ravel(), J.T @ g[b, :, cols].ravel(),
                                       rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------------------------
# Identity rule, uniform rule
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("f", [jax.nn.gelu, jax.nn.silu])
def test_identity_rule_passes_relevance_unchanged(f):
    x = _randn(5, 6)
    x[0, :2] = 0.0
    g = _randn(5, 6)
    layer = _layer(lambda p, a: f(a), {}, jnp.asarray(x))
    fx = np.asarray(f(jnp.asarray(x)))
    c = np.asarray(rules.Pass().backward(layer, jnp.asarray(x), jnp.asarray(fx * g)))
    expected = np.where(x == 0, 0.0, g * fx / np.where(x == 0, 1.0, x))  # g · f(x)/x
    np.testing.assert_allclose(c, expected, rtol=1e-12)
    np.testing.assert_allclose(x * c, fx * g, rtol=1e-10, atol=1e-15)  # R_in = R_out
    # the functional primitive gives the same cotangent
    _, pull = jax.vjp(lambda a: transformer.identity_rule(f, a), jnp.asarray(x))
    np.testing.assert_allclose(pull(jnp.asarray(g))[0], expected, rtol=1e-12)


def test_uniform_rule_splits_a_product_equally():
    a, b, g = _randn(4, 5), _randn(4, 5), _randn(4, 5)
    layer = _layer(lambda p, ab: ab[0] * ab[1], {}, (jnp.asarray(a), jnp.asarray(b)))
    ca, cb = rules.Uniform().backward(layer, (jnp.asarray(a), jnp.asarray(b)), jnp.asarray(g))
    np.testing.assert_allclose(a * np.asarray(ca), a * b * g / 2, rtol=1e-12)
    np.testing.assert_allclose(b * np.asarray(cb), a * b * g / 2, rtol=1e-12)
    R = _randn(4, 5)
    ra, rb = rules.Uniform(stabilizer=1e-300).relevance(layer, (jnp.asarray(a), jnp.asarray(b)),
                                                         jnp.asarray(R))
    np.testing.assert_allclose(ra, R / 2, rtol=1e-9)
    np.testing.assert_allclose(rb, R / 2, rtol=1e-9)
    _, pull = jax.vjp(transformer.uniform_product, jnp.asarray(a), jnp.asarray(b))
    np.testing.assert_allclose(pull(jnp.asarray(g))[0], b * g / 2, rtol=1e-12)


def test_uniform_rule_on_a_matrix_product_is_epsilon_then_half():
    A, B, R = _randn(3, 4), _randn(4, 5), _randn(3, 5)
    layer = _layer(lambda p, ab: ab[0] @ ab[1], {}, (jnp.asarray(A), jnp.asarray(B)))
    Z = A @ B
    rA, rB = rules.Uniform(stabilizer=1e-300).relevance(layer, (jnp.asarray(A), jnp.asarray(B)),
                                                         jnp.asarray(R))
    Rn = R / (2 * Z)  # Prop. 3.3: R_A = A ⊙ (Rn Bᵀ), R_B = B ⊙ (Aᵀ Rn)
    np.testing.assert_allclose(rA, A * (Rn @ B.T), rtol=1e-9)
    np.testing.assert_allclose(rB, B * (A.T @ Rn), rtol=1e-9)
    np.testing.assert_allclose(np.sum(rA) + np.sum(rB), np.sum(R), rtol=1e-9)


# --------------------------------------------------------------------------------------------
# Softmax and attention
# --------------------------------------------------------------------------------------------


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_attnlrp_softmax_rule_is_prop_3_1_and_its_cotangent_is_the_softmax_gradient():
    x = _randn(3, 6)
    s = _softmax(x)
    layer = _layer(lambda p, a: jax.nn.softmax(a), {}, jnp.asarray(x))
    R = _randn(3, 6)
    got = rules.AttnLRPSoftmax().relevance(layer, jnp.asarray(x), jnp.asarray(R))
    np.testing.assert_allclose(got, x * (R - s * R.sum(-1, keepdims=True)), rtol=1e-10)
    g = _randn(3, 6)
    c = rules.AttnLRPSoftmax().backward(layer, jnp.asarray(x), jnp.asarray(s * g))
    np.testing.assert_allclose(c, s * (g - (s * g).sum(-1, keepdims=True)), rtol=1e-10, atol=1e-14)
    # a masked (−inf) logit gets no relevance, not NaN
    xm = x.copy()
    xm[:, 0] = -np.inf
    layer = _layer(lambda p, a: jax.nn.softmax(a), {}, jnp.asarray(xm))
    r = np.asarray(rules.AttnLRPSoftmax().relevance(layer, jnp.asarray(xm), jnp.asarray(R)))
    assert np.all(np.isfinite(r)) and np.all(r[:, 0] == 0)
    assert np.all(np.asarray(rules.CPSoftmax().relevance(layer, jnp.asarray(xm), R)) == 0)


def _attention_np(q, k, v):
    """One head: x = q kᵀ/√d, A = softmax(x), z = A v."""
    x = q @ k.T / np.sqrt(q.shape[-1])
    A = _softmax(x)
    return x, A, A @ v


def _attnlrp_chain(q, k, v, R):
    """AttnLRP's explicit rules in sequence (Prop. 3.3, 3.1, 3.3), float64, one head."""
    x, A, z = _attention_np(q, k, v)
    Rn = R / (2 * z)
    R_A, R_v = A * (Rn @ v.T), v * (A.T @ Rn)
    R_x = x * (R_A - A * R_A.sum(-1, keepdims=True))
    qs = q / np.sqrt(q.shape[-1])
    Rn2 = R_x / (2 * x)
    return qs * (Rn2 @ k), k * (Rn2.T @ qs), R_v


def _head_layer(q, k, v):
    """Flax's attention on one batch, one head: inputs (T, d) -> [1, T, 1, d]."""

    def fn(p, qkv):
        qq, kk, vv = (t[None, :, None, :] for t in qkv)
        return nn.dot_product_attention(qq, kk, vv)[0, :, 0, :]

    return _layer(fn, {}, tuple(jnp.asarray(t) for t in (q, k, v)))


def test_attention_rule_is_the_attnlrp_chain_and_its_cotangents_are_quarter_quarter_half():
    q, k, v = _randn(4, 3), _randn(5, 3), _randn(5, 3)
    R = _randn(4, 3)
    layer = _head_layer(q, k, v)
    a = tuple(jnp.asarray(t) for t in (q, k, v))
    got = rules.Attention(stabilizer=1e-300).relevance(layer, a, jnp.asarray(R))
    for mine, oracle in zip(got, _attnlrp_chain(q, k, v, R), strict=True):
        np.testing.assert_allclose(mine, oracle, rtol=1e-8, atol=1e-12)
    # gradient × input: the true VJP scaled (1/4, 1/4, 1/2), and the same relevance
    _, _, z = _attention_np(q, k, v)
    g = R / z
    true = jax.vjp(lambda *t: layer.forward(t), *a)[1](jnp.asarray(g))
    c = rules.Attention().backward(layer, a, jnp.asarray(g))
    for ci, ti, f in zip(c, true, (0.25, 0.25, 0.5), strict=True):
        np.testing.assert_allclose(ci, f * np.asarray(ti), rtol=1e-12)
    for t, ci, oracle in zip((q, k, v), c, _attnlrp_chain(q, k, v, R), strict=True):
        np.testing.assert_allclose(t * np.asarray(ci), oracle, rtol=1e-8, atol=1e-12)


def test_cp_attention_holds_the_weights_constant_and_conserves_into_the_values():
    q, k, v = _randn(4, 3), _randn(5, 3), _randn(5, 3)
    R = _randn(4, 3)
    layer = _head_layer(q, k, v)
    a = tuple(jnp.asarray(t) for t in (q, k, v))
    rq, rk, rv = rules.Attention("cp", stabilizer=1e-300).relevance(layer, a, jnp.asarray(R))
    _, A, z = _attention_np(q, k, v)
    assert np.all(np.asarray(rq) == 0) and np.all(np.asarray(rk) == 0)
    np.testing.assert_allclose(rv, v * (A.T @ (R / z)), rtol=1e-9)
    np.testing.assert_allclose(np.sum(rv), np.sum(R), rtol=1e-9)
    with pytest.raises(ValueError, match="softmax must be 'attn_lrp' or 'cp', got 'x'"):
        rules.Attention("x")


# --------------------------------------------------------------------------------------------
# A small stock-linen transformer
# --------------------------------------------------------------------------------------------


class Block(nn.Module):
    """Pre-norm block: LayerNorm → MHA → residual → LayerNorm → Dense-GELU-Dense → residual."""

    dim: int
    heads: int
    bias: bool = True

    @nn.compact
    def __call__(self, x):
        y = nn.LayerNorm(use_bias=self.bias, name="ln1")(x)
        y = nn.MultiHeadDotProductAttention(self.heads, use_bias=self.bias, name="attn")(y)
        x = x + y
        y = nn.LayerNorm(use_bias=self.bias, name="ln2")(x)
        y = nn.gelu(nn.Dense(2 * self.dim, use_bias=self.bias, name="fc1")(y))
        return x + nn.Dense(self.dim, use_bias=self.bias, name="fc2")(y)


class TinyTransformer(nn.Module):
    """Patch-embedding Dense, 2 blocks, mean pooling over tokens, Dense head."""

    dim: int = 16
    heads: int = 2
    depth: int = 2
    classes: int = 3
    bias: bool = True

    @nn.compact
    def __call__(self, x):  # x: (batch, tokens, patch features)
        x = nn.Dense(self.dim, use_bias=self.bias, name="embed")(x)
        for i in range(self.depth):
            x = Block(self.dim, self.heads, self.bias, name=f"block{i}")(x)
        return nn.Dense(self.classes, use_bias=self.bias, name="head")(jnp.mean(x, axis=1))


def _network(bias=True, seed=0, depth=2):
    module = TinyTransformer(bias=bias, depth=depth)
    x = jax.random.normal(jax.random.PRNGKey(seed + 1), (2, 6, 8), jnp.float32)
    variables = module.init(jax.random.PRNGKey(seed), x)
    if bias:  # non-zero biases and LayerNorm offsets, so the bias terms matter
        variables = jax.tree_util.tree_map_with_path(
            lambda p, v: v + 0.1 if str(p[-1].key) in ("bias",) else v, variables
        )
    return jxai.Network(module, variables), x


def _reference(variables, x, softmax="attn_lrp", target=0):
    """The transformer written by hand with LXT's efficient primitives: x ⊙ ∂y_target/∂x."""
    p = variables["params"]

    def dense(q, a):
        return a @ q["kernel"] + q.get("bias", 0.0)

    def ln(q, a):
        return transformer.frozen_layer_norm(a, q["scale"], q.get("bias"), 1e-6)

    def attention(q, a):
        def proj(name):
            return jnp.einsum("btd,dhk->bthk", a, q[name]["kernel"]) + q[name].get("bias", 0.0)

        qq, kk, vv = proj("query"), proj("key"), proj("value")
        if softmax == "attn_lrp":
            qq, kk = transformer.divide_gradient(qq, 4.0), transformer.divide_gradient(kk, 4.0)
            vv = transformer.divide_gradient(vv, 2.0)
        else:
            qq, kk = jax.lax.stop_gradient(qq), jax.lax.stop_gradient(kk)
        out = nn.dot_product_attention(qq, kk, vv)
        return jnp.einsum("bthk,hkd->btd", out, q["out"]["kernel"]) + q["out"].get("bias", 0.0)

    def f(inputs):
        h = dense(p["embed"], inputs)
        for i in range(2):
            b = p[f"block{i}"]
            h = h + attention(b["attn"], ln(b["ln1"], h))
            y = transformer.identity_rule(jax.nn.gelu, dense(b["fc1"], ln(b["ln2"], h)))
            h = h + dense(b["fc2"], y)
        return dense(p["head"], jnp.mean(h, axis=1))[:, target].sum()

    return np.asarray(x * jax.jit(jax.grad(f))(x))


@pytest.mark.parametrize("method", ["lrp.attn_lrp", "lrp.cp_lrp"])
def test_model_rules_match_a_hand_written_lxt_reference(method):
    network, x = _network()
    got = np.asarray(jxai.explain(network, x, method, epsilon=1e-9, target=0))
    softmax = "attn_lrp" if method == "lrp.attn_lrp" else "cp"
    want = _reference(network.variables, x, softmax)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    plain = np.asarray(jxai.explain(network, x, "input_t_gradient", target=0))
    assert np.abs(got - plain).max() > 0.05 * np.abs(plain).max()  # the rules really apply


def test_model_cp_lrp_conserves_and_attn_lrp_loses_exactly_what_the_softmaxes_absorb():
    """Bias-free: every rule conserves except AttnLRP's softmax (Prop. 3.1 keeps a bias term).

    The relevance missing at the input is, to 1e-4 of the logit, the sum over attention layers
    of ``Σ R_out − Σ (R_q + R_k + R_v)`` measured at the layers themselves; CP-LRP loses none.
    """
    network, x = _network(bias=False)
    ctx = jxai.Context(network, x.shape, x.dtype, None)
    target = jxai.Target(None, "max")
    attention = [f"block{i}/attn/{n}" for i in range(2)
                 for n in ("query", "key", "value", "dot_product_attention_0")]
    gaps = {}
    for composite in (jxai.composites.cp_lrp(epsilon=1e-9), jxai.composites.attn_lrp(epsilon=1e-9)):
        result = ctx.backward(x, target, composite, taps=attention)
        logit = np.asarray(target.score(result.output))
        total = np.asarray((x * result.grad).reshape(2, -1).sum(1))

        def tapped(path):
            r = result.activations[path] * result.grads[path]
            return np.asarray(r.reshape(2, -1).sum(1))

        absorbed = sum(
            tapped(f"block{i}/attn/dot_product_attention_0")
            - sum(tapped(f"block{i}/attn/{n}") for n in ("query", "key", "value"))
            for i in range(2)
        )
        np.testing.assert_allclose(total + absorbed, logit, rtol=1e-4, atol=1e-4)
        gaps[composite.name] = np.abs(logit - total) / np.abs(logit)
    assert np.all(gaps["lrp.cp_lrp"] < 1e-4)
    assert np.all(gaps["lrp.attn_lrp"] > 1e-2)  # the softmax's bias term is real, not noise


def test_model_biases_are_what_breaks_conservation_of_cp_lrp():
    network, x = _network(bias=True)
    y = np.asarray(network.module.apply(network.variables, x)).max(1)
    r = np.asarray(jxai.explain(network, x, "lrp.cp_lrp", epsilon=1e-9, target="max"))
    assert np.all(np.abs(r.reshape(2, -1).sum(1) - y) > 1e-3 * np.abs(y))


def _lrp_z_reference(variables, x, target, depth):
    """LRP-0 with the identity rule on GELU and true gradients elsewhere (lrp.z's plan here)."""
    module = TinyTransformer(depth=depth)

    def f(inputs):
        return module.apply(variables, inputs)[:, target].sum()

    with_identity = functools.partial(transformer.identity_rule, jax.nn.gelu)
    with jax.ensure_compile_time_eval(), _patched(nn, "gelu", with_identity):
        return np.asarray(x * jax.grad(f)(x))


@contextlib.contextmanager
def _patched(owner, name, value):
    old = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, old)


PRESET_PARAMS = {
    "deep_taylor.bounded": dict(low=-4.0, high=4.0),
    "lrp.epsilon_gamma_box": dict(low=-4.0, high=4.0),
    "lrp.alpha_beta": dict(alpha=2.0),
}


@pytest.mark.slow
def test_model_runs_every_lrp_preset():
    """Every registered LRP preset on the transformer (one block: every layer kind, half the
    compile time): relevance-mode presets (lrp.flat, lrp.w_square) get FrozenNorm and AttnLRP's
    attention by default; deep Taylor explains only positive logits (zero relevance for a
    negative one)."""
    network, x = _network(depth=1)
    logits = np.asarray(network.module.apply(network.variables, x))
    target = int(np.argmax(logits[0]))
    every = [n for n in jxai.list_methods(family="lrp") if n != "lrp"]
    assert {"lrp.attn_lrp", "lrp.cp_lrp", "lrp.flat", "deep_taylor"} <= set(every)
    checked = {"lrp.z", "lrp.epsilon", "lrp.attn_lrp", "deep_taylor", "deep_taylor.bounded"}
    names = sorted(set(covering_presets(every, PRESET_PARAMS)) | checked)  # every rule class
    results = {}
    for name in names:
        r = np.asarray(jxai.explain(network, x, name, target=target, **PRESET_PARAMS.get(name, {})))
        assert r.shape == x.shape and np.all(np.isfinite(r)), name
        results[name] = r
    np.testing.assert_allclose(results["lrp.z"], _lrp_z_reference(network.variables, x, target, 1),
                               rtol=1e-4, atol=1e-5 * np.abs(results["lrp.z"]).max())
    positive = logits[:, target] > 0
    for name in ("deep_taylor", "deep_taylor.bounded"):
        per_sample = np.abs(results[name]).reshape(2, -1).sum(1)
        assert np.all((per_sample > 0) == positive), name
    # the transformer rules are what makes lrp.attn_lrp, not the ε on the linear layers
    assert np.abs(results["lrp.attn_lrp"] - results["lrp.epsilon"]).max() > 0.05 * np.abs(
        results["lrp.epsilon"]).max()


class FunctionalAttention(nn.Module):
    """MHA's projections (same names and shapes) around a functional attention call."""

    dim: int
    heads: int
    function: str = "flax"
    causal: bool = False

    @nn.compact
    def __call__(self, x):
        depth = self.dim // self.heads
        q, k, v = (nn.DenseGeneral((self.heads, depth), name=n)(x) for n in ("query", "key", "value"))
        if self.function == "flax":
            mask = nn.make_causal_mask(jnp.ones(x.shape[:2])) if self.causal else None
            out = nn.dot_product_attention(q, k, v, mask=mask)
        else:
            out = jax.nn.dot_product_attention(q, k, v, is_causal=self.causal)
        return nn.DenseGeneral(self.dim, axis=(-2, -1), name="out")(out)


class CausalMHA(nn.Module):
    dim: int
    heads: int

    @nn.compact
    def __call__(self, x):
        mask = nn.make_causal_mask(jnp.ones(x.shape[:2]))
        return nn.MultiHeadDotProductAttention(self.heads, name="attn")(x, mask=mask)


@pytest.mark.parametrize(("function", "causal"), [("flax", False), ("jax", True)])
def test_model_functional_attention_is_placed_like_the_module(function, causal):
    """nn.dot_product_attention / jax.nn.dot_product_attention called in a module's code get the
    same AttnLRP relevance as nn.MultiHeadDotProductAttention with the same weights."""
    x = jax.random.normal(jax.random.PRNGKey(3), (2, 5, 8))
    mha = CausalMHA(8, 2) if causal else nn.MultiHeadDotProductAttention(2)
    variables = mha.init(jax.random.PRNGKey(4), x)
    functional = FunctionalAttention(8, 2, function, causal)
    fvars = {"params": variables["params"]["attn"] if causal else variables["params"]}
    composite = jxai.composites.attn_lrp(epsilon=1e-9)
    want = np.asarray(jxai.explain(jxai.Network(mha, variables), x, composite, target="all"))
    got = np.asarray(jxai.explain(jxai.Network(functional, fvars), x, composite, target="all"))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    net = jxai.Network(functional, fvars)
    plain = np.asarray(jxai.explain(net, x, "input_t_gradient", target="all"))
    assert np.abs(got - plain).max() > 0.05 * np.abs(plain).max()
    placed = [layer.path for layer in jxai.Context(net, x.shape, x.dtype, None).layers
              if layer.kind == "attention"]
    assert placed == ["dot_product_attention_0"]


class NormsAndEinsum(nn.Module):
    """nn.Einsum, nn.RMSNorm, nn.GroupNorm and SiLU in one model (tokens, features)."""

    @nn.compact
    def __call__(self, x):  # (batch, 4, 6)
        x = nn.Einsum((6, 8), "btd,df->btf", name="proj")(x)
        x = nn.silu(nn.RMSNorm(name="rms")(x))
        x = nn.GroupNorm(num_groups=2, name="gn")(x)
        return nn.Dense(2, name="head")(jnp.mean(x, axis=1))


def test_model_einsum_rmsnorm_groupnorm_match_a_hand_written_reference():
    x = jax.random.normal(jax.random.PRNGKey(5), (2, 4, 6))
    module = NormsAndEinsum()
    variables = module.init(jax.random.PRNGKey(6), x)
    p = variables["params"]
    kinds = {layer.path: layer.kind for layer in
             jxai.Context(jxai.Network(module, variables), x.shape, x.dtype, None).layers}
    assert kinds == {"proj": "einsum", "rms": "rms_norm", "silu_0": "activation",
                     "gn": "group_norm", "mean_0": "global_avg_pool", "head": "dense"}

    def f(inputs):
        h = jnp.einsum("btd,df->btf", inputs, p["proj"]["kernel"]) + p["proj"]["bias"]
        h = transformer.identity_rule(jax.nn.silu, transformer.frozen_rms_norm(
            h, p["rms"]["scale"]))
        grouped = h.reshape(2, 4, 2, 4)
        h = transformer.frozen_layer_norm(grouped, None, None, 1e-6, (1, 3)).reshape(h.shape)
        h = h * p["gn"]["scale"] + p["gn"]["bias"]
        return (jnp.mean(h, axis=1) @ p["head"]["kernel"] + p["head"]["bias"])[:, 1].sum()

    want = np.asarray(x * jax.grad(f)(x))
    got = np.asarray(jxai.explain(jxai.Network(module, variables), x, "lrp.attn_lrp",
                                  epsilon=1e-9, target=1))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


class GatedMLP(nn.Module):
    """RMSNorm → SwiGLU (down(silu(gate(x)) · up(x))) → residual, mean pooling, head; no biases."""

    @nn.compact
    def __call__(self, x):
        h = nn.RMSNorm(name="norm")(x)
        gated = transformer.Multiply(name="mul")(
            nn.silu(nn.Dense(12, use_bias=False, name="gate")(h)),
            nn.Dense(12, use_bias=False, name="up")(h),
        )
        x = x + nn.Dense(6, use_bias=False, name="down")(gated)
        return nn.Dense(2, use_bias=False, name="head")(jnp.mean(x, axis=1))


def test_model_gated_mlp_product_gets_the_uniform_rule_and_conserves():
    x = jax.random.normal(jax.random.PRNGKey(7), (2, 4, 6))
    module = GatedMLP()
    variables = module.init(jax.random.PRNGKey(8), x)
    network = jxai.Network(module, variables)
    p = variables["params"]

    def f(inputs):
        h = transformer.frozen_rms_norm(inputs, p["norm"]["scale"])
        gate = transformer.identity_rule(jax.nn.silu, h @ p["gate"]["kernel"])
        h = inputs + transformer.uniform_product(gate, h @ p["up"]["kernel"]) @ p["down"]["kernel"]
        return (jnp.mean(h, axis=1) @ p["head"]["kernel"])[:, 0].sum()

    want = np.asarray(x * jax.grad(f)(x))
    got = np.asarray(jxai.explain(network, x, "lrp.attn_lrp", epsilon=1e-9, target=0))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    logit = np.asarray(module.apply(variables, x))[:, 0]
    np.testing.assert_allclose(got.reshape(2, -1).sum(1), logit, rtol=1e-4)
    # lrp.epsilon (the plain gradients of the product and of the norm) does not conserve
    plain = np.asarray(jxai.explain(network, x, "lrp.epsilon", epsilon=1e-9, target=0))
    assert np.all(np.abs(plain.reshape(2, -1).sum(1) - logit) > 1e-2 * np.abs(logit))


def test_model_attention_dropout_is_refused_with_its_fix():
    class Dropping(nn.Module):
        @nn.compact
        def __call__(self, x):
            attention = nn.MultiHeadDotProductAttention(2, dropout_rate=0.1, deterministic=False)
            return attention(x, dropout_rng=jax.random.PRNGKey(1))

    x = jnp.ones((1, 3, 4))
    variables = Dropping().init(jax.random.PRNGKey(0), x)
    with pytest.raises(ValueError, match="attention dropout is on .* pass deterministic=True"):
        jxai.explain(jxai.Network(Dropping(), variables), x, "lrp.attn_lrp", target="all")
