"""`jxai.cpu`: the host split into several XLA devices, independent work spread over them.

The device count is fixed when JAX starts, so the split runs in a subprocess (3 CPU devices,
an odd count so that batches need padding) and its results are compared here with this
process's single device: bit for bit wherever each sample is explained alone, to float32
rounding where a wrapper's sum over chunks is split between devices.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jxai
from jxai import _compile, _schedule, _xla_cpu, cpu
from jxai import models as zoo


def _cases(network, x):
    """(name, thunk) for every case; the same code runs here and in the subprocess."""
    one = x[:1]
    baseline = jnp.full_like(x[:1], 0.1)
    return [
        ("gradient", lambda: jxai.explain(network, x, "gradient")),
        ("lrp.epsilon", lambda: jxai.explain(network, x, "lrp.epsilon")),
        ("preset_a", lambda: jxai.explain(network, x, "lrp.sequential_preset_a_flat")),
        ("ig_rows", lambda: jxai.explain(network, x[:4], "integrated_gradients", steps=8)),
        ("smoothgrad", lambda: jxai.explain(network, x, "smoothgrad", n=4,
                                            key=jax.random.PRNGKey(3))),
        ("two_targets", lambda: jxai.explain(network, x, "gradient",
                                             target=jxai.several(0, 2))),
        ("labels", lambda: jxai.explain(network, x, "lrp.epsilon",
                                        target=jnp.arange(5, dtype=jnp.int32) % 3)),
        ("layers", lambda: jxai.explain(network, x, "lrp.epsilon", return_layers=True)[1]),
        ("occlusion", lambda: jxai.explain(network, x[:2], "occlusion")),
        ("occlusion_one", lambda: jxai.explain(network, one, "occlusion", window=(7, 1))),
        ("grad_cam", lambda: jxai.explain(network, x, "grad_cam")),
        ("in_user_jit", lambda: jax.jit(lambda v: jxai.explain(network, v, "gradient"))(x)),
        # equal to rounding, not bit for bit: chunk sums split between devices, a callable
        # target's whole batch compiled for the 3-device program, an input committed to one
        # device copied to all three
        ("committed", lambda: jxai.explain(network, jax.device_put(x, jax.devices()[-1]),
                                           "lrp.epsilon", target=jax.device_put(
                                               jnp.arange(5, dtype=jnp.int32) % 3,
                                               jax.devices()[-1]))),
        ("callable", lambda: jxai.explain(network, x, "gradient",
                                          target=lambda y: jnp.where(y > 0, 1.0, 0.0))),
        ("ig_one", lambda: jxai.explain(network, one, "integrated_gradients", steps=8)),
        ("ig_one_odd", lambda: jxai.explain(network, one, "integrated_gradients", steps=7,
                                            batch_size=2)),
        ("ig_baseline", lambda: jxai.explain(network, one, "integrated_gradients", steps=8,
                                             baseline=baseline)),
        ("smoothgrad_one", lambda: jxai.explain(network, one, "smoothgrad", n=5,
                                                key=jax.random.PRNGKey(3))),
    ]


ROUNDED = {"callable", "committed", "ig_one", "ig_one_odd", "ig_baseline", "smoothgrad_one"}


def _flat(name, value):
    if isinstance(value, dict):
        return {f"{name}/{k}": np.asarray(v) for k, v in value.items()}
    return {name: np.asarray(value)}


_SPLIT = textwrap.dedent("""
    import json, sys
    import jax
    import jxai
    count = jxai.use_cpu_cores(3)
    jxai.use_cpu_kernels({kernels!r})  # the kernels of the one-device run it is compared with
    sys.path.insert(0, {tests!r})
    import numpy as np
    from test_cpu_cores import _cases, _flat, _inputs
    from jxai import cpu
    network, x = _inputs()
    report = {{"count": count, "devices": len(jax.devices()),
               "mesh": cpu.mesh_for(jax.numpy.asarray(x)).devices.size}}
    arrays = {{}}
    for name, thunk in _cases(network, x):
        out = thunk()
        arrays.update(_flat(name, out))
        if name == "gradient":
            report["output_devices"] = len(out.sharding.device_set)
    # nothing to share (one sample, no chunk loop): one device, not three repeating the work
    alone = jxai.explain(network, x[:1], "gradient")
    report["alone_devices"] = len(alone.sharding.device_set)
    report["ig_alone_devices"] = len(
        jxai.explain(network, x[:1], "integrated_gradients", steps=8).sharding.device_set)
    np.savez({path!r}, **arrays)
    try:
        jxai.use_cpu_cores(2)
    except RuntimeError as err:
        report["late"] = str(err)
    report["same_again"] = jxai.use_cpu_cores(3)
    print(json.dumps(report))
""")


def _inputs():
    network = zoo.get("mnist1d_cnn", pretrained=False)
    x = jax.random.normal(jax.random.PRNGKey(1), (5, 40, 1))
    return network, x


@pytest.fixture(scope="module")
def split_run(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("cores") / "split.npz")
    tests = os.path.dirname(os.path.abspath(__file__))
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
    env["JAX_PLATFORMS"] = "cpu"
    network, x = _inputs()
    kernels = _schedule.kernels_for(network, x)
    proc = subprocess.run([sys.executable, "-c", _SPLIT.format(tests=tests, path=path,
                                                                 kernels=kernels)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    with np.load(path) as data:
        arrays = dict(data)
    return report, arrays


def test_the_split_run_has_three_devices_and_refuses_a_late_change(split_run):
    report, _ = split_run
    assert report["count"] == report["devices"] == report["mesh"] == 3
    assert report["output_devices"] == 3  # the batch really was spread
    assert report["alone_devices"] == 1 and report["ig_alone_devices"] == 3
    assert "already started with 3 device(s)" in report["late"]
    assert "JAX_NUM_CPU_DEVICES=2" in report["late"]
    assert report["same_again"] == 3


one_device = pytest.mark.skipif(len(jax.devices()) > 1,
                                reason="compares with this process's single CPU device")


@one_device
def test_three_devices_equal_one_device(split_run):
    _, arrays = split_run
    assert len(jax.devices()) == 1
    network, x = _inputs()
    expected = {}
    for name, thunk in _cases(network, x):
        expected.update(_flat(name, thunk()))
    assert sorted(expected) == sorted(arrays)
    for key, want in expected.items():
        got = arrays[key]
        assert got.shape == want.shape, key
        if key.split("/")[0] in ROUNDED:
            scale = float(np.abs(want).max()) or 1.0
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * scale, err_msg=key)
            assert np.abs(want).max() > 0, key
        else:
            np.testing.assert_array_equal(got, want, err_msg=key)


@one_device
def test_use_cores_rejects_bad_counts_and_keeps_the_started_backend():
    with pytest.raises(ValueError, match="count must be an integer >= 1 or 'auto'"):
        jxai.use_cpu_cores(0)
    with pytest.raises(ValueError, match="count must be an integer"):
        jxai.use_cpu_cores("many")
    jax.devices()  # this process's backend has started with one CPU device
    assert jxai.use_cpu_cores(1) == 1
    with pytest.raises(RuntimeError, match="already started with 1 device"):
        jxai.use_cpu_cores(4)


@one_device
def test_one_device_has_no_region_and_loops_run_plainly():
    assert cpu.mesh_for(jnp.zeros((2, 3))) is None
    assert cpu.device_count() == 1
    xs = jnp.arange(6.0)
    np.testing.assert_array_equal(cpu.split(lambda v: v * 2, xs), xs * 2)
    assert float(cpu.sum_chunks(jnp.sum, xs)) == 15.0


def test_kernel_choice_follows_the_narrow_share_and_the_device_count(monkeypatch):
    monkeypatch.setattr(cpu, "_KERNELS", ["auto"])
    monkeypatch.setattr(cpu, "_started_count", lambda: 1)
    assert cpu.kernels(0.58) == "eigen"  # the seed U-Net
    assert cpu.kernels(cpu.NARROW_SHARE) == "eigen"
    assert cpu.kernels(0.12) == "ynnpack"  # VGG16: wide layers
    assert cpu.kernels(None) == "ynnpack"  # nothing known: XLA's default
    monkeypatch.setattr(cpu, "_started_count", lambda: 2)
    assert cpu.kernels(0.58) == "ynnpack"  # one device per core: YNNPACK
    assert jxai.use_cpu_kernels("eigen") == "eigen"
    assert cpu.kernels(0.0) == "eigen" and cpu.kernels(None) == "eigen"
    with pytest.raises(ValueError, match=r"one of \['auto', 'ynnpack', 'eigen'\], got 'mkl'"):
        jxai.use_cpu_kernels("mkl")
    assert cpu.kernels(0.0) == "eigen"  # a bad name changes nothing


def test_narrow_share_counts_the_work_of_each_convolution():
    import flax.linen as nn

    class Mixed(nn.Module):
        @nn.compact
        def __call__(self, x):  # x: (B, 8, 8, 3)
            x = nn.relu(nn.Conv(16, (3, 3))(x))  # narrow: 3·3·3·16 weights × 64 positions
            x = nn.relu(nn.Conv(128, (1, 1))(x))  # wide: 16·128 × 64
            x = nn.ConvTranspose(8, (2, 2), strides=(2, 2))(x)  # wide: 2·2·128·8 × 64 inputs
            return nn.Dense(3)(x.reshape(x.shape[0], -1))

    x = jnp.ones((2, 8, 8, 3))
    module = Mixed()
    network = jxai.Network(module, module.init(jax.random.PRNGKey(0), x))
    narrow, wide = 27 * 16 * 64, 16 * 128 * 64 + 4 * 128 * 8 * 64
    assert _schedule.convolutions(network, x) == pytest.approx(narrow / (narrow + wide))
    dense = jxai.Network(nn.Dense(3), nn.Dense(3).init(jax.random.PRNGKey(0), x[:, 0, 0]))
    assert _schedule.convolutions(dense, x[:, 0, 0]) is None


def _narrow_convnet():
    import flax.linen as nn

    class Narrow(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(32, (3, 3))(x))
            x = nn.relu(nn.Conv(64, (3, 3))(x))
            return nn.Dense(10)(x.reshape(x.shape[0], -1))

    x = jax.random.normal(jax.random.PRNGKey(1), (2, 16, 16, 3))
    module = Narrow()
    return jxai.Network(module, module.init(jax.random.PRNGKey(0), x)), x


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's kernel libraries")
def test_explain_compiles_with_the_chosen_kernel_library(monkeypatch):
    network, x = _narrow_convnet()
    seen = []
    compiled = _compile.compiled

    def spy(*static):
        fn = compiled(*static)

        def call(*args):
            seen.append((static[-2], fn.lower(*args).compile().as_text()))
            return fn(*args)

        return call

    monkeypatch.setattr(_compile, "compiled", spy)
    monkeypatch.setattr(cpu, "_KERNELS", ["auto"])
    auto = jxai.explain(network, x, "lrp.epsilon")
    assert seen[-1][0] == cpu.kernels(1.0)  # every convolution has <= 64 channels
    jxai.use_cpu_kernels("ynnpack")
    ynnpack = jxai.explain(network, x, "lrp.epsilon")
    jxai.use_cpu_kernels("eigen")
    eigen = jxai.explain(network, x, "lrp.epsilon")
    assert [k for k, _ in seen[1:]] == ["ynnpack", "eigen"]
    assert "__ynn_fusion" in seen[1][1] and "__ynn_fusion" not in seen[2][1]
    scale = float(np.abs(eigen).max())
    for other in (auto, ynnpack):  # the same arithmetic: float32 rounding apart
        np.testing.assert_allclose(other, eigen, rtol=0, atol=1e-5 * scale)
    assert _xla_cpu.compiler_options("eigen") == {"xla_cpu_experimental_ynn_fusion_type": ""}
