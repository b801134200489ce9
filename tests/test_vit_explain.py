"""Explaining the zoo ViT (`jxai.models.vit`): LRP through the patch embedding, per-patch maps,
attention rollout and Grad-CAM on a block's tokens.

Oracles: the ViT written by hand in float64 (patches cut out with reshapes, attention and
LayerNorm spelled out) with LXT's efficient AttnLRP / CP-LRP (true gradient; q and k gradients
÷4 and v ÷2 at the attention (AttnLRP) or q, k held constant (CP-LRP); identity rule on GELU;
LayerNorm's σ held constant) read as x ⊙ ∂y/∂x; conservation; numpy rollout and Grad-CAM from
attention weights and block outputs captured with Flax's own seams (``capture_intermediates``).
"""

from __future__ import annotations

import functools
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jxai.models.vit import SelfAttention, ViTLayer

import jxai
from jxai import transformer

HF = Path(__file__).parent / "fixtures" / "hf"
CONFIG = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
              image_size=16, patch_size=4, num_labels=3)


@pytest.fixture(autouse=True)
def _float64(request):
    """float64 except for the ``test_fixture_*`` tests, which run the HF fixture in float32."""
    with jax.enable_x64(not request.node.name.startswith("test_fixture_")):
        yield


def _vit(seed=0, biases=0.1, constants=0.5):
    """The zoo ViT in float64 with non-zero biases (``biases``) and class token / position
    embeddings of scale ``constants`` (0: a bias-free ViT)."""
    network = jxai.models.get("vit", pretrained=False, key=jax.random.PRNGKey(seed), **CONFIG)
    rng = np.random.default_rng(seed)

    def perturb(path, v):
        name = str(path[-1].key)
        v = np.asarray(v, np.float64)
        if name == "kernel":  # unit-scale weights (HF's 0.02 makes a near-linear network)
            return v / 0.02 * (1.0 / np.sqrt(np.prod(v.shape[:-1])))
        if name == "bias":
            return biases * rng.standard_normal(v.shape)
        if name in ("cls_token", "position_embeddings"):
            return constants * rng.standard_normal(v.shape)
        if name == "scale":
            return 1.0 + 0.2 * rng.standard_normal(v.shape)
        return v

    variables = jax.tree_util.tree_map_with_path(perturb, jax.device_get(network.variables))
    network = jxai.Network(network.module, variables, network.metadata)
    x = jnp.asarray(np.random.default_rng(seed + 1).standard_normal((2, 16, 16, 3)))
    return network, x


# --------------------------------------------------------------------------------------------
# The hand-written ViT (LXT's efficient rules as custom gradients)
# --------------------------------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _scaled_gradient(x, factor):
    return x


_scaled_gradient.defvjp(lambda x, f: (x, None), lambda f, _, g: (g * f,))


@jax.custom_vjp
def _gelu_identity(x):
    return jax.nn.gelu(x, approximate=False)


def _gelu_fwd(x):
    return _gelu_identity(x), x


def _gelu_bwd(x, g):  # R_in = x · c = gelu(x) · g = R_out
    return (jnp.where(x == 0, 0.0, g * jax.nn.gelu(x, approximate=False) / jnp.where(x == 0, 1, x)),)


_gelu_identity.defvjp(_gelu_fwd, _gelu_bwd)


def _vit_reference(variables, x, target, attention="attn_lrp", frozen_norm=True, gelu="identity"):
    """x ⊙ ∂y_target/∂x of the ViT written by hand, with the chosen rules."""
    p = variables["params"]["vit"]
    head = variables["params"]["classifier"]
    size, width = CONFIG["patch_size"], CONFIG["hidden_size"]
    heads = CONFIG["num_attention_heads"]

    def dense(q, a):
        return a @ q["kernel"] + q["bias"]

    def layer_norm(q, a):
        centred = a - a.mean(-1, keepdims=True)
        inv = 1.0 / jnp.sqrt((centred**2).mean(-1, keepdims=True) + 1e-12)
        if frozen_norm:
            inv = jax.lax.stop_gradient(inv)
        return centred * inv * q["scale"] + q["bias"]

    def self_attention(q, a):
        b, t, _ = a.shape

        def split(y):
            return y.reshape(b, t, heads, width // heads)

        qq, kk, vv = (split(dense(q[n], a)) for n in ("query", "key", "value"))
        if attention == "attn_lrp":
            qq, kk, vv = _scaled_gradient(qq, 0.25), _scaled_gradient(kk, 0.25), \
                _scaled_gradient(vv, 0.5)
        elif attention == "cp":
            qq, kk = jax.lax.stop_gradient(qq), jax.lax.stop_gradient(kk)
        scores = jnp.einsum("bthd,bshd->bhts", qq, kk) / np.sqrt(width // heads)
        weights = jax.nn.softmax(scores, axis=-1)
        return jnp.einsum("bhts,bshd->bthd", weights, vv).reshape(b, t, width)

    def f(pixels):
        b, h, w, c = pixels.shape
        patches = pixels.reshape(b, h // size, size, w // size, size, c).transpose(0, 1, 3, 2, 4, 5)
        patches = patches.reshape(b, -1, size * size * c)
        conv = p["embeddings"]["patch_embeddings"]["projection"]
        tokens = patches @ conv["kernel"].reshape(-1, width) + conv["bias"]
        cls = jnp.broadcast_to(p["embeddings"]["cls_token"], (b, 1, width))
        z = jnp.concatenate([cls, tokens], 1) + p["embeddings"]["position_embeddings"]
        for i in range(CONFIG["num_hidden_layers"]):
            q = p["encoder"][f"layer_{i}"]
            attended = self_attention(q["attention"]["attention"], layer_norm(q["layernorm_before"], z))
            z = z + dense(q["attention"]["output"]["dense"], attended)
            hidden = dense(q["intermediate"]["dense"], layer_norm(q["layernorm_after"], z))
            hidden = _gelu_identity(hidden) if gelu == "identity" else jax.nn.gelu(
                hidden, approximate=False)
            z = z + dense(q["output"]["dense"], hidden)
        z = layer_norm(p["layernorm"], z)
        return dense(head, z[:, 0])[:, target].sum()

    return np.asarray(x * jax.jit(jax.grad(f))(x))


def test_hand_written_vit_is_the_zoo_vit():
    """Without the rules the hand-written ViT's x ⊙ ∂y/∂x is jxai's input × gradient."""
    network, x = _vit()
    plain = _vit_reference(network.variables, x, 1, "plain", False, "plain")
    want = np.asarray(jxai.explain(network, x, "input_t_gradient", target=1))
    np.testing.assert_allclose(plain, want, rtol=1e-9, atol=1e-12 * np.abs(want).max())
    assert np.abs(np.asarray(network.apply(x))).max() > 0.5


# --------------------------------------------------------------------------------------------
# 1. LRP through the ViT
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method,attention", [("lrp.attn_lrp", "attn_lrp"), ("lrp.cp_lrp", "cp")])
def test_transformer_rules_on_the_vit_match_the_lxt_reference(method, attention):
    network, x = _vit()
    got = np.asarray(jxai.explain(network, x, method, target=1, epsilon=1e-12))
    want = _vit_reference(network.variables, x, 1, attention)
    assert got.shape == x.shape
    np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-9 * np.abs(want).max())
    plain = np.asarray(jxai.explain(network, x, "input_t_gradient", target=1))
    assert np.abs(got - plain).max() > 0.05 * np.abs(plain).max()  # the rules really apply


def test_cp_lrp_conserves_on_a_bias_free_vit():
    """No biases, class token or positions: Σ pixel relevance = the logit (CP-LRP conserves)."""
    network, x = _vit(biases=0.0, constants=0.0)
    logits = np.asarray(network.apply(x))
    r = np.asarray(jxai.explain(network, x, "lrp.cp_lrp", target=2, epsilon=1e-12))
    np.testing.assert_allclose(r.reshape(2, -1).sum(1), logits[:, 2], rtol=1e-9)
    assert np.abs(logits[:, 2]).min() > 0.1


def test_class_token_and_positions_keep_exactly_their_share():
    """Bias-free but with class token and positions C: they are biases of the embedding layer,
    so Σ pixel relevance + Σ C ⊙ ∂y/∂z (z the embedding output) = the logit."""
    network, x = _vit(biases=0.0, constants=0.5)
    relevance, _, grads = _relevance_with_taps(network, x, jxai.Target(2, 2),
                                               jxai.composites.cp_lrp(epsilon=1e-12), "vit/embeddings")
    pixels = relevance.reshape(2, -1).sum(1)
    constants = _constants(network.variables["params"]["vit"]["embeddings"])
    share = (constants * grads).reshape(2, -1).sum(1)
    logits = np.asarray(network.apply(x))[:, 2]
    np.testing.assert_allclose(pixels + share, logits, rtol=1e-9)
    assert np.abs(share).min() > 1e-2 * np.abs(logits).max()  # the constants do take a share


def _relevance_with_taps(network, x, target, composite, tap):
    """``(input relevance, activations, cotangents)`` at layer ``tap``, compiled."""
    ctx = jxai.Context(network, x.shape, x.dtype, None)

    def run(inputs):
        relevance, result = ctx.relevance(inputs, target, composite, taps=(tap,))
        return relevance, result.activations[tap], result.grads[tap]

    return tuple(np.asarray(v) for v in jax.jit(run)(x))


def _constants(params):
    c = np.zeros_like(np.asarray(params["position_embeddings"]))
    c[:, 0] = np.asarray(params["cls_token"])[:, 0]
    return c + np.asarray(params["position_embeddings"])


PRESET_PARAMS = {
    "deep_taylor.bounded": dict(low=-4.0, high=4.0),
    "lrp.epsilon_gamma_box": dict(low=-4.0, high=4.0),
    "lrp.alpha_beta": dict(alpha=2.0),
}


# One preset per rule the others here do not reach (all of them ran on the HF fixture ViT when
# written; each compile costs seconds on the shared 2-core machine): LRP-0 and αβ (gradient
# mode), flat (relevance mode: every layer needs a rule), zB, deep Taylor (z⁺ and w²).
PRESETS_RUN = ("lrp.z", "lrp.alpha_2_beta_1", "lrp.flat", "lrp.epsilon_gamma_box", "deep_taylor")


@pytest.mark.slow
def test_fixture_lrp_presets_run_on_a_vit():
    """LRP presets on a one-block ViT (float32; every layer kind of the fixture's ViT): a finite
    map shaped like x, not all zero."""
    network = jxai.models.get("vit", pretrained=False, key=jax.random.PRNGKey(0),
                              **dict(CONFIG, num_hidden_layers=1, hidden_size=8, image_size=8))
    x = jax.random.normal(jax.random.PRNGKey(1), (1, 8, 8, 3))
    target = int(np.argmax(np.asarray(network.apply(x))[0]))  # a positive logit (deep Taylor)
    assert set(PRESETS_RUN) <= set(jxai.list_methods(family="lrp"))
    for name in PRESETS_RUN:
        r = np.asarray(jxai.explain(network, x, name, target=target,
                                    **PRESET_PARAMS.get(name, {})))
        assert r.shape == x.shape and np.all(np.isfinite(r)), name
        assert np.abs(r).max() > 0, name


def test_flat_first_layer_spreads_what_reaches_the_patch_tokens():
    """lrp.epsilon_plus_flat: Σ pixel relevance = the relevance at the patch convolution's
    output (the flat rule conserves; no more, no less reaches the pixels)."""
    network, x = _vit()
    conv = "vit/embeddings/patch_embeddings/projection"
    flat, a, g = _relevance_with_taps(network, x, jxai.Target(1, 2),
                                      jxai.composites.preset("lrp.epsilon_plus_flat"), conv)
    reaching = (a * g).reshape(2, -1).sum(1)
    np.testing.assert_allclose(flat.reshape(2, -1).sum(1), reaching, rtol=1e-7)  # Σ1 + 1e-6
    assert np.abs(reaching).min() > 1e-3
    spread = flat.reshape(2, 4, 4, 4, 4, 3).transpose(0, 1, 3, 2, 4, 5).reshape(2, 16, 48)
    np.testing.assert_allclose(spread, np.broadcast_to(spread[..., :1], spread.shape), rtol=1e-9)


def test_gamma_options_reach_the_patch_convolution():
    """attn_lrp(conv_gamma=γ): the generalised γ-rule at the patch convolution (and only there
    with gamma=None): relevance entering it is redistributed by (w + γ w⁺)."""
    network, x = _vit()
    conv = "vit/embeddings/patch_embeddings/projection"
    got, a, g = _relevance_with_taps(network, x, jxai.Target(0, 2),
                                     jxai.composites.attn_lrp(epsilon=1e-12, conv_gamma=0.25), conv)
    relevance_out = a * g  # (B, 4, 4, D)
    kernel = np.asarray(network.variables["params"]["vit"]["embeddings"]["patch_embeddings"][
        "projection"]["kernel"]).reshape(-1, CONFIG["hidden_size"])
    bias = np.asarray(network.variables["params"]["vit"]["embeddings"]["patch_embeddings"][
        "projection"]["bias"])
    xn = np.asarray(x)
    patches = xn.reshape(2, 4, 4, 4, 4, 3).transpose(0, 1, 3, 2, 4, 5).reshape(2, 16, -1)
    want = np.zeros_like(patches)
    for b in range(2):  # Zennit's generalised γ (signed inputs), with the bias in z
        a = patches[b]
        pos, neg = np.maximum(a, 0), np.minimum(a, 0)
        wp, wn = np.maximum(kernel, 0), np.minimum(kernel, 0)
        r = relevance_out[b].reshape(16, -1)
        up = pos @ (kernel + 0.25 * wp) + neg @ (kernel + 0.25 * wn)
        down = pos @ (kernel + 0.25 * wn) + neg @ (kernel + 0.25 * wp)
        up_b, down_b = bias + 0.25 * np.maximum(bias, 0), bias + 0.25 * np.minimum(bias, 0)
        positive = (a @ kernel + bias) > 0
        zs = np.where(positive, up + up_b, down + down_b)
        s = r / (zs + 1e-6 * np.where(zs >= 0, 1.0, -1.0))  # Gamma's sign-aligned stabilizer
        w_up_p, w_up_n = kernel + 0.25 * wp, kernel + 0.25 * wn
        c_pos = (s * positive) @ w_up_p.T + (s * ~positive) @ w_up_n.T
        c_neg = (s * positive) @ w_up_n.T + (s * ~positive) @ w_up_p.T
        want[b] = pos * c_pos + neg * c_neg
    want = want.reshape(2, 4, 4, 4, 4, 3).transpose(0, 1, 3, 2, 4, 5).reshape(x.shape)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-7, atol=1e-9 * np.abs(want).max())


# --------------------------------------------------------------------------------------------
# 2. Per-patch relevance and overlays
# --------------------------------------------------------------------------------------------


def _bilinear_np(maps, size):
    """Half-pixel-centre bilinear resize, separable, edges clamped (align_corners=False)."""
    def axis_weights(n_in, n_out):
        w = np.zeros((n_out, n_in))
        for i in range(n_out):
            src = min(max((i + 0.5) * n_in / n_out - 0.5, 0.0), n_in - 1)
            lo = int(np.floor(src))
            hi = min(lo + 1, n_in - 1)
            w[i, lo] += 1 - (src - lo)
            w[i, hi] += src - lo
        return w

    rows, cols = axis_weights(maps.shape[1], size[0]), axis_weights(maps.shape[2], size[1])
    return np.einsum("ih,bhw,jw->bij", rows, maps, cols)


def test_patch_relevance_sums_each_patch_and_upsample_lays_it_back():
    rng = np.random.default_rng(3)
    pixels = rng.standard_normal((2, 8, 12, 3))
    got = np.asarray(transformer.patch_relevance(pixels, 4))
    want = np.zeros((2, 2, 3))
    for i in range(2):
        for j in range(3):
            want[:, i, j] = pixels[:, 4 * i:4 * i + 4, 4 * j:4 * j + 4].sum((1, 2, 3))
    np.testing.assert_allclose(got, want, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(transformer.patch_relevance(pixels.sum(-1), (4, 4))),
                               want, rtol=1e-12)
    blocks = np.asarray(transformer.upsample(want, (8, 12), "nearest"))
    np.testing.assert_array_equal(blocks, np.kron(want, np.ones((1, 4, 4))))
    smooth = np.asarray(transformer.upsample(want, (8, 12)))
    np.testing.assert_allclose(smooth, _bilinear_np(want, (8, 12)), rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match=r"a 8×12 map is not a whole number of 5×5 patches"):
        transformer.patch_relevance(pixels, 5)


def test_lrp_patch_relevance_is_the_patch_token_relevance_minus_the_conv_bias_share():
    """cp_lrp pixel relevance summed per patch = relevance at the patch convolution's output
    summed over channels, minus bias ⊙ gradient (the conv's bias keeps its share)."""
    network, x = _vit()
    conv = "vit/embeddings/patch_embeddings/projection"
    relevance, activations, grads = _relevance_with_taps(
        network, x, jxai.Target(1, 2), jxai.composites.cp_lrp(epsilon=1e-12), conv)
    per_patch = np.asarray(transformer.patch_relevance(relevance, CONFIG["patch_size"]))
    bias = np.asarray(network.variables["params"]["vit"]["embeddings"]["patch_embeddings"][
        "projection"]["bias"])
    tokens = (activations * grads - bias * grads).sum(-1)
    np.testing.assert_allclose(per_patch, tokens, rtol=1e-8, atol=1e-12)


# --------------------------------------------------------------------------------------------
# 3. Attention rollout
# --------------------------------------------------------------------------------------------


def _attention_inputs(network, *args, **kwargs):
    """(input x, params, mask) of every SelfAttention call (the zoo's ViT and BERT), read with
    Flax's interceptor: the numpy oracle recomputes the weights from them."""
    calls = []

    def record(next_fun, call_args, call_kwargs, context):
        if isinstance(context.module, SelfAttention) and context.method_name == "__call__":
            mask = call_args[1] if len(call_args) > 1 else call_kwargs.get("mask")
            calls.append((np.asarray(call_args[0], np.float64),
                          jax.device_get(context.module.variables["params"]),
                          None if mask is None else np.asarray(mask), context.module.heads))
        return next_fun(*call_args, **call_kwargs)

    with nn.intercept_methods(record):
        network.module.apply(network.variables, *args, **kwargs)
    return calls


def _weights_np(calls):
    out = []
    for x, params, mask, heads in calls:
        def proj(name, x=x, params=params):
            y = x @ np.asarray(params[name]["kernel"], np.float64) + np.asarray(
                params[name]["bias"], np.float64)
            return y.reshape(*y.shape[:2], heads, -1)

        q, k = proj("query"), proj("key")
        scores = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(q.shape[-1])
        if mask is not None:
            scores = np.where(mask, scores, -np.inf)
        scores = scores - scores.max(-1, keepdims=True)
        e = np.exp(scores)
        out.append(e / e.sum(-1, keepdims=True))
    return out


def _rollout_np(weights, residual=0.5, fusion=np.mean):
    result = None
    for w in weights:
        a = (1 - residual) * fusion(w, axis=1) + residual * np.eye(w.shape[-1])
        a = a / a.sum(-1, keepdims=True)
        result = a if result is None else np.einsum("bij,bjk->bik", a, result)
    return result


def test_attention_rollout_on_the_vit_matches_numpy():
    from jxai.methods.rollout import attention_weights

    network, x = _vit()
    weights = _weights_np(_attention_inputs(network, x))
    assert len(weights) == CONFIG["num_hidden_layers"]
    got_weights = attention_weights(network, x)
    for g, w in zip(got_weights, weights, strict=True):
        np.testing.assert_allclose(np.asarray(g), w, rtol=1e-10, atol=1e-13)
    flow = _rollout_np(weights)[:, 0, 1:].reshape(2, 4, 4)
    got = np.asarray(jxai.explain(network, x, "attention_rollout", resize=False))
    np.testing.assert_allclose(got, flow, rtol=1e-10, atol=1e-13)
    image = np.asarray(jxai.explain(network, x, "attention_rollout", residual=0.0,
                                    head_fusion="max"))  # bilinear to 16×16
    flow = _rollout_np(weights, 0.0, np.max)[:, 0, 1:].reshape(2, 4, 4)
    np.testing.assert_allclose(image, _bilinear_np(flow, (16, 16)), rtol=1e-9, atol=1e-13)
    # not the attention of the last layer alone: the product really is taken
    assert np.abs(_rollout_np(weights[-1:]) - _rollout_np(weights)).max() > 1e-3


def test_fixture_attention_rollout_on_bert_matches_numpy_with_and_without_padding():
    from jxai.methods.rollout import attention_weights

    network = jxai.load_pretrained(HF / "bert")
    ref = np.load(HF / "bert" / "reference.npz")
    ids, mask = jnp.asarray(ref["input_ids"]), jnp.asarray(ref["attention_mask"])
    ctx = jxai.Context(network, ids.shape, ids.dtype, None)
    method = jxai.get_method("attention_rollout").fn
    target = jxai.Target(0, ids.shape[0])
    got = jax.jit(lambda i: (method(ctx, i, target), method(ctx, i, target, token=-1)))(ids)
    flow = _rollout_np(_weights_np(_attention_inputs(network, ids)))
    np.testing.assert_allclose(np.asarray(got[0]), flow[:, 0, :], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(got[1]), flow[:, -1, :], rtol=1e-5, atol=1e-7)
    padded = jax.jit(lambda i, m: attention_weights(network, i, attention_mask=m))(ids, mask)
    masked_ctx = jxai.Context(network, ids.shape, ids.dtype, None, {"attention_mask": mask})
    rolled = np.asarray(jax.jit(lambda i: method(masked_ctx, i, target))(ids))
    oracle = _weights_np(_attention_inputs(network, ids, attention_mask=mask))
    for g, w in zip(padded, oracle, strict=True):
        np.testing.assert_allclose(np.asarray(g), w, rtol=1e-5, atol=1e-7)
    padding = (np.asarray(mask) == 0)[:, None, None, :]
    assert float((np.asarray(padded[0]) * padding).max()) == 0.0
    np.testing.assert_allclose(rolled, _rollout_np(oracle)[:, 0, :], rtol=1e-5, atol=1e-7)
    assert np.all(rolled[np.asarray(mask) == 0] == 0) and np.all(rolled[np.asarray(mask) != 0] > 0)
    assert np.asarray(mask).min() == 0  # the fixture does pad
    # the same through jxai.explain on the integer ids, the mask passed by name
    public = np.asarray(jxai.explain(network, ids, "attention_rollout", attention_mask=mask))
    np.testing.assert_allclose(public, rolled, rtol=1e-6, atol=1e-8)


class _TwoAttentions(nn.Module):
    """Two stock MHA layers, the second causal; ``sow=True``: Flax sows their weights."""

    @nn.compact
    def __call__(self, x, sow: bool = False):
        x = nn.MultiHeadDotProductAttention(2, name="a")(x, sow_weights=sow)
        causal = nn.make_causal_mask(jnp.ones(x.shape[:2]))
        return nn.MultiHeadDotProductAttention(2, name="b")(x, mask=causal, sow_weights=sow)


def test_attention_weights_of_stock_mha_equal_what_flax_sows():
    from jxai.methods.rollout import attention_weights

    module, x = _TwoAttentions(), jax.random.normal(jax.random.PRNGKey(0), (2, 5, 8))
    variables = module.init(jax.random.PRNGKey(1), x)
    _, state = module.apply(variables, x, True, mutable=["intermediates"])
    sown = [state["intermediates"][n]["attention_weights"][0] for n in ("a", "b")]
    got = jax.jit(lambda a: attention_weights(jxai.Network(module, variables), a))(x)
    for g, w in zip(got, sown, strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-12, atol=1e-15)
    assert float(np.triu(np.asarray(got[1]), 1).max()) == 0.0  # the causal mask is the model's


# --------------------------------------------------------------------------------------------
# 4. Grad-CAM on a ViT block's tokens
# --------------------------------------------------------------------------------------------


def _block_output_and_gradient(network, x, block, target):
    """A ViT block's output tokens (Flax's capture_intermediates) and ∂y_target/∂ them (a zero
    offset added at the block's output by an interceptor)."""
    _, state = network.module.apply(network.variables, x, capture_intermediates=True,
                                    mutable=["intermediates"])
    tokens = state["intermediates"]["vit"]["encoder"][block]["__call__"][0]

    def score(offset):
        def add(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            if isinstance(context.module, ViTLayer) and context.module.name == block:
                return out + offset
            return out

        with nn.intercept_methods(add):
            return network.module.apply(network.variables, x)[:, target].sum()

    return np.asarray(tokens), np.asarray(jax.jit(jax.grad(score))(jnp.zeros_like(tokens)))


def test_grad_cam_on_a_vit_block_matches_a_hand_computation():
    network, x = _vit()
    tokens, grads = _block_output_and_gradient(network, x, "layer_0", 2)
    patches, patch_grads = tokens[:, 1:], grads[:, 1:]  # the class token dropped
    weights = patch_grads.mean(1, keepdims=True)
    raw = (weights * patches).sum(-1).reshape(2, 4, 4)
    assert raw.max() > 0 > raw.min()  # the ReLU is exercised both ways
    got = np.asarray(jxai.explain(network, x, "grad_cam", layer="vit/encoder/layer_0", target=2,
                                  resize=False, relu=False))
    np.testing.assert_allclose(got, raw, rtol=1e-9, atol=1e-12)
    image = np.asarray(jxai.explain(network, x, "grad_cam", layer="vit/encoder/layer_0",
                                    target=2, interpolation="nearest"))
    np.testing.assert_allclose(image, np.kron(np.maximum(raw, 0), np.ones((1, 4, 4))),
                               rtol=1e-9, atol=1e-12)
    # a block is read at its last layer call, its second residual sum
    from jxai.methods.cam import _check_layer

    ctx = jxai.Context(network, x.shape, x.dtype, None)
    assert _check_layer(ctx, "grad_cam", "vit/encoder/layer_0") == "vit/encoder/layer_0/add_1"
