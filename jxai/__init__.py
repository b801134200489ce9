"""jxai: a JAX-native relevance propagation engine.

LRP rules are custom VJPs attached to stock Flax layers; gradients, Integrated Gradients,
SmoothGrad and Grad-CAM run in the same jit-compiled, vmapped function; trained Keras models are
imported without TensorFlow.

    import jxai
    network = jxai.load_keras("model.h5").without_output_activation()
    relevance = jxai.explain(network, x, "lrp.epsilon")
    both = jxai.explain(network, x, "lrp.epsilon", target=jxai.several(0, 5))  # (2, B, ...)
"""

import importlib
from typing import TYPE_CHECKING

from jxai import composites, cpu, layers, methods, rules  # noqa: F401 (methods: registers them)
from jxai._driver import explain, make_explainer
from jxai._targets import several
from jxai.analyzer import create_analyzer, model_wo_softmax
from jxai.composites import Composite, first_layer, input_layers, last_layer, layer_range
from jxai.contract import Context, MethodSpec, Target, get_method, list_methods, register_method
from jxai.cpu import use_cores as use_cpu_cores
from jxai.cpu import use_kernels as use_cpu_kernels
from jxai.function_model import host_function
from jxai.network import Network, as_network

# Loaded on first use, so that `import jxai` does not pay for matplotlib (plot), optax (models'
# training) or h5py (the converter): name -> (module, attribute or None for the module itself).
_LAZY = {
    "plot": ("jxai.plot", None),
    "models": ("jxai.models", None),
    "metrics": ("jxai.metrics", None),
    "converters": ("jxai.converters", None),
    "trees": ("jxai.trees", None),
    "patterns": ("jxai.patterns", None),
    "explain_dataset": ("jxai.batch", "explain_dataset"),
    "load": ("jxai.loading", "load"),
    "load_pretrained": ("jxai.converters.safetensors", "load_pretrained"),
    "load_keras": ("jxai.converters.keras", "load_keras"),
    "load_network": ("jxai.loading", "load_network"),
    "load_weights": ("jxai.converters.keras", "load_weights"),
    "save_network": ("jxai.loading", "save_network"),
}

if TYPE_CHECKING:  # what the lazy names are, for type checkers and IDEs
    from jxai import metrics, models, plot, trees  # noqa: F401
    from jxai.batch import explain_dataset  # noqa: F401
    from jxai.converters.keras import load_keras, load_weights  # noqa: F401
    from jxai.converters.safetensors import load_pretrained  # noqa: F401
    from jxai.loading import load, load_network, save_network  # noqa: F401


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'jxai' has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"

__all__ = [
    "Composite",
    "Context",
    "MethodSpec",
    "Target",
    "Network",
    "as_network",
    "composites",
    "cpu",
    "create_analyzer",
    "explain",
    "explain_dataset",
    "first_layer",
    "get_method",
    "host_function",
    "input_layers",
    "last_layer",
    "layer_range",
    "layers",
    "list_methods",
    "load",
    "load_keras",
    "load_pretrained",
    "load_network",
    "load_weights",
    "save_network",
    "several",
    "use_cpu_cores",
    "use_cpu_kernels",
    "make_explainer",
    "metrics",
    "models",
    "model_wo_softmax",
    "register_method",
    "plot",
    "rules",
    "trees",
]
