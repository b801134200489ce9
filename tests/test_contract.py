"""The public method contract (`jxai.contract`): a user method written against it runs compiled
through `jxai.explain` and `jxai.explain_dataset` and equals its formula; the one registry
(families, stochastic flags, parameters) that explain, explain_dataset, create_analyzer and
``jxai explain`` read; and no import cycles between jxai's modules."""

from __future__ import annotations

import ast
import inspect
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jxai
from jxai import models as zoo

ROOT = pathlib.Path(__file__).resolve().parents[1]


# The README's "Writing a method" example (registered by the `registered` fixture, so that no
# other test module, `jxai demo` running every method for one, sees it).
def input_x_smoothgrad(ctx: jxai.Context, x, target: jxai.Target, *, n: int = 8,
                       sigma: float = 0.1, batch_size="auto"):
    """Input × SmoothGrad: x ⊙ (1/n) Σ_j ∇S_t(x + σ ε_j), ε_j ~ N(0, I) drawn from ctx.key."""
    keys = jax.random.split(ctx.key, n)

    def noisy_gradient(key):
        noisy = x + sigma * jax.random.normal(key, x.shape, x.dtype)
        return ctx.backward(noisy, target).grad

    total = ctx.sum_chunks(noisy_gradient, keys, batch_size, name="input_x_smoothgrad")
    return x * total / n


def _oracle(logits, x, key, target, n, sigma):
    """The formula with jax.grad on the logits, for one batch drawing from ``key``."""
    def score(inputs):
        return jnp.sum(logits(inputs)[:, target])

    grads = [jax.grad(score)(x + sigma * jax.random.normal(k, x.shape, x.dtype))
             for k in jax.random.split(key, n)]
    return np.asarray(x * sum(grads) / n)


@pytest.fixture(scope="module", autouse=True)
def registered():
    jxai.register_method("input_x_smoothgrad", family="gradient", stochastic=True)(
        input_x_smoothgrad)
    yield
    for name in ("input_x_smoothgrad", "doubled_gradient"):  # no public unregister: a test-only
        jxai.contract._REGISTRY.pop(name, None)               # clean-up of the one registry


@pytest.fixture(scope="module")
def setup():
    network = zoo.get("mnist1d_cnn", pretrained=False)
    logits_net = network.without_output_activation()
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 40, 1))
    return network, logits_net.apply, x


def test_user_method_runs_compiled_and_matches_its_formula(setup):
    network, logits, x = setup
    key = jax.random.PRNGKey(7)
    whole = jxai.explain(network, x, "input_x_smoothgrad", target=4, key=key, n=5, sigma=0.2,
                         micro_batch=None)
    np.testing.assert_allclose(whole, _oracle(logits, x, key, 4, 5, 0.2), rtol=1e-5, atol=1e-6)
    # On CPU the scheduler explains one sample at a time; sample g draws from fold_in(key, g),
    # and the chunks (batch_size=2: 3 chunks, the last padded) are summed by the scheduler too.
    rows = jxai.explain(network, x, "input_x_smoothgrad", target=4, key=key, n=5, sigma=0.2,
                        micro_batch=1, batch_size=2)
    for g in range(x.shape[0]):
        want = _oracle(logits, x[g:g + 1], jax.random.fold_in(key, g), 4, 5, 0.2)
        np.testing.assert_allclose(rows[g:g + 1], want, rtol=1e-5, atol=1e-6)


def test_user_method_through_explain_dataset_draws_one_key_per_item(setup):
    """explain_dataset reads the spec's stochastic flag: item i draws from fold_in(seed key, i),
    whatever the batching."""
    network, logits, x = setup
    results = list(jxai.explain_dataset(network, np.asarray(x), "input_x_smoothgrad", target=2,
                                        batch_size=2, seed=3, n=4))
    assert [r.index for r in results] == [0, 1, 2] and all(r.ok for r in results)
    for i, result in enumerate(results):
        key = jax.random.fold_in(jax.random.PRNGKey(3), i)
        want = _oracle(logits, x[i:i + 1], key, 2, 4, 0.1)[0]
        np.testing.assert_allclose(result.attribution, want, rtol=1e-5, atol=1e-6)


def test_the_spec_records_what_registration_declared():
    spec = jxai.get_method("input_x_smoothgrad")
    assert isinstance(spec, jxai.MethodSpec)
    assert (spec.name, spec.fn, spec.family, spec.stochastic) == (
        "input_x_smoothgrad", input_x_smoothgrad, "gradient", True)
    assert list(spec.params) == ["n", "sigma", "batch_size"] and not spec.forwards
    assert spec.params["n"].default == 8
    assert spec.doc.startswith("Input × SmoothGrad: x ⊙ (1/n)")
    assert "input_x_smoothgrad" in jxai.list_methods("gradient")


def test_builtin_families_and_stochastic_flags():
    stochastic = {n for n in jxai.list_methods() if jxai.get_method(n).stochastic}
    assert {"smoothgrad", "smoothgrad_sq", "vargrad", "expected_gradients",
            "gradient_shap"} <= stochastic
    assert not {"gradient", "integrated_gradients", "occlusion", "lrp.epsilon", "grad_cam",
                "shapley_values"} & stochastic
    assert jxai.list_methods("cam") == ["cam", "grad_cam", "grad_cam_pp", "guided_grad_cam",
                                        "layer_cam", "score_cam", "sise"]
    assert {"kernel_shap", "shapley_sampling", "rise"} <= stochastic
    assert {"shapley_values", "kernel_shap", "shapley_sampling", "tree_shap"} <= set(
        jxai.list_methods("shapley"))
    lrp = jxai.list_methods("lrp")
    assert "lrp" in lrp and "deep_taylor.bounded" in lrp and "lrp.epsilon_plus_flat" in lrp
    assert all(n == "lrp" or n.startswith(("lrp.", "deep_taylor")) for n in lrp)
    assert {"occlusion", "rise"} <= set(jxai.list_methods("perturbation"))
    assert {"guided_backprop", "deconvnet", "integrated_gradients"} <= set(
        jxai.list_methods("gradient"))
    every = [n for family in jxai.contract.FAMILIES for n in jxai.list_methods(family)]
    assert sorted(every) == jxai.list_methods()  # each method in exactly one family
    with pytest.raises(ValueError, match=r"list_methods: family='lrp_rules' is not one of "
                                         r"gradient, lrp, cam, perturbation, shapley, other"):
        jxai.list_methods("lrp_rules")


def test_preset_parameters_are_the_builders():
    params = jxai.get_method("deep_taylor.bounded").params
    assert list(params) == ["low", "high", "convention"]
    assert params["low"].default is inspect.Parameter.empty
    with pytest.raises(TypeError, match=r"explain: 'deep_taylor.bounded' needs low=\.\.\., "
                                        r"high=\.\.\."):
        jxai.explain(zoo.get("tabular_mlp", pretrained=False), np.ones((1, 37), np.float32),
                     "deep_taylor.bounded")


def test_register_as_a_call_and_refusals(setup):
    network, _, x = setup

    def doubled_gradient(ctx, x, target):
        return 2 * ctx.backward(x, target).grad

    assert jxai.register_method("doubled_gradient", doubled_gradient) is doubled_gradient
    assert jxai.get_method("doubled_gradient").family == "other"
    np.testing.assert_allclose(jxai.explain(network, x, "doubled_gradient", target=1),
                               2 * np.asarray(jxai.explain(network, x, "gradient", target=1)),
                               rtol=1e-6)
    with pytest.raises(ValueError, match=r"register_method\('m'\): family='lrp_rules' is not "
                                         r"one of gradient, lrp"):
        jxai.register_method("m", doubled_gradient, family="lrp_rules")
    with pytest.raises(ValueError, match=r"unknown method 'input_x_smoothgrd'; did you mean "
                                         r"'input_x_smoothgrad', 'smoothgrad'"):
        jxai.explain(network, x, "input_x_smoothgrd")


def test_context_map_chunks_stacks_in_order(setup):
    """map_chunks gives one result per item, in order, whatever the chunking."""
    network, logits, x = setup

    def per_class_scores(ctx, x, target, *, batch_size=None):
        scores = ctx.map_chunks(lambda t: ctx.forward(x)[0][:, t], jnp.arange(10), batch_size)
        return scores.T  # (B, 10)

    want = np.asarray(logits(x))
    for size in (None, 3, "auto"):
        got = jxai.explain(network, x, per_class_scores, batch_size=size)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Import graph
# --------------------------------------------------------------------------------------------

PACKAGES = {"jxai": ROOT / "jxai", "jxai.models": ROOT / "models",
            "jxai.converters": ROOT / "converters"}


def _modules() -> dict[str, pathlib.Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def _imports(name: str, path: pathlib.Path, known, *, nested: bool) -> set[str]:
    """The jxai modules ``name`` imports: at module level (``if``/``try`` blocks included), and
    with ``nested`` also inside functions and classes (a lazy import is still a dependency);
    never under ``if TYPE_CHECKING`` (annotations only). ``from package import submodule`` is an
    edge to the submodule, not to the package's ``__init__``."""
    is_package = path.name == "__init__.py"
    edges = set()

    def base_of(node):
        if not node.level:
            return node.module
        parts = name.split(".") if is_package else name.split(".")[:-1]
        parts = parts[:len(parts) - (node.level - 1)]
        return ".".join(parts + ([node.module] if node.module else []))

    def visit(body):
        for node in body:
            if isinstance(node, ast.Import):
                edges.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = base_of(node)
                edges.update(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                             for a in node.names)
            elif isinstance(node, ast.If):
                if not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                    visit(node.body)
                    visit(node.orelse)
            elif isinstance(node, ast.Try):
                for block in (node.body, node.orelse, node.finalbody,
                              *(h.body for h in node.handlers)):
                    visit(block)
            elif nested and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef
                                       | ast.ClassDef | ast.With | ast.For | ast.While):
                visit(node.body)
                visit(getattr(node, "orelse", []))

    visit(ast.parse(path.read_text()).body)
    return {edge for edge in edges if edge in known and edge != name}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a list of modules, or None (depth-first search)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("nested", [False, True], ids=["module-level", "lazy-included"])
def test_imports_have_no_cycle(nested):
    """No cycle among jxai's modules, counting the imports inside functions too: a lazy import
    hides a cycle from Python, not from the reader."""
    modules = _modules()
    graph = {name: _imports(name, path, modules, nested=nested)
             for name, path in modules.items()}
    assert graph["jxai._driver"] >= {"jxai.contract", "jxai._compile", "jxai._schedule"}
    assert "jxai._driver" not in graph["jxai.methods._registry"]
    if nested:  # the finder sees lazy imports: jxai.loading imports the zoo inside functions
        assert "jxai.models" in graph["jxai.loading"]
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph))}"


def test_contract_scheduler_and_cache_import_nothing_lazily():
    """The contract, the scheduler and the compile cache are plain layers: no import inside a
    function (a lazy import is how a cycle hides)."""
    for name in ("contract", "_schedule", "_compile"):
        tree = ast.parse((ROOT / "jxai" / f"{name}.py").read_text())
        nested = [node.lineno for function in ast.walk(tree)
                  if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef)
                  for node in ast.walk(function) if isinstance(node, ast.Import | ast.ImportFrom)]
        assert nested == [], f"jxai/{name}.py imports inside functions at lines {nested}"


def test_every_module_imports_in_a_fresh_process():
    names = sorted(n for n in _modules() if not n.endswith("__main__"))
    code = ("import importlib, sys\nfailed = []\n"
            f"for name in {names!r}:\n"
            "    try:\n        importlib.import_module(name)\n"
            "    except Exception as err:\n        failed.append(f'{name}: {err!r}')\n"
            "print('\\n'.join(failed))\nsys.exit(1 if failed else 0)\n")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
