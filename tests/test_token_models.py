"""Token models (`nn.Embed` reading integer ids): relevance per token at the embedding output.

Oracles: the gradient of the target logit with respect to the word-embedding output, taken by a
Flax interceptor that adds a perturbation to that output (no jxai code), and for LRP the same
composite explained from the embeddings as a float input. Tiny zoo configurations (as in
tests/test_models.py)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import jxai.models as zoo
import numpy as np
import pytest

import jxai

SMALL = {
    "bert": ({"vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 1,
              "intermediate_size": 32, "sequence_length": 6}, "word_embeddings"),
    "llama": ({"vocab_size": 50, "hidden_size": 16, "intermediate_size": 32,
               "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
               "sequence_length": 6}, "embed_tokens"),
}
TARGET = {"bert": 1, "llama": 5 * 50 + 7}  # BERT: class 1; LLaMA: token 7 at the last position


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

    embedding = []
    with nn.intercept_methods(_replace_embedding(name, lambda e: embedding.append(e) or e)):
        net.module.apply(net.variables, ids)
    e = embedding[0]
    return e, jax.grad(logit)(jnp.zeros_like(e))


class FromEmbeddings(nn.Module):
    """The token model run on float word embeddings (B, T, D) given as its input."""

    model: nn.Module
    embed: str

    @nn.compact
    def __call__(self, embeddings):
        ids = jnp.zeros(embeddings.shape[:2], jnp.int32)

        def interceptor(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            if context.method_name == "__call__" and context.module.name == self.embed:
                return embeddings
            return out

        with nn.intercept_methods(interceptor):
            return self.model(ids)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_input_t_gradient_and_gradient_per_token(name):
    net, ids = _net(name), _ids()
    e, grad = _embedding_and_grad(name, net, ids, TARGET[name])
    relevance = jxai.explain(net, ids, "input_t_gradient", target=TARGET[name])
    assert relevance.shape == ids.shape
    np.testing.assert_allclose(relevance, (e * grad).sum(-1), rtol=1e-5, atol=1e-7)
    norm = jxai.explain(net, ids, "gradient", target=TARGET[name])
    np.testing.assert_allclose(norm, jnp.linalg.norm(grad, axis=-1), rtol=1e-5, atol=1e-7)
    assert np.abs(relevance).min() > 0  # every token counts (LLaMA: the last position sees all)


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("method", ["lrp.attn_lrp", "lrp.cp_lrp"])
def test_lrp_on_ids_equals_lrp_from_the_embeddings(name, method):
    net, ids = _net(name), _ids()
    e, _ = _embedding_and_grad(name, net, ids, TARGET[name])
    twin = jxai.Network(FromEmbeddings(net.module, SMALL[name][1]),
                        {"params": {"model": net.variables["params"]}})
    from_embeddings = jxai.explain(twin, e, method, target=TARGET[name])
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


@pytest.mark.parametrize("method", ["integrated_gradients", "smoothgrad", "occlusion"])
def test_methods_perturbing_the_input_refuse_token_ids(method):
    with pytest.raises(ValueError, match=rf"^'{method}' cannot explain integer token ids: it "
                       r"interpolates, perturbs or masks the input itself\. On ids use gradient, "
                       r"input_t_gradient or an LRP method"):
        jxai.explain(_net("llama"), _ids(), method)


def test_integer_features_of_a_model_without_embed_are_numbers():
    module = nn.Dense(2)
    variables = module.init(jax.random.key(0), jnp.ones((1, 3)))
    ints = np.array([[1, 2, 3]])
    np.testing.assert_array_equal(
        jxai.explain(module, variables, ints, "input_t_gradient"),
        jxai.explain(module, variables, ints.astype(np.float32), "input_t_gradient"))
