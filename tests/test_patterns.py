"""PatternNet / PatternAttribution: jxai.patterns.fit and the two methods against float64 numpy
of the paper's formulas (Kindermans et al., ICLR 2018) as iNNvestigate 1.0.8 computes them.

The oracle is an independent numpy interpreter of sequential networks (dense, conv 1D/2D with
explicit patches, ReLU, 2×2 max pooling, flatten): forward pass, the two-component estimator per
layer from the explicit patch matrix, and the backward pass with the patterns (or w ⊙ a) in place
of the kernels, gated by the forward ReLU masks and routed by the max-pooling argmax.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jxai

# --------------------------------------------------------------------------------------------
# The networks: flax modules and their numpy twins (op lists)
# --------------------------------------------------------------------------------------------


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(6)(x))
        x = nn.relu(nn.Dense(5)(x))
        return nn.Dense(3)(x)


class CNN1D(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3,), padding=[(1, 1)])(x))
        x = nn.relu(nn.Conv(5, (3,), strides=(2,), padding=[(1, 1)])(x))
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(3)(x)


class VGG(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(3, (3, 3), padding=[(1, 1), (1, 1)])(x))
        x = nn.relu(nn.Conv(4, (3, 3), padding=[(1, 1), (1, 1)])(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = nn.relu(nn.Conv(4, (3, 3), padding=[(1, 1), (1, 1)])(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(6)(x))
        return nn.Dense(3)(x)


def _ops(name, params):
    """The numpy twin of each network: ``(op, layer path, kernel, bias, conv options)``."""
    p = {k: (np.asarray(v["kernel"], np.float64), np.asarray(v["bias"], np.float64))
         for k, v in params.items()}
    if name == "mlp":
        return [("dense", "Dense_0", *p["Dense_0"]), ("relu",), ("dense", "Dense_1", *p["Dense_1"]),
                ("relu",), ("dense", "Dense_2", *p["Dense_2"])]
    if name == "cnn1d":
        return [("conv", "Conv_0", *p["Conv_0"], 1), ("relu",), ("conv", "Conv_1", *p["Conv_1"], 2),
                ("relu",), ("flatten",), ("dense", "Dense_0", *p["Dense_0"])]
    return [("conv", "Conv_0", *p["Conv_0"], 1), ("relu",), ("conv", "Conv_1", *p["Conv_1"], 1),
            ("relu",), ("pool",), ("conv", "Conv_2", *p["Conv_2"], 1), ("relu",), ("pool",),
            ("flatten",), ("dense", "Dense_0", *p["Dense_0"]), ("relu",),
            ("dense", "Dense_1", *p["Dense_1"])]


NETWORKS = {"mlp": (MLP, (5,)), "cnn1d": (CNN1D, (8, 2)), "vgg": (VGG, (8, 8, 2))}


def _network(name, seed=0):
    module, shape = NETWORKS[name]
    variables = module().init(jax.random.PRNGKey(seed), jnp.zeros((1, *shape)))
    dtype = jnp.float64 if jax.config.read("jax_enable_x64") else jnp.float32
    return jxai.Network(module(), jax.tree.map(lambda v: v.astype(dtype), variables)), shape


# --------------------------------------------------------------------------------------------
# The numpy oracle
# --------------------------------------------------------------------------------------------


def _patch_index(spatial, kernel, stride):
    """For padding (k−1)/2 on each side: the (positions, patch) index into the padded input's
    flattened spatial positions, and the output spatial shape."""
    padded = tuple(s + k - 1 for s, k in zip(spatial, kernel, strict=True))
    out = tuple((s - 1) // st + 1 for s, st in zip(spatial, (stride,) * len(spatial), strict=True))
    rows = []
    for position in np.ndindex(*out):
        start = [p * stride for p in position]
        rows.append([np.ravel_multi_index(tuple(s + o for s, o in zip(start, offset, strict=True)),
                                          padded) for offset in np.ndindex(*kernel)])
    return np.asarray(rows), padded, out


def _patches(x, kernel, stride):
    """``(N, positions, prod(kernel)·C)`` patches in Flax's kernel order ``(*kernel, C)``."""
    spatial, channels = x.shape[1:-1], x.shape[-1]
    index, padded, out = _patch_index(spatial, kernel, stride)
    pad = [(0, 0)] + [((k - 1) // 2, (k - 1) // 2) for k in kernel] + [(0, 0)]
    flat = np.pad(x, pad).reshape(x.shape[0], -1, channels)
    return flat[:, index].reshape(x.shape[0], index.shape[0], -1), out


def _unpatch(g_patches, x_shape, kernel, stride):
    """The transpose of `_patches`: scatter-add patch cotangents back to the input."""
    spatial, channels = x_shape[1:-1], x_shape[-1]
    index, padded, _ = _patch_index(spatial, kernel, stride)
    grad = np.zeros((x_shape[0], int(np.prod(padded)), channels))
    g = g_patches.reshape(x_shape[0], index.shape[0], index.shape[1], channels)
    for p in range(index.shape[0]):
        for j in range(index.shape[1]):
            grad[:, index[p, j]] += g[:, p, j]
    grad = grad.reshape(x_shape[0], *padded, channels)
    crop = (slice(None),) + tuple(slice((k - 1) // 2, (k - 1) // 2 + s)
                                  for k, s in zip(kernel, spatial, strict=True))
    return grad[crop]


def _forward(ops, x):
    """Every op's input and output, and for each linear layer its patches X, y = Xw (no bias)
    and the pre-activation z = y + b."""
    trace = []
    for op in ops:
        record = {"op": op, "a": x}
        if op[0] == "dense":
            _, _, w, b = op
            record.update(X=x, y=x @ w)
            x = record["y"] + b
        elif op[0] == "conv":
            _, _, w, b, stride = op
            X, out = _patches(x, w.shape[:-2], stride)
            y = X @ w.reshape(-1, w.shape[-1])
            record.update(X=X.reshape(-1, X.shape[-1]), y=y.reshape(-1, w.shape[-1]))
            x = (y + b).reshape(x.shape[0], *out, w.shape[-1])
        elif op[0] == "relu":
            x = np.maximum(x, 0)
        elif op[0] == "pool":
            n, h, w_, c = x.shape
            blocks = x.reshape(n, h // 2, 2, w_ // 2, 2, c)
            x = blocks.max(axis=(2, 4))
        elif op[0] == "flatten":
            x = x.reshape(x.shape[0], -1)
        record["out"] = x
        trace.append(record)
    return x, trace


def oracle_pattern(X, y, mask, w):
    """a₊ = (E₊[xy] − E₊[x]E[y]) / (wᵀE₊[xy] − wᵀE₊[x]E[y]) per unit, explicit float64 loops."""
    w2 = w.reshape(-1, w.shape[-1])
    pattern = np.zeros_like(w2)
    for k in range(w2.shape[1]):
        m = mask[:, k].astype(np.float64)
        count = max(m.sum(), 1.0)
        e_x = (X * m[:, None]).sum(0) / count
        e_xy = (X * (m * y[:, k])[:, None]).sum(0) / count
        cov = e_xy - e_x * y[:, k].mean()
        denominator = w2[:, k] @ cov
        pattern[:, k] = 0.0 if denominator == 0 else cov / denominator
    return pattern.reshape(w.shape)


def oracle_patterns(ops, x, kind="relu"):
    _, trace = _forward(ops, x)
    patterns = {}
    for i, record in enumerate(trace):
        op = record["op"]
        if op[0] not in ("dense", "conv"):
            continue
        z = record["y"] + op[3]
        rectified = i + 1 < len(trace) and trace[i + 1]["op"][0] == "relu"
        if kind == "linear" or not rectified:
            mask = np.ones_like(z, bool)
        else:
            mask = z > 0 if kind == "relu" else z <= 0
        patterns[op[1]] = oracle_pattern(record["X"], record["y"], mask, op[2])
    return patterns


def oracle_backward(ops, x, patterns, attribution=False, seed="logit"):
    """The seed (the max logit, or 1) back-projected with the patterns (× w for attribution)."""
    out, trace = _forward(ops, x)
    rows = np.arange(x.shape[0])
    g = np.zeros_like(out)
    top = out.argmax(1)
    g[rows, top] = out[rows, top] if seed == "logit" else 1.0
    for record in reversed(trace):
        op, a = record["op"], record["a"]
        if op[0] in ("dense", "conv"):
            kernel = patterns[op[1]] * (op[2] if attribution else 1.0)
            if op[0] == "dense":
                g = g @ kernel.T
            else:
                k2 = kernel.reshape(-1, kernel.shape[-1])
                gp = g.reshape(g.shape[0], -1, kernel.shape[-1]) @ k2.T
                g = _unpatch(gp, a.shape, kernel.shape[:-2], op[4])
        elif op[0] == "relu":
            g = g * (a > 0)
        elif op[0] == "pool":
            n, h, w_, c = a.shape
            blocks = a.reshape(n, h // 2, 2, w_ // 2, 2, c)
            winner = blocks == blocks.max(axis=(2, 4), keepdims=True)
            g = (winner * g[:, :, None, :, None, :]).reshape(a.shape)
        elif op[0] == "flatten":
            g = g.reshape(a.shape)
    return g


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mlp", "cnn1d", "vgg"])
def test_patterns_and_both_methods_match_the_papers_formulas_in_float64(name):
    with jax.enable_x64(True):
        network, shape = _network(name)
        x = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (24, *shape)), np.float64)
        ops = _ops(name, network.variables["params"])
        fitted = jxai.patterns.fit(network, x, batch_size=7)  # 7, 7, 7, 3: running totals
        expected = oracle_patterns(ops, x)
        assert sorted(fitted) == sorted(expected)
        for path, pattern in expected.items():
            assert fitted[path].shape == network.variables["params"][path]["kernel"].shape
            np.testing.assert_allclose(np.asarray(fitted[path]), pattern, rtol=1e-9, atol=1e-10,
                                       err_msg=path)
        batch = x[:4]
        net = jxai.explain(network, batch, "pattern.net", patterns=fitted)
        np.testing.assert_allclose(np.asarray(net), oracle_backward(ops, batch, expected),
                                   rtol=1e-9, atol=1e-10)
        attribution = jxai.explain(network, batch, "pattern.attribution", patterns=fitted)
        np.testing.assert_allclose(np.asarray(attribution),
                                   oracle_backward(ops, batch, expected, attribution=True),
                                   rtol=1e-9, atol=1e-10)
        one = jxai.explain(network, batch, "pattern.net", patterns=fitted, seed="one")
        np.testing.assert_allclose(np.asarray(one), oracle_backward(ops, batch, expected,
                                                                     seed="one"),
                                   rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("kind", ["linear", "relu.negative"])
def test_other_kinds_match_their_masks(kind):
    with jax.enable_x64(True):
        network, shape = _network("cnn1d")
        x = np.asarray(jax.random.normal(jax.random.PRNGKey(2), (16, *shape)), np.float64)
        fitted = jxai.patterns.fit(network, x, kind=kind, batch_size=None)
        for path, pattern in oracle_patterns(_ops("cnn1d", network.variables["params"]), x,
                                             kind).items():
            np.testing.assert_allclose(np.asarray(fitted[path]), pattern, rtol=1e-9, atol=1e-10)


def test_an_iterable_of_batches_equals_the_whole_array():
    with jax.enable_x64(True):
        network, shape = _network("mlp")
        x = np.asarray(jax.random.normal(jax.random.PRNGKey(3), (30, *shape)), np.float64)
        whole = jxai.patterns.fit(network, x, batch_size=None)
        streamed = jxai.patterns.fit(network, iter([(x[:11], None), (x[11:], None)]),
                                     batch_size=None)
        for path in whole:
            np.testing.assert_allclose(np.asarray(streamed[path]), np.asarray(whole[path]),
                                       rtol=1e-10, atol=1e-12)


class Linear(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(1, use_bias=False)(x)


def test_linear_estimator_recovers_the_signal_direction_where_the_gradient_does_not():
    """The paper's toy example: x = a_s·s + a_d·d; the optimal filter w = (1, −1) cancels the
    distractor (wᵀa_d = 0, wᵀa_s = 1), so the gradient points along w, not along a_s; the linear
    estimator's pattern is a_s, and PatternNet returns the signal a_s·s."""
    a_s, a_d = np.array([1.0, 0.0]), np.array([1.0, 1.0])
    key_s, key_d = jax.random.split(jax.random.PRNGKey(4))
    s = np.asarray(jax.random.normal(key_s, (4000,)), np.float32)
    d = np.asarray(jax.random.normal(key_d, (4000,)), np.float32)
    x = (np.outer(s, a_s) + np.outer(d, a_d)).astype(np.float32)
    w = np.array([[1.0], [-1.0]], np.float32)
    network = jxai.Network(Linear(), {"params": {"Dense_0": {"kernel": jnp.asarray(w)}}})
    pattern = np.asarray(jxai.patterns.fit(network, x, kind="linear", batch_size=500)["Dense_0"])
    cosine = lambda u, v: float(u @ v / np.linalg.norm(u) / np.linalg.norm(v))  # noqa: E731
    assert cosine(pattern[:, 0], a_s) > 0.999
    gradient = np.asarray(jxai.explain(network, x[:5], "gradient"))
    assert abs(cosine(gradient[0], a_s) - np.sqrt(0.5)) < 1e-6  # the filter, 45° off
    signal = np.asarray(jxai.explain(network, x[:5], "pattern.net",
                                     patterns={"Dense_0": pattern}))
    np.testing.assert_allclose(signal, np.outer(s[:5], a_s), atol=0.05)


class Dead(nn.Module):
    @nn.compact
    def __call__(self, x):
        hidden = nn.relu(nn.Dense(3)(x))
        return nn.Dense(2)(hidden)


def test_a_unit_that_never_fires_gets_a_zero_pattern_not_nan():
    module = Dead()
    variables = module.init(jax.random.PRNGKey(5), jnp.zeros((1, 4)))
    params = jax.tree.map(np.asarray, variables["params"])
    params["Dense_0"]["bias"] = np.array([0.0, -1e6, 0.0], np.float32)  # unit 1 never fires
    network = jxai.Network(module, {"params": params})
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(6), (32, 4)))
    fitted = jxai.patterns.fit(network, x)
    pattern = np.asarray(fitted["Dense_0"])
    assert np.all(np.isfinite(pattern)) and np.all(pattern[:, 1] == 0)
    assert np.all(np.abs(pattern[:, [0, 2]]).sum(0) > 0)
    assert np.all(np.isfinite(np.asarray(jxai.explain(network, x[:3], "pattern.net",
                                                      patterns=fitted))))


def test_save_and_load_round_trip(tmp_path):
    network, shape = _network("cnn1d")
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(7), (8, *shape)), np.float32)
    fitted = jxai.patterns.fit(network, x)
    folder = jxai.patterns.save(tmp_path / "patterns", fitted)
    loaded = jxai.patterns.load(folder)
    assert sorted(loaded) == sorted(fitted)
    for path in fitted:
        np.testing.assert_array_equal(np.asarray(loaded[path]), np.asarray(fitted[path]))
    with pytest.raises(FileNotFoundError, match="no layers.json"):
        jxai.patterns.load(tmp_path)


def test_create_analyzer_fit_then_analyze_as_innvestigate_1():
    network, shape = _network("cnn1d")
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(8), (20, *shape)), np.float32)
    for name in ("pattern.net", "pattern.attribution"):
        analyzer = jxai.create_analyzer(name, network, pattern_type="linear")
        with pytest.raises(ValueError, match=r"pass patterns=.*\.fit\(X\)"):
            analyzer.analyze(x[:2])
        analyzer.fit(x, batch_size=8)
        fitted = jxai.patterns.fit(network, x, kind="linear", batch_size=8)
        np.testing.assert_allclose(
            analyzer.analyze(x[:2]),
            np.asarray(jxai.explain(network, x[:2], name, patterns=fitted)), rtol=1e-6)
    with pytest.raises(TypeError, match="nothing to fit"):
        jxai.create_analyzer("gradient", network).fit(x)


def test_bad_parameters_are_refused_with_the_layer_named():
    network, shape = _network("mlp")
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(9), (8, *shape)), np.float32)
    with pytest.raises(ValueError, match="kind='relu.positve' is not one of"):
        jxai.patterns.fit(network, x, kind="relu.positve")
    fitted = jxai.patterns.fit(network, x)
    other, _ = _network("cnn1d")
    with pytest.raises(ValueError, match=r"patterns for \['Conv_0', 'Conv_1'\].*another network"):
        jxai.explain(network, x[:2], "pattern.net",
                     patterns=jxai.patterns.fit(other, np.zeros((4, 8, 2), np.float32)))
    missing = {k: v for k, v in fitted.items() if k != "Dense_1"}
    with pytest.raises(ValueError, match=r"no pattern for layer\(s\) \['Dense_1'\]"):
        jxai.explain(network, x[:2], "pattern.attribution", patterns=missing)
    wrong = dict(fitted, Dense_1=jnp.zeros((6, 4)))
    with pytest.raises(ValueError, match=r"pattern for layer 'Dense_1' has shape \(6, 4\), its "
                                         r"kernel \(6, 5\)"):
        jxai.explain(network, x[:2], "pattern.net", patterns=wrong)
    with pytest.raises(ValueError, match="pattern.net: pass patterns="):
        jxai.explain(network, x[:2], "pattern.net")


def test_registered_in_the_gradient_family():
    assert {"pattern.net", "pattern.attribution"} <= set(jxai.list_methods("gradient"))


_FOUR_DEVICES = """
import sys
sys.path.insert(0, {tests!r})
import jax
jax.config.update("jax_enable_x64", True)
import numpy as np
import jxai
from test_patterns import _network
assert len(jax.devices()) == 4
network, shape = _network("vgg")
x = np.asarray(jax.random.normal(jax.random.PRNGKey(5), (30, *shape)), np.float64)
patterns = jxai.patterns.fit(network, x, batch_size=7)  # 7 = 4 + 3: both kinds of step
np.savez({out!r}, **{{k.replace("/", "|"): np.asarray(v) for k, v in patterns.items()}})
"""


def test_four_devices_fit_the_same_patterns_as_one(tmp_path):
    """Sharded over 4 CPU devices (a subprocess: the device count is fixed at start-up), with
    batches that do not divide evenly, the patterns equal the one-device fit in float64."""
    import os
    import subprocess
    import sys

    out = tmp_path / "four.npz"
    code = _FOUR_DEVICES.format(tests=os.path.dirname(os.path.abspath(__file__)), out=str(out))
    env = {k: v for k, v in os.environ.items() if k != "JAX_NUM_CPU_DEVICES"}
    env.update(XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    four = {k.replace("|", "/"): v for k, v in np.load(out).items()}
    with jax.enable_x64(True):
        network, shape = _network("vgg")
        x = np.asarray(jax.random.normal(jax.random.PRNGKey(5), (30, *shape)), np.float64)
        one = jxai.patterns.fit(network, x, batch_size=None)
    assert sorted(four) == sorted(one) and len(one) >= 3
    for path in one:
        np.testing.assert_allclose(four[path], np.asarray(one[path]), rtol=1e-9, atol=1e-12)
