"""Token and patch faithfulness (MoRF/LeRF curves, ABPC), jxai.metrics.tokens.

Oracles: the curves rebuilt literally, one perturbed input per step in a Python loop with numpy
ranking and float64 areas; a linear bag-of-tokens model whose exact marginal effects are known
(the true effect ranks MoRF below LeRF at every step, its negation the other way round, random
rankings average to ABPC 0); padded and kept tokens are never replaced."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import jxai.models as zoo
import numpy as np
import pytest

import jxai
from jxai.metrics import ABPC, patch_perturbation, token_perturbation

TOKEN_SMALL = {
    "bert": {"vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 1,
             "intermediate_size": 32, "sequence_length": 6},
    "llama": {"vocab_size": 50, "hidden_size": 16, "intermediate_size": 32,
              "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
              "sequence_length": 6},
}
VIT_SMALL = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
             "intermediate_size": 32, "image_size": 16, "patch_size": 4, "num_labels": 4}
MASK = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0]])
MASK_TOKEN = 3


def _ids(batch=3, length=6, seed=0):
    return np.array(jax.random.randint(jax.random.key(seed), (batch, length), 5, 50))


def _order(rel, removable, order):
    """Removal order of one sample, by a plain Python sort (stable, padding never)."""
    idx = [t for t in range(len(rel)) if removable[t]]
    sign = -1.0 if order == "morf" else 1.0
    return sorted(idx, key=lambda t: (sign * float(rel[t]), t))


def _trapezoid(curve):
    curve = np.asarray(curve, np.float64)
    h = 1.0 / (len(curve) - 1)
    return sum((curve[k] + curve[k + 1]) * h / 2 for k in range(len(curve) - 1))


def _token_oracle(net, ids, rel, target, steps, mask=None, keep=None, position=None):
    """MoRF and LeRF curves, one forward pass per (sample, order, step)."""
    forward = jax.jit(lambda x, **kw: net.apply(x, **kw))  # one compilation for every step
    curves = {"morf": [], "lerf": []}
    for b in range(len(ids)):
        removable = np.ones(ids.shape[1], bool) if mask is None else mask[b] != 0
        if keep is not None:
            removable = removable & ~keep[b]
        n = int(removable.sum())
        for order in curves:
            ranking, row = _order(rel[b], removable, order), []
            for k in range(steps + 1):
                x = ids[b].copy()
                for t in ranking[: int(np.rint(k * n / steps))]:
                    x[t] = MASK_TOKEN
                kw = {} if mask is None else {"attention_mask": jnp.asarray(mask[b : b + 1])}
                y = np.asarray(forward(jnp.asarray(x[None]), **kw), np.float64)[0]
                if y.ndim == 2:  # language model: the logit at the scored position
                    y = y[position[b]]
                row.append(y[target[b]])
            curves[order].append(row)
    morf, lerf = np.array(curves["morf"]), np.array(curves["lerf"])
    abpc = np.array([_trapezoid(lerf[b]) - _trapezoid(morf[b]) for b in range(len(ids))])
    return morf, lerf, abpc


@pytest.mark.parametrize("name", sorted(TOKEN_SMALL))
def test_token_curves_match_a_step_by_step_oracle(name):
    net = zoo.get(name, pretrained=False, key=1, **TOKEN_SMALL[name])
    ids = _ids()
    rel = np.array(jax.random.normal(jax.random.key(2), ids.shape))
    rel[1, 4:] = 100.0  # padding that an unguarded ranking would remove first
    target = np.array([1, 0, 1]) if name == "bert" else np.array([7, 11, 40])
    position = np.array([5, 3, 2])  # the last real token of each sample
    result = token_perturbation(net, ids, rel, target, mask_token=MASK_TOKEN, steps=4,
                                attention_mask=MASK)
    morf, lerf, abpc = _token_oracle(net, ids, rel, target, 4, MASK, position=position)
    assert isinstance(result, ABPC) and result.morf.shape == (3, 5)
    np.testing.assert_allclose(result.morf, morf, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(result.lerf, lerf, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(result.abpc, abpc, rtol=1e-5, atol=1e-5)
    assert np.ptp(morf, axis=1).min() > 0  # the replacements change the output
    np.testing.assert_allclose(result.fraction, np.linspace(0, 1, 5))


def test_method_name_explains_with_the_same_target_and_inputs():
    net = zoo.get("bert", pretrained=False, key=1, **TOKEN_SMALL["bert"])
    ids = _ids()
    rel = jxai.explain(net, ids, "input_t_gradient", target=1, attention_mask=MASK)
    # steps=4 as in the oracle test: the same compiled curves
    by_name = token_perturbation(net, ids, "input_t_gradient", 1, mask_token=MASK_TOKEN,
                                 attention_mask=MASK, steps=4)
    by_array = token_perturbation(net, ids, rel, 1, mask_token=MASK_TOKEN, attention_mask=MASK,
                                  steps=4)
    np.testing.assert_allclose(by_name.abpc, by_array.abpc, rtol=1e-6)
    with pytest.raises(TypeError, match="only used when attribution is a method name"):
        token_perturbation(net, ids, rel, 1, mask_token=MASK_TOKEN, epsilon=0.1)


class BagOfTokens(nn.Module):
    """f(ids)_c = Σ_t W[ids_t, c]: every token's effect is additive and known exactly.

    It reads padded tokens too (no mask), so replacing padding would show in the output."""

    vocab: int = 50
    classes: int = 2

    @nn.compact
    def __call__(self, ids, attention_mask=None):
        return nn.Embed(self.vocab, self.classes, name="weights")(ids).sum(axis=1)


def _bag(seed=0):
    module = BagOfTokens()
    variables = module.init(jax.random.key(seed), jnp.zeros((1, 6), jnp.int32))
    return jxai.Network(module, variables), np.asarray(variables["params"]["weights"]["embedding"])


def test_true_marginal_effect_separates_the_curves_and_random_ranks_do_not():
    net, w = _bag()
    ids = _ids(batch=256, length=12, seed=3)
    effect = w[ids, 1] - w[MASK_TOKEN, 1]  # exact drop of logit 1 when a token is replaced
    good = token_perturbation(net, ids, effect, 1, mask_token=MASK_TOKEN)
    assert np.all(np.asarray(good.morf) <= np.asarray(good.lerf) + 1e-5)
    assert np.all(np.asarray(good.abpc) > 0)
    # MoRF is f(x) minus the cumulative sum of the largest effects (one token per step)
    full = w[ids, 1].sum(1)
    top = np.cumsum(-np.sort(-effect, axis=1), axis=1)
    np.testing.assert_allclose(good.morf, np.c_[full, full[:, None] - top], rtol=1e-5, atol=1e-5)
    bad = token_perturbation(net, ids, -effect, 1, mask_token=MASK_TOKEN)  # the wrong sign
    np.testing.assert_allclose(bad.abpc, -np.asarray(good.abpc), rtol=1e-5, atol=1e-6)
    noise = np.array(jax.random.normal(jax.random.key(4), ids.shape))
    random = token_perturbation(net, ids, noise, 1, mask_token=MASK_TOKEN)
    mean, spread = float(np.mean(random.abpc)), float(np.std(random.abpc)) / np.sqrt(len(ids))
    assert abs(mean) < 4 * spread  # zero in expectation
    assert abs(mean) < 0.1 * float(np.mean(good.abpc))


def test_padding_and_kept_tokens_are_never_replaced():
    net, w = _bag()
    ids = _ids(seed=5)
    keep = np.zeros(ids.shape, bool)
    keep[:, 0] = True  # e.g. [CLS]
    rel = np.zeros(ids.shape)
    rel[MASK == 0] = 1e6  # the "most relevant" tokens are padding ...
    rel[:, 0] = 1e6  # ... and the kept token
    result = token_perturbation(net, ids, rel, 1, mask_token=MASK_TOKEN, attention_mask=MASK,
                                keep=keep, steps=2)
    # after the last step every real, non-kept token is replaced and nothing else
    expected = np.where((MASK != 0) & ~keep, MASK_TOKEN, ids)
    np.testing.assert_allclose(result.morf[:, -1], w[expected, 1].sum(1), rtol=1e-5)
    np.testing.assert_allclose(result.lerf[:, -1], w[expected, 1].sum(1), rtol=1e-5)
    everything = w[np.full_like(ids, MASK_TOKEN), 1].sum(1)
    assert np.abs(np.asarray(result.morf[:, -1]) - everything).min() > 1e-3  # can fail
    # halfway, MoRF removed round(n/2) real tokens, never a padded or kept one
    n = ((MASK != 0) & ~keep).sum(1)
    for b in range(len(ids)):
        order = _order(rel[b], (MASK[b] != 0) & ~keep[b], "morf")
        x = ids[b].copy()
        x[order[: int(np.rint(n[b] / 2))]] = MASK_TOKEN
        np.testing.assert_allclose(result.morf[b, 1], w[x, 1].sum(), rtol=1e-5)


def test_patch_curves_match_a_step_by_step_oracle():
    net = zoo.get("vit", pretrained=False, key=1, **VIT_SMALL)
    x = np.array(jax.random.normal(jax.random.key(0), (2, 16, 16, 3)))
    rel = np.array(jax.random.normal(jax.random.key(1), (2, 16, 16, 3)))
    target = np.array([0, 3])
    result = patch_perturbation(net, x, rel, target, patch_size=4, steps=8, baseline=0.5)
    patch_rel = np.asarray(jxai.transformer.patch_relevance(rel, 4)).reshape(2, -1)
    forward = jax.jit(lambda x: net.apply(x))
    curves = {"morf": [], "lerf": []}
    for b in range(2):
        for order in curves:
            ranking, row = _order(patch_rel[b], np.ones(16, bool), order), []
            for k in range(9):
                img = x[b].copy()
                for p in ranking[: int(np.rint(k * 16 / 8))]:
                    i, j = divmod(p, 4)
                    img[4 * i : 4 * i + 4, 4 * j : 4 * j + 4, :] = 0.5
                row.append(float(np.asarray(forward(jnp.asarray(img[None])))[0, target[b]]))
            curves[order].append(row)
    morf, lerf = np.array(curves["morf"]), np.array(curves["lerf"])
    np.testing.assert_allclose(result.morf, morf, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(result.lerf, lerf, rtol=1e-4, atol=1e-5)
    abpc = [_trapezoid(lerf[b]) - _trapezoid(morf[b]) for b in range(2)]
    np.testing.assert_allclose(result.abpc, abpc, rtol=1e-4, atol=1e-5)
    # a patch grid (B, 4, 4) ranks the same patches
    grid = patch_perturbation(net, x, patch_rel.reshape(2, 4, 4), target, patch_size=4, steps=8,
                              baseline=0.5)
    np.testing.assert_allclose(grid.abpc, result.abpc, rtol=1e-6)


def test_bad_inputs_are_named():
    net, _ = _bag()
    ids = _ids()
    with pytest.raises(ValueError, match="integer token ids"):
        token_perturbation(net, ids.astype(np.float32), np.zeros(ids.shape), 1, mask_token=3)
    with pytest.raises(ValueError, match="attribution has shape"):
        token_perturbation(net, ids, np.zeros((3, 5)), 1, mask_token=3)
    with pytest.raises(TypeError, match="mask_token must be an int"):
        token_perturbation(net, ids, np.zeros(ids.shape), 1, mask_token=0.5)
    with pytest.raises(ValueError, match=r"outside 0\.\.1"):
        token_perturbation(net, ids, np.zeros(ids.shape), 2, mask_token=3)
    with pytest.raises(ValueError, match="position is for language models"):
        token_perturbation(net, ids, np.zeros(ids.shape), 1, mask_token=3, position=2)
    vit = zoo.get("vit", pretrained=False, key=1, **VIT_SMALL)
    with pytest.raises(ValueError, match="not a whole number of 5×5 patches"):
        patch_perturbation(vit, np.zeros((1, 16, 16, 3)), np.zeros((1, 16, 16)), 0,
                           patch_size=5)
