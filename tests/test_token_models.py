"""Token models (`nn.Embed` reading integer ids): relevance per token at the embedding output.

Oracles: the gradient of the target logit with respect to the word-embedding output, taken by a
Flax interceptor that adds a perturbation to that output (no jxai code), and for LRP the same
composite explained from the embeddings as a float input. Tiny zoo configurations (as in
tests/test_models.py)."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import jxai.models as zoo
import numpy as np
import pytest
from token_fixtures import FromEmbeddings

import jxai

SMALL = {
    "bert": ({"vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 1,
              "intermediate_size": 32, "sequence_length": 6}, "word_embeddings"),
    "llama": ({"vocab_size": 50, "hidden_size": 16, "intermediate_size": 32,
               "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
               "sequence_length": 6}, "embed_tokens"),
}
TARGET = {"bert": 1, "llama": 7}  # BERT: class 1; LLaMA: token 7 (at the last position)
FLAT = {"bert": 1, "llama": 5 * 50 + 7}  # the same logits as flattened output indices (oracles)


def _net(name):
    return zoo.get(name, pretrained=False, key=1, **SMALL[name][0])


def _ids(batch=2, length=6):
    return jax.random.randint(jax.random.key(0), (batch, length), 0, 50)


def _replace_embedding(name, replace):
    """An interceptor giving ``replace(e)`` instead of the word embedding output ``e``."""
    embed = SMALL[name][1]

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and context.module.name == embed:
            return replace(out)
        return out

    return interceptor


def _embedding_and_grad(name, net, ids, target):
    """The word-embedding output and d logit[target] / d it, without jxai."""
    def logit(delta):
        with nn.intercept_methods(_replace_embedding(name, lambda e: e + delta)):
            y = net.module.apply(net.variables, ids)
        return y.reshape(len(ids), -1)[:, target].sum()

    e = _embedding(name, net, ids, None)
    return e, jax.jit(jax.grad(logit))(jnp.zeros_like(e))


@pytest.mark.parametrize("name", sorted(SMALL))
def test_input_t_gradient_and_gradient_per_token(name):
    net, ids = _net(name), _ids()
    e, grad = _embedding_and_grad(name, net, ids, FLAT[name])
    relevance = jxai.explain(net, ids, "input_t_gradient", target=TARGET[name])
    assert relevance.shape == ids.shape
    oracle = (e * grad).sum(-1)  # float32: sums over D in another order; atol at its scale
    np.testing.assert_allclose(relevance, oracle, rtol=1e-5, atol=1e-5 * np.abs(oracle).max())
    norm = jxai.explain(net, ids, "gradient", target=TARGET[name])
    np.testing.assert_allclose(norm, jnp.linalg.norm(grad, axis=-1), rtol=1e-5, atol=1e-7)
    assert np.abs(relevance).min() > 0  # every token counts (LLaMA: the last position sees all)


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("method", ["lrp.attn_lrp", "lrp.cp_lrp"])
def test_lrp_on_ids_equals_lrp_from_the_embeddings(name, method):
    net, ids = _net(name), _ids()
    e, _ = _embedding_and_grad(name, net, ids, FLAT[name])
    twin = jxai.Network(FromEmbeddings(net.module, SMALL[name][1]),
                        {"params": {"model": net.variables["params"]}})
    from_embeddings = jxai.explain(twin, e, method, target=FLAT[name])
    on_ids = jxai.explain(net, ids, method, target=TARGET[name])
    assert on_ids.shape == ids.shape
    np.testing.assert_allclose(on_ids, from_embeddings.sum(-1), rtol=1e-4, atol=1e-6)
    plain = jxai.explain(net, ids, "input_t_gradient", target=TARGET[name])
    assert not np.allclose(on_ids, plain, rtol=1e-3)  # the rules changed something


def test_float_input_to_a_token_model_is_refused():
    net = _net("bert")
    with pytest.raises(ValueError) as error:
        jxai.explain(net, _ids().astype(jnp.float32), "lrp.attn_lrp")
    assert str(error.value) == (
        "Network(bert, params=11,586, skip=[]) reads integer token ids (metadata input_dtype "
        "int32), got a float32 input: pass the ids as integers (x.astype(jnp.int32)); to "
        "explain embeddings, explain a module that takes them (inputs_embeds)")


@pytest.mark.parametrize("method", ["expected_gradients", "occlusion"])
def test_methods_perturbing_the_input_refuse_token_ids(method):
    with pytest.raises(ValueError, match=rf"^'{method}' cannot explain integer token ids: it "
                       r"interpolates, perturbs or masks the input itself\. On ids use gradient, "
                       r"input_t_gradient, integrated_gradients, smoothgrad, smoothgrad_sq, "
                       r"vargrad, attention_rollout or an LRP method"):
        jxai.explain(_net("llama"), _ids(), method)


def test_integer_features_of_a_model_without_embed_are_numbers():
    module = nn.Dense(2)
    variables = module.init(jax.random.key(0), jnp.ones((1, 3)))
    ints = np.array([[1, 2, 3]])
    np.testing.assert_array_equal(
        jxai.explain(module, variables, ints, "input_t_gradient"),
        jxai.explain(module, variables, ints.astype(np.float32), "input_t_gradient"))


# --------------------------------------------------------------------------------------------
# Model inputs by name (attention_mask), decoder targets, IG and SmoothGrad on the embeddings.
# Float64 weights: the oracles below are plain jax.grad of the twin that takes the embeddings.
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def x64():
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


def _net64(name):
    net = _net(name)
    return jxai.Network(net.module, jax.tree.map(lambda a: a.astype(jnp.float64), net.variables),
                        net.metadata)


MASK = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])  # row 1: 4 tokens, right padding


def _ids64(seed=0):
    ids = np.array(jax.random.randint(jax.random.key(seed), (2, 6), 1, 50))
    ids[1, 4:] = 0  # padding id 0 (any id: the mask hides them)
    return ids


def _twin(name, net):
    return jxai.Network(FromEmbeddings(net.module, SMALL[name][1]),
                        {"params": {"model": net.variables["params"]}})


@functools.partial(jax.jit, static_argnums=(0, 1))
def _embed(module, embed, variables, ids, mask, types):
    """The word-embedding output of ``module`` on ``ids`` (a Flax interceptor, no jxai)."""
    out = []

    def interceptor(next_fun, args, kwargs, context):
        value = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and context.module.name == embed:
            out.append(value)
        return value

    extra = {} if types is None else {"token_type_ids": types}
    with nn.intercept_methods(interceptor):
        module.apply(variables, ids, attention_mask=mask, **extra)
    return out[0]


def _embedding(name, net, ids, mask, types=None):
    as_array = lambda a: None if a is None else jnp.asarray(a)  # noqa: E731
    return _embed(net.module, SMALL[name][1], net.variables, jnp.asarray(ids), as_array(mask),
                  as_array(types))


def _raw_scores(module, embed, variables, e, flat, mask):
    y = FromEmbeddings(module, embed).apply({"params": {"model": variables["params"]}}, e,
                                            attention_mask=mask)
    return jnp.take_along_axis(y.reshape(len(e), -1), flat.reshape(-1, 1), 1)[:, 0]


_jit_scores = jax.jit(_raw_scores, static_argnums=(0, 1))
_jit_grad = jax.jit(jax.grad(lambda *a: _raw_scores(*a).sum(), argnums=3),
                    static_argnums=(0, 1))


def _scores(name, net, flat, mask):
    """``(f, ∇f)``: the explained logits (B,) of the model run on embeddings ``e`` and the
    gradient of their sum (jitted jax.grad of the twin taking the embeddings; no jxai)."""
    args = (net.module, SMALL[name][1], net.variables)
    flat, mask = jnp.asarray(flat), jnp.asarray(mask)
    return (lambda e: _jit_scores(*args, e, flat, mask)), (lambda e: _jit_grad(*args, e, flat,
                                                                                mask))


@pytest.mark.parametrize("name,methods", [("bert", ["lrp.attn_lrp", "integrated_gradients"]),
                                          ("llama", ["lrp.cp_lrp", "smoothgrad"])])
def test_padded_row_equals_the_shorter_row_and_padding_gets_zero(x64, name, methods):
    net, ids = _net64(name), _ids64()
    dim = SMALL[name][0]["hidden_size"]
    noise = np.asarray(jax.random.normal(jax.random.key(3), (4, 2, 6, dim), jnp.float64)) * 0.1
    for method in methods:
        extra = {"noise": noise} if method == "smoothgrad" else {}
        short = {"noise": noise[:, 1:, :4]} if method == "smoothgrad" else {}
        padded = jxai.explain(net, ids, method, target=TARGET[name], attention_mask=MASK,
                              **extra)
        alone = jxai.explain(net, ids[1:, :4], method, target=TARGET[name], **short)
        assert padded.shape == ids.shape
        assert np.all(np.asarray(padded)[1, 4:] == 0), method  # exactly zero on padding
        np.testing.assert_allclose(padded[1, :4], alone[0], rtol=1e-6, atol=1e-10,
                                   err_msg=method)
        assert np.abs(np.asarray(alone)).max() > 1e-6, method  # not trivially zero


def test_decoder_target_token_at_a_position_equals_jax_grad(x64):
    net, ids = _net64("llama"), _ids64()
    e = _embedding("llama", net, ids, MASK)
    for position, rows in [(None, [5, 3]), (2, [2, 2]), (-2, [4, 2]), (np.array([1, 3]), [1, 3])]:
        _, grad = _scores("llama", net, [rows[0] * 50 + 7, rows[1] * 50 + 7], MASK)
        expected = (e * grad(e)).sum(-1) * MASK
        got = jxai.explain(net, ids, "input_t_gradient", target=7, position=position,
                           attention_mask=MASK)
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12, err_msg=str(position))
    several = jxai.explain(net, ids, "input_t_gradient", target=jxai.several(7, 9),
                           attention_mask=MASK)
    assert several.shape == (2, 2, 6)
    for k, token in enumerate((7, 9)):
        _, grad = _scores("llama", net, [5 * 50 + token, 3 * 50 + token], MASK)
        expected = (e * grad(e)).sum(-1) * MASK
        np.testing.assert_allclose(several[k], expected, rtol=1e-9, atol=1e-12)


def test_decoder_default_target_is_the_predicted_token_at_the_last_real_position(x64):
    net, ids = _net64("llama"), _ids64()
    logits = net.apply(jnp.asarray(ids), attention_mask=MASK)
    predicted = [int(jnp.argmax(logits[0, 5])), int(jnp.argmax(logits[1, 3]))]
    e = _embedding("llama", net, ids, MASK)
    _, grad = _scores("llama", net, [5 * 50 + predicted[0], 3 * 50 + predicted[1]], MASK)
    expected = grad(e)
    for method in ("gradient", "smoothgrad"):  # a wrapper keeps the clean input's token
        got = jxai.explain(net, ids, method, attention_mask=MASK,
                           **({"noise": np.zeros((2, 2, 6, 16))} if method == "smoothgrad"
                              else {}))
        np.testing.assert_allclose(got, jnp.linalg.norm(expected, axis=-1) * MASK,
                                   rtol=1e-9, atol=1e-12, err_msg=method)


def test_decoder_target_errors_name_the_valid_range():
    net, ids = _net("llama"), _ids64()
    cases = [
        (dict(target=50), r"^target token 50 is out of range: the model's output has 50 "
                          r"logits per position \(valid token ids 0\.\.49\)"),
        (dict(target=5 * 50 + 7), r"^target token 257 is out of range"),
        (dict(target=7, position=6), r"^position 6 is out of range for sample 0: valid "
                                     r"positions are 0\.\.5, or -6\.\.-1 counted back"),
        (dict(target=7, position=-5), r"^position -5 is out of range for sample 1: valid "
                                      r"positions are 0\.\.5, or -4\.\.-1"),
        (dict(target=7, position=4), r"^position 4 of sample 1 is a padded token"),
        (dict(target=7, position=np.array([1, 2, 3])), r"^position of shape \(3,\) does not "
                                                      r"fit a batch of 2"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            jxai.explain(net, ids, "gradient", attention_mask=MASK, **kwargs)
    with pytest.raises(ValueError, match=r"^position= picks a token position of a model whose "
                       r"output has one per input token .* shape \(2,\): drop position="):
        jxai.explain(_net("bert"), ids, "gradient", target=1, position=0)


def test_model_inputs_by_name_are_checked():
    net, ids = _net("bert"), _ids64()
    with pytest.raises(TypeError, match=r"^explain: 'gradient' takes no parameter "
                       r"'atention_mask' and the model takes no input of that name; did you "
                       r"mean 'attention_mask'\? accepted: postprocess, composite; model inputs "
                       r"\(by name, one row per sample\): attention_mask, token_type_ids, train"):
        jxai.explain(net, ids, "gradient", atention_mask=MASK)
    with pytest.raises(ValueError, match=r"^explain: model input attention_mask has shape "
                       r"\(3, 6\) but x has 2 samples: it needs one row per sample, shape "
                       r"\(2, \.\.\.\)"):
        jxai.explain(net, ids, "gradient", attention_mask=np.ones((3, 6), np.int32))
    with pytest.raises(TypeError, match=r"^explain: model input train=False is not an array"):
        jxai.explain(net, ids, "gradient", train=False)


def test_model_inputs_are_traced_cut_with_the_samples_and_work_in_make_explainer(x64):
    from jxai import _compile

    net, ids = _net64("bert"), _ids64()
    types = np.array([[0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 0, 0]])
    e = _embedding("bert", net, ids, MASK, types)
    whole = jxai.explain(net, ids, "input_t_gradient", target=1, attention_mask=MASK,
                         token_type_ids=types)

    def logit(delta):
        with nn.intercept_methods(_replace_embedding("bert", lambda v: v + delta)):
            y = net.module.apply(net.variables, ids, attention_mask=MASK, token_type_ids=types)
        return y[:, 1].sum()

    expected = (e * jax.jit(jax.grad(logit))(jnp.zeros_like(e))).sum(-1) * MASK
    np.testing.assert_allclose(whole, expected, rtol=1e-9, atol=1e-12)
    _, grad = _scores("bert", net, [1, 1], MASK)  # the same model without the token types
    assert not np.allclose(whole, (e * grad(e)).sum(-1) * MASK, rtol=1e-3)  # they mattered
    traces = _compile.TRACE_COUNT[0]
    other = np.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    changed = jxai.explain(net, ids, "input_t_gradient", target=1, attention_mask=other,
                           token_type_ids=types)
    assert _compile.TRACE_COUNT[0] == traces  # new mask values: no new trace
    assert np.all(np.asarray(changed)[0, 3:] == 0) and not np.allclose(changed, whole)
    rows = jxai.explain(net, ids, "input_t_gradient", target=1, attention_mask=MASK,
                        token_type_ids=types, micro_batch=1)
    np.testing.assert_allclose(rows, whole, rtol=1e-9, atol=1e-12)
    explainer = jax.jit(jxai.make_explainer(net, "input_t_gradient", target=1))
    np.testing.assert_allclose(explainer(net.variables, jnp.asarray(ids), attention_mask=MASK,
                                         token_type_ids=types), whole, rtol=1e-9, atol=1e-12)


def _gauss_legendre_ig(grad, start, end, steps):
    """IG by hand: Σ_d (e - e₀) Σ_k w_k ∇f(e₀ + α_k (e - e₀)), Gauss–Legendre on [0, 1]."""
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    total = sum(0.5 * w * grad(start + 0.5 * (t + 1) * (end - start))
                for t, w in zip(nodes, weights, strict=True))
    return ((end - start) * total).sum(-1)


def test_integrated_gradients_on_token_ids_by_hand_and_complete(x64):
    net, ids = _net64("bert"), _ids64()
    e = _embedding("bert", net, ids, MASK)
    f, grad = _scores("bert", net, [1, 1], MASK)
    got, delta = jxai.explain(net, ids, "integrated_gradients", target=1, steps=24,
                              attention_mask=MASK, return_delta=True)
    np.testing.assert_allclose(got, _gauss_legendre_ig(grad, jnp.zeros_like(e), e, 24) * MASK,
                               rtol=1e-9, atol=1e-12)
    gap = f(e) - f(jnp.zeros_like(e))  # completeness: Σ_t R_t = f(e) - f(e₀)
    np.testing.assert_allclose(np.asarray(got).sum(-1), gap, rtol=0, atol=1e-6)
    np.testing.assert_allclose(delta, np.asarray(got).sum(-1) - gap, atol=1e-9)
    net, ids = _net64("llama"), _ids64()  # from the embedding of the padding id
    e = _embedding("llama", net, ids, MASK)
    pad = _embedding("llama", net, np.zeros_like(ids), MASK)
    f, grad = _scores("llama", net, [5 * 50 + 7, 3 * 50 + 7], MASK)
    # 64 nodes: on this path the first sample's logit has a sharp bump near alpha = 0.6
    got = jxai.explain(net, ids, "integrated_gradients", target=7, steps=64, baseline_token=0,
                       attention_mask=MASK)
    np.testing.assert_allclose(got, _gauss_legendre_ig(grad, pad, e, 64) * MASK, rtol=1e-9,
                               atol=1e-12)
    np.testing.assert_allclose(np.asarray(got).sum(-1), f(e) - f(pad), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"baseline_token=50 is out of range: "
                       r"'model/embed_tokens' embeds ids 0\.\.49"):
        jxai.explain(net, ids, "integrated_gradients", target=7, baseline_token=50)


def test_smoothgrad_on_token_ids_adds_noise_to_the_embedding(x64):
    net, ids = _net64("bert"), _ids64()
    e = _embedding("bert", net, ids, MASK)
    _, grad = _scores("bert", net, [1, 1], MASK)
    noise = np.asarray(jax.random.normal(jax.random.key(5), (3, 2, 6, 16), jnp.float64)) * 0.2
    got = jxai.explain(net, ids, "smoothgrad", wrapped="input_t_gradient", target=1,
                       noise=noise, attention_mask=MASK)
    expected = sum(((e + n) * grad(e + n)).sum(-1) for n in noise) / 3
    np.testing.assert_allclose(got, expected * MASK, rtol=1e-9, atol=1e-12)
    drawn = jxai.explain(net, ids, "smoothgrad", target=1, n=4, attention_mask=MASK)
    assert drawn.shape == ids.shape and np.all(np.asarray(drawn)[1, 4:] == 0)
