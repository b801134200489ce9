"""jxai: a JAX-native relevance propagation engine.

LRP rules are custom VJPs attached to stock Flax layers; gradients, Integrated Gradients,
SmoothGrad and Grad-CAM run in the same jit-compiled, vmapped function; trained Keras models are
imported without TensorFlow.

    import jxai
    network = jxai.load_keras("model.h5").without_output_activation()
    relevance = jxai.explain(network, x, "lrp.epsilon")
"""

from jxai import composites, layers, rules
from jxai.composites import Composite, first_layer, input_layers, last_layer, layer_range
from jxai.explain import explain, list_methods, register_method
from jxai.network import Network, as_network

__version__ = "0.1.0"

__all__ = [
    "Composite",
    "Network",
    "as_network",
    "composites",
    "explain",
    "first_layer",
    "input_layers",
    "last_layer",
    "layer_range",
    "layers",
    "list_methods",
    "register_method",
    "rules",
]
