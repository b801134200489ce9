"""Keras (.h5, .keras, .weights.h5) import without TensorFlow.

    from jxai.converters.keras import load_keras, load_weights, save_network, load_network
    network = load_keras("model.h5")                 # legacy HDF5 or .keras archive
    save_network(network, "converted/")              # orbax checkpoint + JSON architecture
    network = load_network("converted/")
    variables = load_weights(flax_module, "model.weights.h5", input_shape=(64, 64, 3))

Modules: `formats` (file detection, safe HDF5/zip reading), `graph` (rebuilding the layer graph),
`layers` (per-layer mapping), `ops` (TF-op / keras.ops allowlist), `module` (the generic Flax
module), `weights` (weight layouts), `by_name` (weights into hand-written modules), `unnamed`
(class-counter groups of tf.keras 2.13-2.15 ``.weights.h5``: by name, else by call order),
`checkpoint` (orbax save/restore), `cli` (``jxai convert``).
"""

from jxai.converters.keras.by_name import load_weights
from jxai.converters.keras.checkpoint import load_network, save_network
from jxai.converters.keras.errors import (
    KerasFormatError,
    UnsupportedLayerError,
    WeightMismatchError,
)
from jxai.converters.keras.loader import load_keras
from jxai.converters.keras.module import KerasModel
from jxai.converters.keras.spec import GraphSpec, graph_from_json, graph_to_json

__all__ = [
    "GraphSpec",
    "KerasFormatError",
    "KerasModel",
    "UnsupportedLayerError",
    "WeightMismatchError",
    "graph_from_json",
    "graph_to_json",
    "load_keras",
    "load_network",
    "load_weights",
    "save_network",
]
