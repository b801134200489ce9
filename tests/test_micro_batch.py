"""`jxai.explain(..., micro_batch=)`: explaining a batch group by group inside one compiled call.

On CPU the default (``"auto"``) explains one sample at a time; the results must be those of the
whole batch (to float32 rounding), bit for bit those of explaining each sample alone, and the
cases it cannot cut (array parameters, callable targets, sharded inputs) must run whole.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jxai
from jxai import _compile, _schedule
from jxai import models as zoo

METHODS = ["gradient", "lrp.epsilon", "lrp.sequential_preset_a_flat", "integrated_gradients",
           "grad_cam", "occlusion"]


@pytest.fixture(scope="module")
def setup():
    network = zoo.get("mnist1d_cnn", pretrained=False)
    x = jax.random.normal(jax.random.PRNGKey(1), (5, 40, 1))
    return network, x


def _close(a, b):
    scale = float(jnp.max(jnp.abs(b))) or 1.0
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=2e-6 * scale)


@pytest.mark.parametrize("method", METHODS)
def test_one_at_a_time_equals_the_whole_batch_and_each_sample_alone(setup, method):
    network, x = setup
    assert _schedule.row_groups("auto", method, x, {}, "max") == 1
    grouped = jxai.explain(network, x, method)
    _close(grouped, jxai.explain(network, x, method, micro_batch=None))
    for i in (0, 3):
        alone = jxai.explain(network, x[i:i + 1], method)
        if len(jax.devices()) > 1:  # JAX_NUM_CPU_DEVICES set: a lone sample's chunks are split
            _close(grouped[i:i + 1], alone)
        else:
            np.testing.assert_array_equal(grouped[i:i + 1], alone)


def test_groups_of_several_rows_and_per_sample_targets(setup):
    network, x = setup
    x = jnp.concatenate([x, x[:1]])  # 6 rows: groups of 2 and 3
    labels = jnp.array([0, 3, 9, 1, 1, 4])
    whole = jxai.explain(network, x, "lrp.epsilon", target=labels, micro_batch=None)
    for rows in (2, 3, 4):  # 4 does not divide 6: explained whole
        _close(jxai.explain(network, x, "lrp.epsilon", target=labels, micro_batch=rows), whole)
    # several targets per sample: (T, B, ...)
    two = jxai.several(2, 7)
    multi = jxai.explain(network, x, "gradient", target=two)
    assert multi.shape == (2, *x.shape)
    _close(multi, jxai.explain(network, x, "gradient", target=two, micro_batch=None))
    # an output cotangent with a batch axis is cut with the input; one without is broadcast
    mask = jax.nn.one_hot(labels, 10)
    _close(jxai.explain(network, x, "gradient", target=mask),
           jxai.explain(network, x, "gradient", target=labels, micro_batch=None))
    row = jax.nn.one_hot(5, 10)
    _close(jxai.explain(network, x, "gradient", target=row),
           jxai.explain(network, x, "gradient", target=5, micro_batch=None))


def test_every_output_leaf_is_reassembled(setup):
    network, x = setup
    grouped = jxai.explain(network, x, "lrp.epsilon", return_layers=True)
    whole = jxai.explain(network, x, "lrp.epsilon", return_layers=True, micro_batch=None)
    jax.tree.map(_close, grouped, whole)
    attribution, delta = jxai.explain(network, x, "integrated_gradients", return_delta=True)
    assert attribution.shape == x.shape and delta.shape == (x.shape[0],)


def test_what_auto_leaves_whole_and_what_is_refused(setup, monkeypatch):
    network, x = setup
    resolve = _schedule.row_groups
    assert resolve("auto", "gradient", x[:1], {}, "max") is None  # one sample
    assert resolve("auto", "gradient", x, {"baseline": x}, "max") is None  # array parameters
    assert resolve("auto", "gradient", x, {}, "callable") is None
    assert resolve("auto", lambda ctx, x, t: x, x, {}, "max") is None  # a user's method
    assert resolve(None, "gradient", x, {}, "max") is None
    assert resolve("auto", "gradient", x, {}, "max", network) == 1  # convolutional
    mlp = zoo.get("tabular_mlp", pretrained=False)  # dense only: matrix products are cheaper whole
    rows = jnp.ones((6, *mlp.input_shape))
    assert resolve("auto", "gradient", rows, {}, "max", mlp) is None
    np.testing.assert_array_equal(jxai.explain(mlp, rows, "lrp.epsilon"),
                                  jxai.explain(mlp, rows, "lrp.epsilon", micro_batch=None))
    with pytest.raises(ValueError, match="cannot cut the array parameters"):
        jxai.explain(network, x, "integrated_gradients", baseline=x * 0, micro_batch=1)
    with pytest.raises(ValueError, match="callable target"):
        jxai.explain(network, x, "gradient", target=lambda y: y, micro_batch=2)
    for bad in (0, -1, 1.5, True, "one"):
        with pytest.raises(ValueError, match="micro_batch must be an integer >= 1"):
            jxai.explain(network, x, "gradient", micro_batch=bad)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert resolve("auto", "gradient", x, {}, "max") is None


def test_the_input_devices_decide_not_the_default_backend(setup, monkeypatch):
    """On a GPU machine an array committed to the CPU is explained as on the CPU (a loop over
    samples, IG chunks of one path point), and the reverse for a trace meant for an
    accelerator; simulated here by pretending the default backend is a GPU."""
    from jxai import _xla_cpu

    network, x = setup
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert not _xla_cpu.needed() and _schedule.chunk_size("integrated_gradients", "auto") == 16
    on_cpu = jax.device_put(x, jax.devices("cpu")[0])
    assert _xla_cpu.platform_of(on_cpu) == "cpu"
    with _xla_cpu.running_on("cpu"):
        assert _schedule.row_groups("auto", "gradient", on_cpu, {}, "max", network) == 1
        assert _schedule.chunk_size("integrated_gradients", "auto") == 1
        with _xla_cpu.running_on(None):  # None keeps the enclosing platform
            assert _xla_cpu.needed()
    assert _schedule.row_groups("auto", "gradient", on_cpu, {}, "max", network) is None

    loops = []
    real = _schedule.in_row_groups
    monkeypatch.setattr(_schedule, "in_row_groups", lambda *a: loops.append(1) or real(*a))
    _compile.compiled.cache_clear()  # trace anew: another test may have compiled this program
    out = jxai.explain(network, on_cpu, "lrp.epsilon", target=3)
    assert loops, "the CPU array was explained whole, as if on the GPU"
    monkeypatch.undo()
    np.testing.assert_array_equal(out, jxai.explain(network, x, "lrp.epsilon", target=3))


def test_the_compiled_call_loops_over_samples(setup):
    network, x = setup
    variables = network.variables

    def hlo(micro_batch):
        def f(v, x):
            return jxai.explain(jxai.Network(network.module, v), x, "gradient",
                                micro_batch=micro_batch, strip_output_activation=False)

        return jax.jit(f).lower(variables, x).compile().as_text()

    assert "while" in hlo("auto")
    assert "while" not in hlo(None)


def test_stochastic_groups_draw_from_folded_keys(setup):
    network, x = setup
    key = jax.random.PRNGKey(3)
    grouped = jxai.explain(network, x, "smoothgrad", n=4, key=key)
    for i in (0, 2):
        alone = jxai.explain(network, x[i:i + 1], "smoothgrad", n=4,
                             key=jax.random.fold_in(key, i), micro_batch=None)
        _close(grouped[i:i + 1], alone)
    assert not np.allclose(grouped[0], grouped[1])


def test_size_checks_and_the_bounded_memo():
    from jxai._checks import check_size, memo

    assert check_size("f", "n", "auto") == "auto" and check_size("f", "n", None) is None
    assert check_size("f", "n", np.int64(3)) == 3 and type(check_size("f", "n", 3)) is int
    for bad in (0, -1, 2.0, True, "all", np.ones(2)):
        with pytest.raises(ValueError, match=r"f: n must be an integer >= 1, None or 'auto'"):
            check_size("f", "n", bad)
    cache, calls = {}, []
    for key in (1, 2, 1, 3, 1):
        assert memo(cache, key, lambda k=key: calls.append(k) or k * 10, limit=2) == key * 10
    assert calls == [1, 2, 3, 1]  # the third key emptied the full cache; 1 was computed again
    assert cache == {3: 30, 1: 10}
