"""Batch-axis sharding: padding helpers, and a 4-device CPU run (in a subprocess, since the device
count is fixed when JAX starts) whose results must equal the single-device run bit for bit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from jxai import sharding


def test_pad_batch_repeats_the_last_row():
    rows = np.arange(6, dtype=np.float32).reshape(3, 2)
    padded = sharding.pad_batch(rows, 5)
    np.testing.assert_array_equal(padded, [[0, 1], [2, 3], [4, 5], [4, 5], [4, 5]])
    assert sharding.pad_batch(rows, 3) is rows
    with pytest.raises(ValueError, match="cannot pad 3 rows to a batch of 2"):
        sharding.pad_batch(rows, 2)


def test_padded_batch_size_and_single_device_helpers():
    mesh = sharding.batch_mesh()
    n = len(jax.devices())
    assert sharding.padded_batch_size(1, mesh) == n
    assert sharding.padded_batch_size(8 * n, mesh) == 8 * n
    assert sharding.padded_batch_size(8 * n + 1, mesh) == 9 * n
    with pytest.raises(ValueError, match="batch size must be >= 1"):
        sharding.padded_batch_size(0, mesh)
    x = np.arange(4 * n * 3, dtype=np.float32).reshape(4 * n, 3)
    placed = sharding.put_batch(x, sharding.batch_sharding(mesh))
    np.testing.assert_array_equal(sharding.fetch_local(placed), x)
    assert sharding.any_process(True) and not sharding.any_process(False)


# run in a fresh interpreter with 4 host devices; prints one JSON line
_FOUR_DEVICES = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    sys.path.insert(0, {tests!r})
    from jxai import sharding
    from jxai.batch import explain_dataset
    assert len(jax.devices()) == 4, jax.devices()

    x = np.random.RandomState(0).rand(13, 6, 6, 3).astype(np.float32)
    fn = lambda b: jnp.tanh(b) * jnp.sum(b ** 2, axis=(1, 2, 3), keepdims=True)
    report = {{}}
    mesh = sharding.batch_mesh()
    placed = sharding.put_batch(x[:8], sharding.batch_sharding(mesh))
    report["shards"] = len(placed.sharding.device_set)
    report["rows_per_shard"] = sorted({{s.data.shape[0] for s in placed.addressable_shards}})

    def run(devices, method, **kw):
        out = list(explain_dataset(kw.pop("network", None), x, method, batch_size=6,
                                   devices=devices, **kw))
        return np.stack([r.attribution for r in out])

    four, one = run(None, fn), run(jax.devices()[:1], fn)
    report["function_equal"] = bool(np.array_equal(four, one))
    report["function_oracle"] = float(np.abs(four - np.asarray(fn(x))).max())
    from test_batch import tiny_network
    net = tiny_network(size=6)
    for method, params in [("gradient", {{}}), ("lrp.epsilon", {{}}),
                           ("smoothgrad", {{"n": 4}}), ("two_targets", {{"target": (0, 2)}})]:
        name = "gradient" if method == "two_targets" else method
        a = run(None, name, network=net, **params)
        b = run(jax.devices()[:1], name, network=net, **params)
        report[method] = bool(np.array_equal(a, b))
    # a batch of 2 on 4 devices runs on 2 of them (no device left with only padded rows)
    from jxai import batch as jbatch
    jbatch._STEPS.clear()
    small = np.stack([r.attribution for r in explain_dataset(net, x, "gradient", batch_size=2)])
    report["small_batch_devices"] = sorted({{k[6].devices.size for k in jbatch._STEPS}})
    report["small_batch_equal"] = bool(np.array_equal(small, run(jax.devices()[:1], "gradient",
                                                                  network=net)))
    print(json.dumps(report))
""")


def test_four_devices_equal_one_device():
    tests = os.path.dirname(os.path.abspath(__file__))
    env = {k: v for k, v in os.environ.items() if k != "JAX_NUM_CPU_DEVICES"}
    env.update(XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _FOUR_DEVICES.format(tests=tests)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["shards"] == 4 and report["rows_per_shard"] == [2]
    assert report["function_equal"]
    assert report["function_oracle"] < 1e-5
    for method in ("gradient", "lrp.epsilon", "smoothgrad", "two_targets"):
        assert report[method], f"{method}: 4-device result differs from 1-device result"
    assert report["small_batch_equal"] and report["small_batch_devices"] == [2]
