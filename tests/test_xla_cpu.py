"""The XLA:CPU loop workaround: same numbers, canonical convolutions inside loop bodies."""

import re
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jxai import _xla_cpu
from jxai._xla_cpu import canonical_convolutions

KEY = jax.random.PRNGKey(0)


def _conv_cases():
    """(input shape, kernel shape, conv kwargs): layouts, strides, dilations, groups, ranks."""
    return [
        (
            (2, 9, 9, 4),
            (3, 3, 4, 6),
            dict(window_strides=(1, 1), padding="SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")),
        ),
        (
            (2, 4, 9, 9),
            (6, 4, 3, 3),
            dict(
                window_strides=(2, 1), padding="VALID", dimension_numbers=("NCHW", "OIHW", "NCHW")
            ),
        ),
        (
            (2, 9, 9, 4),
            (3, 3, 6, 4),
            dict(
                window_strides=(1, 1),
                padding=((1, 2), (0, 1)),
                rhs_dilation=(2, 1),
                dimension_numbers=("NHWC", "HWOI", "NHWC"),
            ),
        ),
        (
            (2, 5, 5, 4),
            (2, 2, 4, 3),
            dict(
                window_strides=(1, 1),
                padding=((1, 1), (1, 1)),
                lhs_dilation=(2, 2),
                dimension_numbers=("NHWC", "HWIO", "NCHW"),
            ),
        ),
        (
            (2, 8, 8, 4),
            (3, 3, 1, 8),
            dict(
                window_strides=(1, 1),
                padding="SAME",
                feature_group_count=4,
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            ),
        ),
        (
            (2, 11, 3),
            (3, 3, 5),
            dict(window_strides=(2,), padding="SAME", dimension_numbers=("NWC", "WIO", "NWC")),
        ),
        (
            (1, 5, 6, 7, 2),
            (2, 3, 2, 2, 3),
            dict(
                window_strides=(1, 2, 1),
                padding="SAME",
                dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
            ),
        ),
    ]


@pytest.mark.parametrize("case", range(len(_conv_cases())))
def test_rewrite_keeps_values_and_gradients(case):
    x_shape, k_shape, kwargs = _conv_cases()[case]
    kx, kk = jax.random.split(jax.random.fold_in(KEY, case))
    x = jax.random.normal(kx, x_shape)
    k = jax.random.normal(kk, k_shape)

    def loss(x):
        return jnp.sum(jnp.tanh(lax.conv_general_dilated(x, k, **kwargs)) ** 2)

    def explain(x):  # a forward convolution and JAX's transposed one (the input gradient)
        y = lax.conv_general_dilated(x, k, **kwargs)
        return y, jax.grad(loss)(x)

    want = jax.jit(explain)(x)
    got = jax.jit(canonical_convolutions(explain))(x)
    for w, g in zip(want, got, strict=True):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_rewrite_recurses_into_loops_branches_and_custom_rules():
    k = jax.random.normal(KEY, (3, 3, 2, 3))

    @jax.custom_vjp
    def conv(x):
        return lax.conv_general_dilated(
            x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    conv.defvjp(lambda x: (conv(x), x), lambda x, g: (jax.vjp(conv.fun, x)[1](g)[0] * 2,))

    def program(xs):
        def body(carry, x):
            g = jax.grad(lambda x: jnp.sum(jnp.sin(conv(x))))(x)
            g = lax.cond(
                jnp.sum(x) > 0,
                lambda g: g,
                lambda g: -jax.grad(lambda g: jnp.sum(conv(g) ** 2))(g),
                g,
            )
            g = lax.fori_loop(0, 2, lambda i, g: g * 1.5, g)
            return carry + g, jnp.sum(g)

        return lax.scan(body, jnp.zeros(xs.shape[1:]), xs)

    xs = jax.random.normal(jax.random.fold_in(KEY, 1), (3, 2, 6, 6, 2))
    want = jax.jit(program)(xs)
    got = jax.jit(canonical_convolutions(program))(xs)
    jax.tree.map(lambda w, g: np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5), want, got)


def _loop_convolutions(fn, *args):
    """dim_labels of every convolution XLA left inside a while body of ``fn``'s compiled HLO."""
    hlo = jax.jit(fn).lower(*args).compile().as_text()
    return re.findall(r"convolution\([^\n]*dim_labels=(\S+?),", hlo)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA:CPU workaround")
def test_gradient_in_a_scan_compiles_to_canonical_convolutions():
    k = jax.random.normal(KEY, (3, 3, 8, 16))

    def grad(x):
        return jax.grad(
            lambda x: jnp.sum(
                jax.nn.relu(
                    lax.conv_general_dilated(
                        x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
                    )
                )
            )
        )(x)

    def scanned(xs):
        return lax.scan(lambda c, x: (c + grad(x), None), jnp.zeros(xs.shape[1:]), xs)[0]

    xs = jnp.ones((2, 2, 8, 8, 8))
    before = _loop_convolutions(scanned, xs)
    after = _loop_convolutions(canonical_convolutions(scanned), xs)
    # Without the rewrite JAX's transposed convolution (kernel "oi") stays in the loop body;
    # XLA may lower the rest to fusions, but no non-canonical convolution may remain.
    assert any(label != "b01f_01io->b01f" for label in before), before
    assert all(label == "b01f_01io->b01f" for label in after), after


def _split_at_scan(jaxpr):
    """(the equations before the first scan, those of its body, the scan equation)."""
    for i, eqn in enumerate(jaxpr.eqns):
        if eqn.primitive.name == "scan":
            return jaxpr.eqns[:i], eqn.params["jaxpr"].jaxpr.eqns, eqn
    raise AssertionError("no scan in the program")


def _kernel_sized(eqns, sizes):
    return [e.primitive.name for e in eqns
            if any(np.prod(v.aval.shape) in sizes and v.aval.ndim == 4 for v in e.outvars)]


def test_loop_invariant_weight_transforms_run_once_before_the_loop(monkeypatch):
    monkeypatch.setattr(_xla_cpu, "HOIST_MIN_ELEMENTS", 1)  # the test's kernel is small
    def relevance_like(k, x):
        # the input gradient of conv(x, W) and of conv(x, max(W, 0)): flipped, transposed and
        # clipped kernels, functions of W alone
        def f(x):
            conv = partial(lax.conv_general_dilated, window_strides=(1, 1), padding="SAME",
                           dimension_numbers=("NHWC", "HWIO", "NHWC"))
            return jnp.sum(jax.nn.relu(conv(x[None], k)) * conv(x[None], jnp.maximum(k, 0)))

        return jax.grad(f)(x)

    def program(k, xs):
        return lax.map(partial(relevance_like, k), xs)

    k = jax.random.normal(KEY, (3, 3, 4, 6))
    xs = jax.random.normal(jax.random.fold_in(KEY, 2), (5, 9, 9, 4))
    outer, body, scan = _split_at_scan(jax.make_jaxpr(canonical_convolutions(program))(k, xs).jaxpr)
    # every kernel transform (rev, transpose, max) is in front of the loop, none is left in it
    assert {"rev", "transpose", "max"} <= set(_kernel_sized(outer, {k.size})), outer
    assert _kernel_sized(body, {k.size}) == [], body
    assert [e.primitive.name for e in body].count("conv_general_dilated") == 4
    # activation-sized constants (the ReLU's zeros) are made in the body, not stored
    assert any(e.primitive.name == "broadcast_in_dim" and e.outvars[0].aval.size >= 9 * 9 * 6
               for e in body)
    assert scan.params["num_consts"] >= 3  # W and its hoisted transforms
    # the same program, the same numbers: each transform is computed once instead of per step
    np.testing.assert_array_equal(
        jax.jit(canonical_convolutions(program))(k, xs), jax.jit(program)(k, xs)
    )


def test_small_loop_invariant_arrays_stay_in_the_loop():
    def program(k, xs):
        return lax.map(lambda x: x * jnp.transpose(k[::-1]), xs)

    big = jnp.ones((2**9, 2**9))  # 2**18 elements: hoisted
    small = jnp.ones((2**9, 2**9 - 1))
    for k, hoisted in ((big, True), (small, False)):
        xs = jnp.ones((3, k.shape[1], k.shape[0]))
        outer, body, _ = _split_at_scan(
            jax.make_jaxpr(canonical_convolutions(program))(k, xs).jaxpr)
        names = [e.primitive.name for e in (outer if hoisted else body)]
        assert "rev" in names and "transpose" in names, (hoisted, names)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA:CPU workaround")
def test_no_kernel_flip_is_left_in_the_compiled_loop_body(monkeypatch):
    monkeypatch.setattr(_xla_cpu, "HOIST_MIN_ELEMENTS", 1)
    def program(k, xs):
        conv = partial(lax.conv_general_dilated, window_strides=(1, 1), padding="SAME",
                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return lax.map(jax.grad(lambda x: jnp.sum(jax.nn.relu(conv(x[None], k)))), xs)

    def reversals(fn, *args):
        """(kernel flips traced inside the loop body, all kernel flips) in the compiled HLO."""
        hlo = jax.jit(fn).lower(*args).compile().as_text()
        flips = [line for line in hlo.splitlines() if " reverse(" in line]
        return sum("/while/body/" in line for line in flips), len(flips)

    k = jax.random.normal(KEY, (3, 3, 8, 16))
    xs = jnp.ones((3, 8, 8, 8))
    assert reversals(program, k, xs)[0] >= 1  # XLA alone leaves the flip in the loop
    in_body, total = reversals(canonical_convolutions(program), k, xs)
    assert in_body == 0 and total >= 1
