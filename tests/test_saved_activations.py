"""Activations saved before tracing (``act: Callable = nn.relu``, ``self.act = nnx.relu``).

Flax's own ResNet example keeps its activation as a dataclass field and calls ``self.act(x)``;
NNX users write ``self.act = nnx.relu`` in ``__init__``. Such a reference is taken before jxai
swaps ``nn.relu`` for its placing wrapper, so it used to run unplaced: the relevance-mode presets
and guided backprop refused. Each model here has a twin with the same weights that calls the
function directly (``nn.relu(x)``, looked up while tracing); both must give the same result, and
the model must hold the original function afterwards, also after a call that raised.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jxai
from jxai import _functions

METHODS = ("lrp.flat", "lrp.w_square", "deep_taylor", "lrp.epsilon_plus_flat", "guided_backprop")
RELU, TANH = jax.nn.relu, jnp.tanh  # the originals (inside a trace their homes hold wrappers)
LEAKY = functools.partial(nn.leaky_relu, negative_slope=0.2)

# --------------------------------------------------------------------------------------------
# linen: the Flax ResNet example's block (conv and norm as partials, act as a field)
# --------------------------------------------------------------------------------------------

ModuleDef = Any


class ResNetBlock(nn.Module):
    """``examples/imagenet/models.py``'s ResNetBlock, as Flax writes it."""

    filters: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable = nn.relu
    strides: tuple[int, int] = (1, 1)

    @nn.compact
    def __call__(self, x):
        residual = x
        y = self.conv(self.filters, (3, 3), self.strides)(x)
        y = self.norm()(y)
        y = self.act(y)
        y = self.conv(self.filters, (3, 3))(y)
        y = self.norm()(y)
        if residual.shape != y.shape:
            residual = self.conv(self.filters, (1, 1), self.strides, name="conv_proj")(residual)
            residual = self.norm(name="norm_proj")(residual)
        return self.act(residual + y)


class ResNet(nn.Module):
    act: Callable = nn.relu

    @nn.compact
    def __call__(self, x):
        conv = functools.partial(nn.Conv, use_bias=False)
        norm = functools.partial(nn.BatchNorm, use_running_average=True)
        x = self.act(norm(name="bn_init")(conv(4, (3, 3), name="conv_init")(x)))
        x = ResNetBlock(4, conv=conv, norm=norm, act=self.act)(x)
        x = ResNetBlock(6, conv=conv, norm=norm, act=self.act, strides=(2, 2))(x)
        return nn.Dense(3)(jnp.mean(x, axis=(1, 2)))


class DirectBlock(nn.Module):
    """The twin: the same layers and names, the activation called as ``nn.relu(x)``."""

    filters: int
    leaky: bool
    strides: tuple[int, int] = (1, 1)

    def activate(self, x):
        return nn.leaky_relu(x, negative_slope=0.2) if self.leaky else nn.relu(x)

    @nn.compact
    def __call__(self, x):
        conv = functools.partial(nn.Conv, use_bias=False)
        norm = functools.partial(nn.BatchNorm, use_running_average=True)
        residual = x
        y = self.activate(norm()(conv(self.filters, (3, 3), self.strides)(x)))
        y = norm()(conv(self.filters, (3, 3))(y))
        if residual.shape != y.shape:
            residual = conv(self.filters, (1, 1), self.strides, name="conv_proj")(residual)
            residual = norm(name="norm_proj")(residual)
        return self.activate(residual + y)


class DirectResNet(nn.Module):
    leaky: bool = False

    @nn.compact
    def __call__(self, x):
        conv = functools.partial(nn.Conv, use_bias=False)
        norm = functools.partial(nn.BatchNorm, use_running_average=True)
        x = norm(name="bn_init")(conv(4, (3, 3), name="conv_init")(x))
        x = nn.leaky_relu(x, negative_slope=0.2) if self.leaky else nn.relu(x)
        x = DirectBlock(4, self.leaky, name="ResNetBlock_0")(x)
        x = DirectBlock(6, self.leaky, strides=(2, 2), name="ResNetBlock_1")(x)
        return nn.Dense(3, name="Dense_0")(jnp.mean(x, axis=(1, 2)))


def _perturbed(variables):
    """Random BatchNorm statistics and scales (fresh ones are 0 and 1: the identity)."""
    key = jax.random.PRNGKey(7)
    variables = jax.tree.map(
        lambda v: v + 0.3 * jax.random.normal(jax.random.fold_in(key, v.size), v.shape),
        variables,
    )
    variables["batch_stats"] = jax.tree.map(lambda v: jnp.abs(v) + 0.5, variables["batch_stats"])
    return variables


def _assert_close(actual, expected, method):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert float(np.abs(expected).max()) > 1e-4, method  # not a vacuous comparison
    np.testing.assert_allclose(actual, expected, rtol=1e-5,
                               atol=1e-6 * float(np.abs(expected).max()), err_msg=method)


def _assert_original(value, original):
    assert value is original, f"{value!r} is not the original {original!r}"


@pytest.mark.parametrize("act", [nn.relu, LEAKY], ids=["relu", "leaky_relu_partial"])
def test_linen_resnet_with_act_field_equals_the_direct_twin(act):
    model = ResNet(act=act)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 1))
    variables = _perturbed(model.init(jax.random.PRNGKey(0), x))
    twin = DirectResNet(leaky=act is LEAKY)
    assert jax.tree.map(jnp.shape, twin.init(jax.random.PRNGKey(0), x)) == jax.tree.map(
        jnp.shape, variables)
    context = jxai.Context(jxai.as_network(model, variables), x.shape, x.dtype, None)
    activations = [layer.path for layer in context.layers if layer.kind == "activation"]
    name = "relu" if act is nn.relu else "leaky_relu"
    assert activations == ["relu_0", "ResNetBlock_0/relu_0", "ResNetBlock_0/relu_1",
                           "ResNetBlock_1/relu_0", "ResNetBlock_1/relu_1"] if name == "relu" else \
        activations == [p.replace("relu", name) for p in (
            "relu_0", "ResNetBlock_0/relu_0", "ResNetBlock_0/relu_1",
            "ResNetBlock_1/relu_0", "ResNetBlock_1/relu_1")]
    for method in METHODS if act is nn.relu else ("lrp.flat", "guided_backprop"):
        expected = jxai.explain(twin, variables, x, method)
        _assert_close(jxai.explain(model, variables, x, method), expected, method)
    _assert_original(model.act, act)
    _assert_original(nn.relu, RELU)
    assert not _functions._saved  # no wrapper left installed


# --------------------------------------------------------------------------------------------
# NNX: self.act = nnx.relu in __init__
# --------------------------------------------------------------------------------------------


class NNXNet(nnx.Module):
    """conv → BN → act → conv → + → act → spatial mean → Linear; ``activate`` is the twins'
    difference."""

    def __init__(self, rngs, act=None):
        self.conv1 = nnx.Conv(1, 4, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(4, use_running_average=True, rngs=rngs)
        self.conv2 = nnx.Conv(4, 4, (3, 3), rngs=rngs)
        self.fc = nnx.Linear(4, 3, rngs=rngs)
        if act is not None:
            self.act = act

    def __call__(self, x):
        y = self.activate(self.bn(self.conv1(x)))
        y = self.activate(self.conv2(y) + y)
        return self.fc(jnp.mean(y, axis=(1, 2)))


class SavedNNX(NNXNet):
    def activate(self, x):
        return self.act(x)


class DirectNNX(NNXNet):
    leaky = False

    def activate(self, x):
        return nnx.leaky_relu(x, negative_slope=0.2) if self.leaky else nnx.relu(x)


class DirectLeakyNNX(DirectNNX):
    leaky = True


def _perturb_nnx(model):
    graphdef, state = nnx.split(model)
    key = jax.random.PRNGKey(7)
    state = jax.tree.map(
        lambda v: v + 0.3 * jax.random.normal(jax.random.fold_in(key, v.size), v.shape), state)
    model = nnx.merge(graphdef, state)
    model.bn.var.set_value(jnp.abs(model.bn.var.get_value()) + 0.5)
    return model


@pytest.mark.parametrize("act", [nnx.relu, functools.partial(nnx.leaky_relu, negative_slope=0.2)],
                         ids=["relu", "leaky_relu_partial"])
def test_nnx_module_with_act_attribute_equals_the_direct_twin(act):
    model = _perturb_nnx(SavedNNX(nnx.Rngs(0), act=act))
    direct = DirectLeakyNNX if isinstance(act, functools.partial) else DirectNNX
    twin = direct(nnx.Rngs(1))
    nnx.update(twin, nnx.state(model))
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 1))
    np.testing.assert_array_equal(model(x), twin(x))
    for method in METHODS if act is nnx.relu else ("lrp.w_square", "deep_taylor"):
        _assert_close(jxai.explain(model, x, method), jxai.explain(twin, x, method), method)
    _assert_original(model.act, act)


# --------------------------------------------------------------------------------------------
# Restored after a raising call (a reference jxai cannot see, a closure, is still refused by
# name: tests/test_functional_models.py)
# --------------------------------------------------------------------------------------------


class RaisingBlock(nn.Module):
    act: Callable = nn.relu

    @nn.compact
    def __call__(self, x):
        y = self.act(nn.Dense(5)(x))
        if y.shape[0] == 3:
            raise RuntimeError("the model's own error")
        return nn.Dense(2)(y)


class RaisingNNX(nnx.Module):
    def __init__(self, rngs):
        self.fc = nnx.Linear(4, 2, rngs=rngs)
        self.act = nnx.relu

    def __call__(self, x):
        y = self.act(self.fc(x))
        if y.shape[0] == 3:
            raise RuntimeError("the model's own error")
        return y


def test_saved_references_are_restored_when_the_model_raises():
    linen_model = RaisingBlock()
    variables = linen_model.init(jax.random.PRNGKey(0), jnp.ones((1, 4)))
    nnx_model = RaisingNNX(nnx.Rngs(0))
    for model, args in ((linen_model, (variables,)), (nnx_model, ())):
        with pytest.raises(RuntimeError, match="the model's own error"):
            jxai.explain(model, *args, jnp.ones((3, 4)), "lrp.flat")
        _assert_original(model.act, RELU)
        _assert_original(nn.relu, RELU)
        assert not _functions._saved
        # and the next call places it again
        assert jxai.explain(model, *args, jnp.ones((2, 4)), "lrp.flat").shape == (2, 4)


def test_references_placed_restores_an_attribute_when_the_body_raises():
    class Site:
        def takes_calls(self):
            return False

    class Holder:
        act = None

    holder = Holder()
    holder.act, holder.other, holder.leaky = RELU, TANH, LEAKY
    with _functions.placing(Site()):
        with pytest.raises(KeyError):
            with _functions.references_placed(holder, list(vars(holder).items())):
                assert holder.act is not RELU and holder.act.__wrapped__ is RELU
                assert holder.other is not TANH and holder.other.__wrapped__ is TANH
                assert holder.leaky.func.__wrapped__ is LEAKY.func
                assert holder.leaky.keywords == {"negative_slope": 0.2}
                raise KeyError("inside")
        _assert_original(holder.act, RELU)
        _assert_original(holder.other, TANH)
        _assert_original(holder.leaky, LEAKY)
    assert _functions.placed_reference(RELU) is None  # nothing installed outside a trace
