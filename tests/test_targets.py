"""Target selection (issue 20): out-of-range and negative indices are errors naming the output
size; a 1-D int target is always one index per sample; several targets are asked for with
`jxai.several` or a (T, B) array; an empty batch is an error; `create_analyzer` checks its
parameters when it is made and `analyze` range-checks ``neuron_selection``.

The oracle for every multi-target or per-sample result is the same method called with one int
target at a time (row by row where the targets differ per sample).
"""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jxai

BATCH = 4


@pytest.fixture(scope="module")
def dense():
    """A stock linen Dense with 2 outputs on 3 inputs, and a batch of 4."""
    module = nn.Dense(2)
    variables = module.init(jax.random.PRNGKey(0), jnp.ones((1, 3)))
    x = jax.random.normal(jax.random.PRNGKey(1), (BATCH, 3))
    return jxai.Network(module, variables, {"input_shape": (3,)}), x


@pytest.fixture(scope="module")
def cnn():
    """The zoo's MNIST-1D CNN (10 classes, convolutions), random weights, 3 samples."""
    network = jxai.models.get("mnist1d_cnn", pretrained=False)
    x = jax.random.normal(jax.random.PRNGKey(2), (3, *network.input_shape))
    return network, x


def _message(target, n):
    return re.escape(f"{target} is out of range") + ".*" + re.escape(
        f"the network has {n} output{'s' if n != 1 else ''} per sample "
        f"(valid targets 0..{n - 1})")


def _one_by_one(network, x, method, targets):
    """Oracle: sample b explained alone with its own int target ``targets[b]``."""
    return np.concatenate([np.asarray(jxai.explain(network, x[b:b + 1], method, target=int(t)))
                           for b, t in enumerate(targets)])


# -- out of range -------------------------------------------------------------------------------
def test_out_of_range_int_names_the_output_size(dense):
    network, x = dense
    with pytest.raises(ValueError) as error:
        jxai.explain(network, x, "lrp.epsilon", target=99999)
    assert str(error.value) == ("target 99999 is out of range: the network has 2 outputs per "
                                "sample (valid targets 0..1)")
    with pytest.raises(ValueError, match=_message("target 2", 2)):
        jxai.explain(network, x, "gradient", target=2)
    with pytest.raises(ValueError, match=_message("target 2", 2)):
        jxai.explain(network, x, "gradient", target=np.int64(2))
    with pytest.raises(ValueError, match=_message("target 2", 2)):
        jxai.explain(network, x, "gradient", target=jnp.asarray(2))


def test_negative_index_is_an_error_not_python_wrap_around(dense):
    network, x = dense
    with pytest.raises(ValueError) as error:
        jxai.explain(network, x, "gradient", target=-1)
    assert str(error.value) == (
        "target -1 is out of range (negative indices do not count from the end): the network "
        "has 2 outputs per sample (valid targets 0..1)")


def test_out_of_range_element_of_per_sample_and_several_targets(dense):
    network, x = dense
    with pytest.raises(ValueError, match=_message("target[2] = 2", 2)):
        jxai.explain(network, x, "gradient", target=np.array([0, 1, 2, 0]))
    with pytest.raises(ValueError, match=_message("target[1, 3] = -3", 2)):
        jxai.explain(network, x, "gradient", target=np.array([[0, 1, 0, 1], [1, 1, 1, -3]]))
    with pytest.raises(ValueError, match=_message("target[1, 0] = 7", 2)):
        jxai.explain(network, x, "gradient", target=jxai.several(0, 7))


def test_zoo_model_with_one_output_accepts_only_zero():
    network = jxai.models.get("tabular_mlp", pretrained=False)
    x = jax.random.uniform(jax.random.PRNGKey(3), (2, *network.input_shape))
    with pytest.raises(ValueError, match=_message("target 1", 1)):
        jxai.explain(network, x, "lrp.epsilon", target=1)
    np.testing.assert_array_equal(jxai.explain(network, x, "lrp.epsilon", target=0),
                                  jxai.explain(network, x, "lrp.epsilon", target="max"))


def test_make_explainer_checks_its_int_target_when_traced(dense):
    network, x = dense
    explainer = jxai.make_explainer(network.module, "gradient", target=5)
    with pytest.raises(ValueError, match=_message("target 5", 2)):
        jax.jit(explainer)(network.variables, x)
    good = jax.jit(jxai.make_explainer(network.module, "gradient", target=1))
    np.testing.assert_allclose(good(network.variables, x),
                               jxai.explain(network, x, "gradient", target=1), rtol=1e-6)


# -- one target per sample ----------------------------------------------------------------------
def test_one_d_target_of_the_wrong_length_says_how_to_ask_for_several(dense):
    network, x = dense
    with pytest.raises(ValueError) as error:
        jxai.explain(network, x, "gradient", target=[0, 1])
    assert str(error.value) == (
        "target has 2 indices for a batch of 4: a 1-D int target is one index per sample and "
        "needs 4. For several targets for every sample use jxai.several(0, 1) (a (T, 1) "
        "array), or a (T, B) array for T targets per sample")
    with pytest.raises(ValueError, match="3 indices for a batch of 4"):
        jxai.explain(network, x, "gradient", target=np.array([1, 0, 1]))


@pytest.mark.parametrize("form", [np.array, jnp.asarray, list, tuple])
def test_one_d_target_of_batch_length_is_per_sample(dense, form):
    network, x = dense
    labels = [1, 0, 0, 1]
    out = np.asarray(jxai.explain(network, x, "lrp.epsilon", target=form(labels)))
    assert out.shape == x.shape
    np.testing.assert_allclose(out, _one_by_one(network, x, "lrp.epsilon", labels), rtol=1e-5,
                               atol=1e-7)


def test_batch_of_two_with_two_labels_is_per_sample_not_two_targets(dense):
    network, x = dense
    out = np.asarray(jxai.explain(network, x[:2], "gradient", target=[1, 0]))
    assert out.shape == (2, 3)
    np.testing.assert_allclose(out, _one_by_one(network, x[:2], "gradient", [1, 0]), rtol=1e-6)


def test_per_sample_targets_on_a_zoo_cnn(cnn):
    network, x = cnn
    labels = np.array([3, 9, 0])
    out = np.asarray(jxai.explain(network, x, "lrp.epsilon", target=labels))
    np.testing.assert_allclose(out, _one_by_one(network, x, "lrp.epsilon", labels), rtol=1e-4,
                               atol=1e-6)


def test_traced_targets_inside_a_user_jit(dense):
    """A traced index cannot be range-checked (documented); in range it selects as eagerly."""
    network, x = dense
    labels = jnp.array([1, 0, 0, 1])
    run = jax.jit(lambda x, t: jxai.explain(network, x, "gradient", target=t))
    np.testing.assert_allclose(run(x, labels), jxai.explain(network, x, "gradient", target=labels),
                               rtol=1e-6)
    np.testing.assert_allclose(run(x, jnp.int32(1)),
                               jxai.explain(network, x, "gradient", target=1), rtol=1e-6)


# -- several targets ----------------------------------------------------------------------------
def test_several_builds_a_t_by_one_array():
    assert jxai.several(0, 5).tolist() == [[0], [5]]
    assert jxai.several(0, 5).dtype == np.int32
    np.testing.assert_array_equal(jxai.several([2, 3, 4]), [[2], [3], [4]])
    with pytest.raises(ValueError, match="at least one output index"):
        jxai.several()
    with pytest.raises(TypeError, match="integer output indices, got 1.5"):
        jxai.several(0, 1.5)
    with pytest.raises(TypeError, match="got True"):
        jxai.several(True)


def test_several_equals_one_call_per_target(dense, cnn):
    network, x = dense
    both = np.asarray(jxai.explain(network, x, "lrp.epsilon", target=jxai.several(0, 1)))
    assert both.shape == (2, *x.shape)
    for t in (0, 1):
        np.testing.assert_allclose(both[t], jxai.explain(network, x, "lrp.epsilon", target=t),
                                   rtol=1e-6)
    network, x = cnn
    both = np.asarray(jxai.explain(network, x, "gradient", target=jxai.several(3, 7)))
    assert both.shape == (2, *x.shape)
    for row, t in enumerate((3, 7)):
        np.testing.assert_allclose(both[row], jxai.explain(network, x, "gradient", target=t),
                                   rtol=1e-5, atol=1e-7)


def test_t_by_b_array_gives_each_sample_its_own_targets(dense):
    network, x = dense
    table = np.array([[0, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 1]])
    out = np.asarray(jxai.explain(network, x, "gradient", target=table))
    assert out.shape == (3, *x.shape)
    for t, row in enumerate(table):
        np.testing.assert_allclose(out[t], _one_by_one(network, x, "gradient", row), rtol=1e-6)
    with pytest.raises(ValueError, match=re.escape("integer target of shape (2, 3) does not fit "
                                                   "a batch of 4")):
        jxai.explain(network, x, "gradient", target=np.zeros((2, 3), int))


def test_explain_dataset_takes_several_and_checks_labels_on_the_host(dense):
    network, x = dense
    items = np.asarray(x)
    by_tuple = [r.attribution for r in jxai.explain_dataset(network, items, "gradient",
                                                            target=(0, 1), batch_size=2)]
    by_several = [r.attribution for r in jxai.explain_dataset(
        network, items, "gradient", target=jxai.several(0, 1), batch_size=2)]
    np.testing.assert_array_equal(np.stack(by_tuple), np.stack(by_several))
    assert by_several[0].shape == (2, 3)
    with pytest.raises(ValueError, match=_message("labels[3] = 2", 2)):
        list(jxai.explain_dataset(network, items, "gradient", labels=[0, 1, 1, 2], batch_size=2))


# -- empty batch ----------------------------------------------------------------------------------
def test_empty_batch_is_a_value_error(dense):
    network, x = dense
    empty = x[:0]
    with pytest.raises(ValueError) as error:
        jxai.explain(network, empty, "lrp.epsilon")
    assert str(error.value) == ("empty batch: x has 0 rows (shape (0, 3)); pass at least one "
                                "sample, batch first (one sample: x[None])")
    with pytest.raises(ValueError, match="empty batch: x has 0 rows"):
        jxai.make_explainer(network.module, "gradient")(network.variables, empty)
    with pytest.raises(ValueError, match="empty batch: x has 0 rows"):
        jxai.create_analyzer("lrp.epsilon", network).analyze(np.asarray(empty))


# -- create_analyzer / analyze ------------------------------------------------------------------
def test_create_analyzer_rejects_an_unknown_parameter_at_creation(dense):
    network, _ = dense
    with pytest.raises(TypeError) as error:
        jxai.create_analyzer("lrp.epsilon", network, bogus=1)
    assert str(error.value) == ("create_analyzer: 'lrp.epsilon' takes no parameter 'bogus'; "
                                "accepted: epsilon, bias, convention")
    with pytest.raises(TypeError, match="did you mean 'augment_by_n'.*accepted: wrapped, n, "
                                        "sigma.*augment_by_n, noise_scale"):
        jxai.create_analyzer("smoothgrad", network, augment_by_nn=4)
    with pytest.raises(TypeError, match="'input' takes no parameter 'epsilon'; accepted: none"):
        jxai.create_analyzer("input", network, epsilon=0.1)
    with pytest.raises(TypeError, match="'lrp.z' takes no parameter 'epsilon'"):
        jxai.create_analyzer("lrp.z", network, epsilon=0.1)


def test_missing_and_unknown_parameters_are_refused_before_compiling(dense):
    network, x = dense
    with pytest.raises(TypeError, match=re.escape("explain: 'lrp' needs composite=...")):
        jxai.explain(network, x, "lrp")
    with pytest.raises(TypeError, match=re.escape("'deep_taylor.bounded' needs low=..., high=.")):
        jxai.explain(network, x, "deep_taylor.bounded")
    with pytest.raises(TypeError, match="create_analyzer: 'deep_taylor.bounded' needs low="):
        jxai.create_analyzer("deep_taylor.bounded", network)
    with pytest.raises(TypeError, match="no parameter 'epsilonn'; did you mean 'epsilon'"):
        jxai.explain(network, x, "lrp.epsilon", epsilonn=0.1)
    bounded = jxai.explain(network, x, "deep_taylor.bounded", low=-3.0, high=3.0)
    assert bounded.shape == x.shape


def test_create_analyzer_accepts_innvestigate_names_and_wrapped_parameters(dense):
    network, x = dense
    x = np.asarray(x)
    ig = jxai.create_analyzer("integrated_gradients", network, steps=4, reference_inputs=0.5)
    np.testing.assert_allclose(
        ig.analyze(x), jxai.explain(network, x, "integrated_gradients", steps=4, baseline=0.5,
                                    quadrature="riemann_left"), rtol=1e-6)
    wrapped = jxai.create_analyzer("smoothgrad", network, augment_by_n=2, wrapped="lrp.epsilon",
                                   epsilon=0.5)
    assert wrapped.analyze(x).shape == x.shape


def test_analyze_neuron_selection_is_range_checked_and_per_sample(dense):
    network, x = dense
    x = np.asarray(x)
    analyzer = jxai.create_analyzer("lrp.epsilon", network, neuron_selection_mode="index")
    with pytest.raises(ValueError) as error:
        analyzer.analyze(x, neuron_selection=2)
    assert str(error.value) == ("neuron_selection 2 is out of range: the network has 2 outputs "
                                "per sample (valid targets 0..1)")
    with pytest.raises(ValueError, match=_message("neuron_selection[1] = -1", 2)):
        analyzer.analyze(x, neuron_selection=[0, -1, 0, 0])
    with pytest.raises(ValueError, match=re.escape("one index per sample (4), got shape (2,)")):
        analyzer.analyze(x, neuron_selection=[0, 1])
    labels = [1, 0, 1, 1]
    np.testing.assert_allclose(analyzer.analyze(x, neuron_selection=labels),
                               _one_by_one(network, x, "lrp.epsilon", labels), rtol=1e-5)
    np.testing.assert_allclose(analyzer.analyze(x, neuron_selection=1),
                               jxai.explain(network, x, "lrp.epsilon", target=1), rtol=1e-6)
    np.testing.assert_allclose(analyzer.analyze(x, neuron_selection="max_activation"),
                               jxai.explain(network, x, "lrp.epsilon"), rtol=1e-6)


# -- token targets of a sequence output (B, T, V): a token id at a position ---------------------


def test_token_target_is_the_flat_index_of_the_token_at_the_position():
    from jxai._targets import token_target

    mask = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [0, 0, 1, 1, 1, 1]])  # right/left pad
    cases = [(None, [5, 2, 5]), (2, [2, 2, 2]), (-1, [5, 2, 5]), (-3, [3, 0, 3]),
             (np.array([4, 1, 3]), [4, 1, 3])]
    for position, rows in cases:
        target, multi = token_target(7, position, 3, 6, 10, mask)
        assert target.kind == "index" and not multi
        np.testing.assert_array_equal(target.data, np.array(rows) * 10 + 7)
    target, multi = token_target(jxai.several(7, 9), None, 3, 6, 10, mask)
    assert multi
    np.testing.assert_array_equal(target.data, [[57, 27, 57], [59, 29, 59]])
    target, _ = token_target(np.array([1, 2, 3]), 1, 3, 6, 10)  # one token per sample, no mask
    np.testing.assert_array_equal(target.data, [11, 12, 13])
    target, _ = token_target("max", None, 3, 6, 10, mask)  # the largest logit at the position
    assert target.kind == "max_at"
    y = jax.random.normal(jax.random.key(0), (3, 6, 10))
    picked = target.pinned(y)
    expected = np.array([5, 2, 5]) * 10 + np.argmax(np.asarray(y)[[0, 1, 2], [5, 2, 5]], -1)
    np.testing.assert_array_equal(picked.data, expected)
    np.testing.assert_array_equal(target.mask(y), picked.mask(y))
    assert target.mask(y).sum() == 3 and float(target.score(y)[1]) == float(y[1, 2].max())


def test_token_target_inside_jit_takes_traced_masks_and_positions():
    from jxai._targets import token_target

    @jax.jit
    def data(mask, position):
        return token_target(3, position, 2, 4, 5, mask)[0].data

    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1]])
    np.testing.assert_array_equal(data(mask, -1), [1 * 5 + 3, 3 * 5 + 3])
    np.testing.assert_array_equal(data(mask, 0), [3, 3])


def test_token_target_errors_name_the_valid_range():
    from jxai._targets import token_target

    mask = np.array([[1, 1, 1, 1], [0, 0, 1, 1]])
    with pytest.raises(ValueError, match=r"^target token -1 is out of range: the model's output "
                                         r"has 5 logits per position \(valid token ids 0\.\.4\)"):
        token_target(-1, None, 2, 4, 5, mask)
    with pytest.raises(ValueError, match=r"^position 0 of sample 1 is a padded token "
                                         r"\(attention_mask 0 at 0\)"):
        token_target(3, 0, 2, 4, 5, mask)
    with pytest.raises(ValueError, match=r"^position -5 is out of range for sample 0: valid "
                                         r"positions are 0\.\.3, or -4\.\.-1"):
        token_target(3, -5, 2, 4, 5, mask)
    with pytest.raises(ValueError, match=r"^attention_mask row 1 has no real token"):
        token_target(3, None, 2, 4, 5, np.array([[1, 1, 1, 1], [0, 0, 0, 0]]))
    with pytest.raises(TypeError, match=r"^position=1\.0: an int"):
        token_target(3, 1.0, 2, 4, 5)
    with pytest.raises(ValueError, match=r"^position= picks a token position for a token-id "
                                         r"target; target=all selects the outputs itself"):
        token_target("all", -1, 2, 4, 5)
    target, _ = token_target(np.ones((2, 4, 5), np.float32), None, 2, 4, 5)  # a cotangent
    assert target.kind == "cotangent"
