"""jxai: a JAX-native relevance propagation engine.

LRP rules are custom VJPs attached to stock Flax layers; gradients, Integrated Gradients,
SmoothGrad and Grad-CAM run in the same jit-compiled, vmapped function; trained Keras models are
imported without TensorFlow.

    import jxai
    network = jxai.load_keras("model.h5").without_output_activation()
    relevance = jxai.explain(network, x, "lrp.epsilon")
    both = jxai.explain(network, x, "lrp.epsilon", target=jxai.several(0, 5))  # (2, B, ...)
"""

from jxai import composites, cpu, layers, metrics, models, plot, rules
from jxai._driver import explain, list_methods, make_explainer, register_method
from jxai._targets import several
from jxai.analyzer import create_analyzer, model_wo_softmax
from jxai.batch import explain_dataset
from jxai.composites import Composite, first_layer, input_layers, last_layer, layer_range
from jxai.converters.keras import load_keras, load_network, load_weights, save_network
from jxai.cpu import use_cores as use_cpu_cores
from jxai.cpu import use_kernels as use_cpu_kernels
from jxai.loading import load
from jxai.network import Network, as_network

__version__ = "0.1.0"

__all__ = [
    "Composite",
    "Network",
    "as_network",
    "composites",
    "cpu",
    "create_analyzer",
    "explain",
    "explain_dataset",
    "first_layer",
    "input_layers",
    "last_layer",
    "layer_range",
    "layers",
    "list_methods",
    "load",
    "load_keras",
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
]
