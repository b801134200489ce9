"""Every rule against a literal float64 oracle of its paper formula, on Dense, Conv1D, Conv2D,
depthwise Conv2D, Conv3D and ConvTranspose layers, over random shapes, strides and signs.

The oracle writes each layer as ``z = W a + b`` (W and b read off the Flax layer with a Jacobian,
as Zennit's own rule tests do) and implements ``R_j = Σ_k num_jk / den_k · R_k`` with numpy.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jxai
from jxai import rules

# ---------------------------------------------------------------------------------------------
# Layers under test: (name, module factory, per-sample input shape)
# ---------------------------------------------------------------------------------------------

LAYERS = {
    "dense": (lambda: nn.Dense(4), (6,)),
    "conv1d": (lambda: nn.Conv(4, (3,), strides=(2,), padding="SAME"), (7, 3)),
    "conv2d": (
        lambda: nn.Conv(3, (3, 3), strides=(2, 1), padding="VALID", kernel_dilation=(1, 2)),
        (6, 7, 2),
    ),
    "depthwise": (lambda: nn.Conv(4, (2, 2), padding="SAME", feature_group_count=2), (4, 4, 2)),
    "conv_transpose": (
        lambda: nn.ConvTranspose(3, (3, 3), strides=(2, 2), padding="SAME"),
        (3, 4, 2),
    ),
    "conv3d": (lambda: nn.Conv(2, (2, 2, 2), strides=(1, 2, 1), padding="SAME"), (3, 4, 3, 2)),
}


class Single(nn.Module):
    make: object

    @nn.compact
    def __call__(self, x):
        return self.make()(x)


def build(layer, seed):
    make, shape = LAYERS[layer]
    module = Single(make)
    key = jax.random.PRNGKey(seed)
    variables = module.init(key, jnp.zeros((1, *shape)))
    # non-trivial biases of both signs
    variables = jax.tree.map(
        lambda v: v + 0.3 * jax.random.normal(jax.random.fold_in(key, v.size), v.shape), variables
    )
    return module, variables, shape


def matrix_form(module, variables, shape, kernel_map=None, keep_bias=True):
    """(W, b) of the per-sample layer in float64, after mapping its kernel."""
    params = variables["params"]
    layer = jax.tree.map(lambda v: v, params)
    inner = next(iter(layer))
    if kernel_map is not None:
        layer[inner]["kernel"] = kernel_map(layer[inner]["kernel"])
    if not keep_bias and "bias" in layer[inner]:
        layer[inner]["bias"] = jnp.zeros_like(layer[inner]["bias"])

    def f(a):
        return module.apply({"params": layer}, a.reshape((1, *shape))).ravel()

    n = int(np.prod(shape))
    zero = jnp.zeros((n,))
    W = np.asarray(jax.jacobian(f)(zero), np.float64)
    b = np.asarray(f(zero), np.float64)
    return W, b


# ---------------------------------------------------------------------------------------------
# Literal oracles: all return input relevance for one sample (a: (n,), R: (m,))
# ---------------------------------------------------------------------------------------------


def stab(z, eps):
    return z + eps * np.where(z >= 0, 1.0, -1.0)


def oracle_z(W, b, a, R):
    z = W @ a + b
    s = np.where(z == 0, 0.0, R / np.where(z == 0, 1.0, z))
    return a * (W.T @ s)


def oracle_epsilon(W, b, a, R, eps, bias=True):
    z = W @ a + (b if bias else 0.0)
    return a * (W.T @ (R / stab(z, eps)))


def oracle_gamma(W, b, a, R, gamma, stabilizer):
    rho_W, rho_b = W + gamma * np.maximum(W, 0), b + gamma * np.maximum(b, 0)
    z = rho_W @ a + rho_b
    return a * (rho_W.T @ (R / stab(z, stabilizer)))


def oracle_gamma_generalized(W, b, a, R, gamma, stabilizer):
    ap, an = np.maximum(a, 0), np.minimum(a, 0)
    Wp, Wn = W + gamma * np.maximum(W, 0), W + gamma * np.minimum(W, 0)
    z = W @ a + b
    up = Wp @ ap + Wn @ an + b + gamma * np.maximum(b, 0)
    down = Wn @ ap + Wp @ an + b + gamma * np.minimum(b, 0)
    out = np.zeros_like(a)
    for k in range(len(R)):
        if z[k] > 0:
            out += (ap * Wp[k] + an * Wn[k]) / stab(up[k], stabilizer) * R[k]
        elif z[k] < 0:
            out += (ap * Wn[k] + an * Wp[k]) / stab(down[k], stabilizer) * R[k]
    return out


def oracle_alpha_beta(W, b, a, R, alpha, beta, bias, stabilizer):
    # contributions c_jk = a_j W_kj, split by sign, exactly as in Bach et al. 2015
    c = W * a[None, :]
    cp, cn = np.maximum(c, 0), np.minimum(c, 0)
    if bias is True:
        bp, bn = np.maximum(b, 0), np.minimum(b, 0)
    elif bias == "both":
        bp = bn = b
    else:
        bp = bn = np.zeros_like(b)
    zp = cp.sum(1) + bp
    zn = cn.sum(1) + bn
    out = alpha * (cp / stab(zp, stabilizer)[:, None]).T @ R
    if beta:
        out -= beta * (cn / stab(zn, stabilizer)[:, None]).T @ R
    return out


def oracle_zplus_fast(W, b, a, R, stabilizer):
    Wp = np.maximum(W, 0)
    return a * (Wp.T @ (R / stab(Wp @ a, stabilizer)))


def oracle_wsquare(W, b, a, R, stabilizer, bias=False):
    W2 = W**2
    z = W2.sum(1) + (b**2 if bias else 0.0)
    return W2.T @ (R / stab(z, stabilizer))


def oracle_flat(connectivity, a, R, stabilizer):
    return connectivity.T @ (R / stab(connectivity.sum(1), stabilizer))


def oracle_zbox(W, b, a, R, low, high, stabilizer):
    Wp, Wn = np.maximum(W, 0), np.minimum(W, 0)
    num = W * a[None, :] - Wp * low[None, :] - Wn * high[None, :]
    return (num / stab(num.sum(1), stabilizer)[:, None]).T @ R


# ---------------------------------------------------------------------------------------------
# The engine on one layer, with an arbitrary output relevance R = z ⊙ m
# ---------------------------------------------------------------------------------------------


def engine(module, variables, x, rule, mask, mode="auto"):
    composite = jxai.Composite([((nn.Dense, nn.Conv, nn.ConvTranspose), rule)], mode=mode)
    return np.asarray(jxai.explain(module, variables, x, composite, target=mask), np.float64)


def case(layer, seed, positive=False):
    module, variables, shape = build(layer, seed)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, *shape)).astype(np.float32)
    if positive:
        x = np.abs(x)
    z = np.asarray(module.apply(variables, x))
    mask = rng.normal(size=z.shape).astype(np.float32)
    return module, variables, shape, x, z, mask


def per_sample(oracle, W, b, x, z, mask, **kw):
    out = []
    for i in range(x.shape[0]):
        R = (z[i] * mask[i]).ravel().astype(np.float64)
        out.append(oracle(W, b, x[i].ravel().astype(np.float64), R, **kw).reshape(x.shape[1:]))
    return np.stack(out)


def assert_close(actual, expected, rtol=2e-4):
    scale = np.abs(expected).max() + 1e-12
    np.testing.assert_allclose(actual / scale, expected / scale, atol=rtol)


PROPORTIONAL = [
    ("z", rules.Z(), oracle_z, {}),
    ("epsilon", rules.Epsilon(0.1), oracle_epsilon, dict(eps=0.1)),
    ("epsilon_no_bias", rules.Epsilon(0.1, bias=False), oracle_epsilon, dict(eps=0.1, bias=False)),
    ("gamma", rules.Gamma(0.25, stabilizer=1e-2), oracle_gamma, dict(gamma=0.25, stabilizer=1e-2)),
    (
        "gamma_generalized",
        rules.Gamma(0.5, generalized=True, stabilizer=1e-2),
        oracle_gamma_generalized,
        dict(gamma=0.5, stabilizer=1e-2),
    ),
    (
        "alpha2beta1",
        rules.AlphaBeta(2, 1, stabilizer=1e-2),
        oracle_alpha_beta,
        dict(alpha=2, beta=1, bias=True, stabilizer=1e-2),
    ),
    (
        "alpha3beta2_nobias",
        rules.AlphaBeta(3, 2, bias=False, stabilizer=1e-2),
        oracle_alpha_beta,
        dict(alpha=3, beta=2, bias=False, stabilizer=1e-2),
    ),
    (
        "alpha2beta1_fullbias",
        rules.AlphaBeta(2, 1, bias="both", stabilizer=1e-2),
        oracle_alpha_beta,
        dict(alpha=2, beta=1, bias="both", stabilizer=1e-2),
    ),
    (
        "zplus",
        rules.ZPlus(stabilizer=1e-2),
        oracle_alpha_beta,
        dict(alpha=1, beta=0, bias=False, stabilizer=1e-2),
    ),
    (
        "zplus_bias",
        rules.ZPlus(bias=True, stabilizer=1e-2),
        oracle_alpha_beta,
        dict(alpha=1, beta=0, bias=True, stabilizer=1e-2),
    ),
]


@pytest.mark.parametrize("layer", sorted(LAYERS))
@pytest.mark.parametrize("name,rule,oracle,kw", PROPORTIONAL, ids=[p[0] for p in PROPORTIONAL])
def test_proportional_rule_matches_oracle(layer, name, rule, oracle, kw):
    module, variables, shape, x, z, mask = case(layer, seed=hash((layer, name)) % 1000)
    W, b = matrix_form(module, variables, shape)
    expected = per_sample(oracle, W, b, x, z, mask, **kw)
    assert_close(engine(module, variables, x, rule, mask), expected)


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_zplus_fast_matches_oracle_on_positive_inputs(layer):
    module, variables, shape, x, z, mask = case(layer, seed=3, positive=True)
    W, b = matrix_form(module, variables, shape)
    expected = per_sample(oracle_zplus_fast, W, b, x, z, mask, stabilizer=1e-2)
    assert_close(engine(module, variables, x, rules.ZPlusFast(stabilizer=1e-2), mask), expected)


@pytest.mark.parametrize("mode", ["gradient", "relevance"])
@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_explicit_rules_match_oracle(layer, mode):
    module, variables, shape, x, z, mask = case(layer, seed=7)
    W, b = matrix_form(module, variables, shape)
    expected = per_sample(oracle_wsquare, W, b, x, z, mask, stabilizer=1e-6)
    assert_close(engine(module, variables, x, rules.WSquare(), mask, mode), expected)
    expected = per_sample(oracle_wsquare, W, b, x, z, mask, stabilizer=1e-6, bias=True)
    assert_close(engine(module, variables, x, rules.WSquare(bias=True), mask, mode), expected)

    connectivity, _ = matrix_form(
        module, variables, shape, kernel_map=jnp.ones_like, keep_bias=False
    )
    expected = per_sample(
        lambda W, b, a, R: oracle_flat(connectivity, a, R, 1e-6), W, b, x, z, mask
    )
    assert_close(engine(module, variables, x, rules.Flat(), mask, mode), expected)

    channels = shape[-1]
    low = -np.linspace(1.0, 2.0, channels)
    high = np.linspace(1.5, 2.5, channels)
    low_full = np.broadcast_to(low, shape).ravel()
    high_full = np.broadcast_to(high, shape).ravel()
    expected = per_sample(
        oracle_zbox, W, b, x, z, mask, low=low_full, high=high_full, stabilizer=1e-6
    )
    assert_close(
        engine(module, variables, x, rules.ZBox(tuple(low), tuple(high)), mask, mode), expected
    )


# ---------------------------------------------------------------------------------------------
# A user-written rule: no jxai internals, compiled with everything else
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SignedEpsilon(rules.Rule):
    """A toy research rule: ε-rule whose stabilizer grows with |z|: den = z + ε·|z|·sign(z) + ε."""

    epsilon: float = 0.05

    def backward(self, layer, a, relevance):
        z = layer.output
        den = rules.stabilize(z * (1 + self.epsilon), self.epsilon)
        return layer.vjp(relevance / den, a)


def test_user_rule_runs_compiled_and_matches_its_formula():
    module, variables, shape, x, z, mask = case("conv2d", seed=11)
    W, b = matrix_form(module, variables, shape)

    def oracle(W, b, a, R):
        zz = W @ a + b
        return a * (W.T @ (R / stab(zz * 1.05, 0.05)))

    expected = per_sample(oracle, W, b, x, z, mask)
    assert_close(engine(module, variables, x, SignedEpsilon(), mask), expected)


# ---------------------------------------------------------------------------------------------
# Parameter validation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: rules.Epsilon(0.0), "epsilon > 0"),
        (lambda: rules.Epsilon(-1.0), "epsilon > 0"),
        (lambda: rules.AlphaBeta(2.0, 2.0), "alpha - beta = 1"),
        (lambda: rules.AlphaBeta(0.5, -0.5), "alpha, beta >= 0"),
        (lambda: rules.AlphaBeta(2.0, 1.0, bias="half"), "bias must be"),
        (lambda: rules.Gamma(-0.1), "gamma >= 0"),
        (lambda: rules.ZBox(1.0, -1.0), "low <= high"),
        (lambda: rules.ZBox((0.0, 2.0), (1.0, 1.0)), "low <= high"),
    ],
)
def test_invalid_rule_parameters_raise(make, message):
    with pytest.raises(ValueError, match=message):
        make()
