"""jxai: a JAX-native relevance propagation engine.

LRP rules are custom VJPs attached to stock Flax layers; gradients, Integrated Gradients,
SmoothGrad and Grad-CAM run in the same jit-compiled, vmapped function; trained Keras models are
imported without TensorFlow.

    import jxai
    network = jxai.load_keras("model.h5").without_output_activation()
    relevance = jxai.explain(network, x, "lrp.epsilon")
"""

from jxai import layers
from jxai.network import Network, as_network

__version__ = "0.1.0"

__all__ = ["Network", "as_network", "layers"]
